"""Depth-based reprojection error: near zero for consistent views, larger for perturbed ones."""

import math

import pytest
import torch
from analytic_support import analytic_field

from csd_exp.data.cameras import Cameras, look_at, turntable_cameras
from csd_exp.render.reprojection import reprojection_error, warp_to_view
from csd_exp.render.voxel import VoxelRadianceField


@pytest.fixture(scope="module")
def textured_sphere():
    """Opaque sphere whose colour is a smooth function of 3D position (so it is view-consistent)."""
    field = VoxelRadianceField(resolution=48, num_samples=96)
    analytic_field(
        field,
        lambda p: 60.0 * torch.sigmoid((0.6 - p.norm(dim=-1)) * 40.0),
        lambda p: torch.stack(
            [
                0.5 + 0.4 * torch.sin(4 * p[..., 0]),
                0.5 + 0.4 * torch.cos(3 * p[..., 1]),
                0.5 + 0.4 * torch.sin(5 * p[..., 2] + 1.0),
            ],
            dim=-1,
        ),
    )
    return field


def _views(field, cams):
    with torch.no_grad():
        return field.render(cams, background=0.0)


def test_identity_warp_returns_the_image():
    cam = turntable_cameras(num_views=1, width=16, height=12)
    image = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(0))
    warped, valid = warp_to_view(torch.full((1, 12, 16), 3.0), cam, image, cam)
    assert valid.all()
    torch.testing.assert_close(warped, image, atol=1e-4, rtol=0)


def test_rendered_views_are_consistent_and_perturbations_are_not(textured_sphere):
    cams = turntable_cameras(
        radius=3.0, elevation_deg=25.0, num_views=2, width=40, height=40, fov_deg=35.0, azimuths_deg=[0.0, 25.0]
    )
    out = _views(textured_sphere, cams)
    a, b = cams[0], cams[1]
    kwargs = dict(depth_b=out.depth[1], mask_a=out.opacity[0] > 0.5)
    consistent = reprojection_error(out.rgb[0], out.depth[0], a, out.rgb[1], b, **kwargs)
    # b's image paired with a wrongly posed camera (15 degrees further round the ring)
    wrong = turntable_cameras(
        radius=3.0, elevation_deg=25.0, num_views=1, width=40, height=40, fov_deg=35.0, azimuths_deg=[40.0]
    )
    misposed = reprojection_error(out.rgb[0], out.depth[0], a, out.rgb[1], wrong, **kwargs)
    # b's image recoloured (a view-inconsistent edit)
    edited = reprojection_error(out.rgb[0], out.depth[0], a, out.rgb[1].flip(0), b, **kwargs)
    # residual from volume-rendering blur and depth quantisation (measured ~0.014)
    assert consistent < 0.025, consistent
    assert misposed > 2.5 * consistent, (consistent, misposed)
    assert edited > 5 * consistent, (consistent, edited)


def test_occluded_and_out_of_view_pixels_are_excluded(textured_sphere):
    # opposite views see disjoint halves of the sphere: everything is occluded in b
    cams = turntable_cameras(radius=3.0, elevation_deg=0.0, num_views=2, width=24, height=24, fov_deg=35.0)
    out = _views(textured_sphere, cams)
    _, valid = warp_to_view(out.depth[0], cams[0], out.rgb[1], cams[1], depth_b=out.depth[1])
    assert valid.float().mean().item() < 0.02
    err = reprojection_error(
        out.rgb[0], out.depth[0], cams[0], out.rgb[1], cams[1], depth_b=out.depth[1], min_valid_fraction=0.05
    )
    assert math.isnan(err)


def test_exact_geometry_of_a_plane():
    """A fronto-parallel plane at depth 4 seen by two translated cameras: pixel shift = fx * baseline / depth."""
    fx, baseline, depth = 20.0, 0.4, 4.0
    c2w = torch.cat([look_at([0.0, -4.0, 0.0]), look_at([baseline, -4.0, 0.0], [baseline, 0.0, 0.0])])
    cams = Cameras(c2w, fx, fx, 16.0, 16.0, 32, 32)
    xs = torch.arange(32, dtype=torch.float32)
    image_b = xs.view(1, 1, 32).expand(3, 32, 32) / 31.0
    warped, valid = warp_to_view(torch.full((1, 32, 32), depth), cams[0], image_b, cams[1])
    shift = fx * baseline / depth  # = 2 pixels to the left in b
    expected = (xs - shift).view(1, 1, 32).expand(3, 32, 32) / 31.0
    torch.testing.assert_close(warped[:, valid], expected[:, valid])
    assert valid[:, :2].sum() == 0 and valid[:, 3:].all()


def test_input_checks():
    cam = turntable_cameras(num_views=2, width=8, height=8)
    with pytest.raises(ValueError, match="one camera"):
        reprojection_error(torch.zeros(3, 8, 8), torch.ones(1, 8, 8), cam, torch.zeros(3, 8, 8), cam[0])
    with pytest.raises(ValueError, match="depth_a"):
        reprojection_error(torch.zeros(3, 8, 8), torch.ones(1, 4, 4), cam[0], torch.zeros(3, 8, 8), cam[1])
