"""Camera and ray conventions: OpenGL c2w, z-up world, pixel centres at +0.5, z-depth rays."""

import math

import pytest
import torch

from csd_exp.data.cameras import (
    CameraError,
    Cameras,
    focal_from_fov,
    generate_rays,
    look_at,
    turntable_cameras,
)


def _front_camera(width=40, height=30, fx=50.0, fy=60.0, cx=None, cy=None):
    """Camera at (0, -5, 0) looking at the origin (along +y), z up: image right = +x, image up = +z."""
    c2w = look_at([0.0, -5.0, 0.0], [0.0, 0.0, 0.0])
    return Cameras(c2w, fx, fy, width / 2 if cx is None else cx, height / 2 if cy is None else cy, width, height)


def test_look_at_is_opengl_and_orthonormal():
    c2w = look_at([0.0, -5.0, 0.0])[0]
    R = c2w[:3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]))  # right
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))  # up
    torch.testing.assert_close(-c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0]))  # looks along -z = +y
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([0.0, -5.0, 0.0]))


def test_known_points_project_where_expected():
    cam = _front_camera()
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 5.0, 2.0]]])
    uv, depth = cam.project(points)
    # origin -> principal point; +x -> right by fx / depth; +z -> up (smaller row) by fy / depth
    expected_uv = torch.tensor(
        [[[20.0, 15.0], [20.0 + 50.0 / 5, 15.0], [20.0, 15.0 - 60.0 / 5], [20.0, 15.0 - 60.0 * 2 / 10]]]
    )
    torch.testing.assert_close(uv, expected_uv)
    torch.testing.assert_close(depth, torch.tensor([[5.0, 5.0, 5.0, 10.0]]))


def test_rays_pass_through_pixel_centres_and_t_is_z_depth():
    cam = _front_camera(cx=17.3, cy=11.0)
    origins, dirs = generate_rays(cam)
    assert origins.shape == dirs.shape == (1, 30, 40, 3)
    # ray through pixel (u=7, v=4) hits, at t = 5, the point that projects to (7.5, 4.5) at depth 5
    point = origins[0, 4, 7] + 5.0 * dirs[0, 4, 7]
    uv, depth = cam.project(point.view(1, 1, 3))
    torch.testing.assert_close(uv[0, 0], torch.tensor([7.5, 4.5]))
    assert depth.item() == pytest.approx(5.0)
    # every ray's component along the viewing axis is 1
    forward = -cam.c2w[0, :3, 2]
    torch.testing.assert_close(dirs[0] @ forward, torch.ones(30, 40))


def test_downscale_keeps_image_corners_fixed():
    cam = _front_camera(width=40, height=30)
    half = cam.scaled(2)
    assert (half.width, half.height) == (20, 15)
    o_full, d_full = generate_rays(cam)
    o_half, d_half = generate_rays(cam, downscale=2)
    # the centre of half-res pixel (0,0) is the corner shared by full-res pixels (0,0),(1,0),(0,1),(1,1)
    torch.testing.assert_close(d_half[0, 0, 0], d_full[0, :2, :2].reshape(-1, 3).mean(0))


def test_turntable_views_look_at_center_and_sit_on_ring():
    cams = turntable_cameras(
        center=(0.5, 0.0, 0.2), radius=3.0, elevation_deg=30.0, num_views=8, width=32, height=24, fov_deg=60.0
    )
    assert len(cams) == 8 and (cams.width, cams.height) == (32, 24)
    assert cams.fx[0].item() == pytest.approx(focal_from_fov(60.0, 32))
    center = torch.tensor([0.5, 0.0, 0.2])
    torch.testing.assert_close((cams.centers - center).norm(dim=-1), torch.full((8,), 3.0))
    torch.testing.assert_close(cams.centers[:, 2] - 0.2, torch.full((8,), 3.0 * math.sin(math.radians(30))))
    uv, depth = cams.project(center.expand(8, 1, 3))
    torch.testing.assert_close(uv[:, 0], torch.tensor([16.0, 12.0]).expand(8, 2))
    cams.validate()


def test_indexing_and_cat():
    cams = turntable_cameras(num_views=6, width=8, height=8)
    sub = cams[[1, 3]]
    assert len(sub) == 2
    torch.testing.assert_close(sub.c2w[1], cams.c2w[3])
    assert len(cams[2]) == 1
    assert len(Cameras.cat([cams[:2], cams[4:]])) == 4


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.c2w[0, :3, :3].mul_(2.0), "not orthonormal"),
        (lambda c: c.c2w[0, 0, 3].fill_(float("nan")), "non-finite"),
        (lambda c: c.fx.zero_(), "non-positive focal"),
        (lambda c: c.c2w[0, :3, 0].neg_(), "determinant"),
        (lambda c: c.c2w[0, 3, 0].fill_(0.3), "bottom row"),
    ],
)
def test_validate_rejects_degenerate_cameras(mutate, message):
    cams = turntable_cameras(num_views=2, width=8, height=8)
    mutate(cams)
    with pytest.raises(CameraError, match=message):
        cams.validate(source="scene.json", names=["a.png", "b.png"])
    with pytest.raises(CameraError, match=r"scene\.json: view 0 \(a\.png\)"):
        cams.validate(source="scene.json", names=["a.png", "b.png"])


def test_look_at_rejects_degenerate_input():
    with pytest.raises(CameraError):
        look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0])  # looking straight down the up axis
    with pytest.raises(CameraError):
        look_at([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
