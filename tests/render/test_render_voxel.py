"""The dense voxel radiance field: shapes, ranges, gradients, determinism, learning."""

import math

import pytest
import torch
from analytic_support import analytic_field

from csd_exp.data.cameras import turntable_cameras
from csd_exp.render.base import RadianceField
from csd_exp.render.fit import evaluate_psnr, fit_field, psnr
from csd_exp.render.voxel import VoxelRadianceField, ray_aabb_intersect


def _sphere_field(resolution=40, num_samples=64):
    field = VoxelRadianceField(resolution=resolution, num_samples=num_samples)
    analytic_field(
        field,
        lambda p: torch.where(p.norm(dim=-1) < 0.5, torch.tensor(200.0), torch.tensor(0.0)),
        lambda p: (0.5 + 0.4 * p).clamp(0, 1),
    )
    return field


def test_render_shapes_ranges_and_initial_opacity():
    field = VoxelRadianceField(resolution=16, num_samples=24, init_opacity=0.1)
    cams = turntable_cameras(radius=4.0, num_views=3, width=20, height=12, fov_deg=100.0)
    out = field.render(cams)
    assert out.rgb.shape == (3, 3, 12, 20)
    assert out.depth.shape == out.opacity.shape == (3, 1, 12, 20)
    assert 0.0 <= out.rgb.min() and out.rgb.max() <= 1.0
    # the central ray crosses the box along a diagonal shorter than the full one: opacity <= init
    centre = out.opacity[:, 0, 5:7, 9:11]
    assert torch.all(centre > 0.02) and torch.all(centre <= 0.1 + 1e-4)
    # with a 100 degree field of view the corners see past the box and stay fully transparent
    assert out.opacity.min().item() < 1e-6


def test_opaque_sphere_depth_matches_geometry():
    field = _sphere_field()
    cams = turntable_cameras(radius=3.0, elevation_deg=20.0, num_views=2, width=24, height=24, fov_deg=30.0)
    out = field.render(cams, background=0.0)
    centre_depth = out.depth[:, 0, 11:13, 11:13].mean().item()
    assert centre_depth == pytest.approx(2.5, abs=0.06)  # sphere surface at radius 0.5, camera at 3
    assert out.opacity[:, 0, 11:13, 11:13].min().item() > 0.99
    assert out.opacity[:, 0, 0, 0].max().item() < 1e-3
    torch.testing.assert_close(out.rgb[:, :, 0, 0], torch.zeros(2, 3), atol=1e-4, rtol=0)  # black background


def test_background_spec_broadcasts():
    field = VoxelRadianceField(resolution=8, num_samples=8)
    cams = turntable_cameras(radius=3.0, num_views=2, width=8, height=8, fov_deg=20.0)
    red = field.render(cams, background=torch.tensor([1.0, 0.0, 0.0])).rgb
    assert red[:, 0].min() > 0.9 and red[:, 1].max() < 0.1 + 0.1  # nearly transparent box
    image_bg = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = field.render(cams, background=image_bg)
    assert (out.rgb - image_bg).abs().max() < 0.15


def test_render_is_differentiable_and_deterministic():
    field = _sphere_field(resolution=12, num_samples=16)
    cams = turntable_cameras(radius=3.0, num_views=2, width=10, height=10)
    out = field.render(cams)
    (out.rgb.mean() + out.opacity.mean()).backward()
    assert field.density.grad.abs().sum() > 0 and field.color.grad.abs().sum() > 0
    again = field.render(cams)
    assert torch.equal(out.rgb, again.rgb)
    jit_a = field.render(cams, generator=torch.Generator().manual_seed(3)).rgb
    jit_b = field.render(cams, generator=torch.Generator().manual_seed(3)).rgb
    jit_c = field.render(cams, generator=torch.Generator().manual_seed(4)).rgb
    assert torch.equal(jit_a, jit_b) and not torch.equal(jit_a, jit_c)


def test_chunked_render_matches_unchunked():
    field = _sphere_field(resolution=16, num_samples=16)
    cams = turntable_cameras(radius=3.0, num_views=2, width=9, height=7)
    full = field.render(cams)
    field.chunk_rays = 17
    chunked = field.render(cams)
    torch.testing.assert_close(full.rgb, chunked.rgb)
    torch.testing.assert_close(full.depth, chunked.depth)


def test_ray_aabb_intersection():
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    origins = torch.tensor([[0.0, -3.0, 0.0], [0.0, -3.0, 5.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb_intersect(origins, dirs, box)
    assert near[0].item() == pytest.approx(2.0) and far[0].item() == pytest.approx(4.0)
    assert far[1] <= near[1]  # miss
    assert near[2].item() == 0.0 and far[2].item() == pytest.approx(1.0)  # starts inside


def test_optimizer_groups_and_tv_regularizer():
    field = VoxelRadianceField(resolution=8, lr_density=0.2, lr_color=0.05, tv_weight=0.0)
    groups = field.parameters_for_optimizer(lr_scale=0.5)
    assert {g["name"]: g["lr"] for g in groups} == {"density": 0.1, "color": 0.025}
    covered = [p for g in groups for p in g["params"]]
    assert len(covered) == len(list(field.parameters()))
    assert field.regularizer().item() == 0.0
    field.tv_weight = 1.0
    assert field.regularizer().item() == 0.0  # constant grids
    with torch.no_grad():
        field.color.normal_(generator=torch.Generator().manual_seed(0))
    assert field.regularizer().item() > 0.0
    assert isinstance(field, RadianceField)


def test_invalid_construction():
    with pytest.raises(ValueError, match="aabb"):
        VoxelRadianceField(aabb=((0, 0, 0), (1, 0, 1)))
    with pytest.raises(ValueError, match="resolution"):
        VoxelRadianceField(resolution=1)
    with pytest.raises(ValueError, match="init_opacity"):
        VoxelRadianceField(init_opacity=1.0)


def test_reconstruction_learns_the_sample_scene(small_scene):
    """100 Adam steps on 10 training views at 32x32: PSNR must rise by more than 6 dB.

    (Measured: 7.1 dB -> ~25 dB on training views, ~20 dB on the held-out ones.)
    """
    scene = small_scene
    field = VoxelRadianceField(resolution=32, num_samples=32, aabb=scene.scene_box)
    before = evaluate_psnr(field, scene.train_images, scene.train_cameras)
    losses = fit_field(
        field,
        scene.train_images,
        scene.train_cameras,
        steps=100,
        views_per_step=4,
        generator=torch.Generator().manual_seed(0),
    )
    after = evaluate_psnr(field, scene.train_images, scene.train_cameras)
    held_out = evaluate_psnr(field, scene.val_images, scene.val_cameras)
    assert all(math.isfinite(x) for x in losses)
    assert after - before > 6.0, (before, after)
    assert after > 20.0 and held_out > 15.0, (after, held_out)
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])


def test_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, a) == float("inf")
