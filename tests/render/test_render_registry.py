"""The backend registry: built-in voxel field, decorator and lazy dotted-path registration."""

import pytest
import torch

from csd_exp.render.base import (
    RadianceField,
    RenderOutput,
    available_fields,
    build_field,
    register_field,
    register_field_path,
    resolve_background,
)
from csd_exp.data.cameras import turntable_cameras
from csd_exp.render.voxel import VoxelRadianceField


def test_voxel_is_registered_and_built_with_kwargs():
    assert "voxel" in available_fields()
    field = build_field("voxel", resolution=8, num_samples=4)
    assert isinstance(field, VoxelRadianceField) and field.resolution == (8, 8, 8)


def test_unknown_backend_lists_available():
    with pytest.raises(KeyError, match="voxel"):
        build_field("no-such-backend")


def test_decorator_registration_of_a_minimal_backend():
    @register_field("test-constant-colour")
    class ConstantField(RadianceField):
        """The smallest conforming backend: a learnable constant colour, fully opaque."""

        def __init__(self, colour=0.5):
            super().__init__()
            self.colour = torch.nn.Parameter(torch.full((3,), float(colour)))

        def render(self, cameras, *, background=None, generator=None):
            V, H, W = len(cameras), cameras.height, cameras.width
            rgb = self.colour.view(1, 3, 1, 1).expand(V, 3, H, W)
            return RenderOutput(rgb, torch.ones(V, 1, H, W), torch.ones(V, 1, H, W))

        def parameters_for_optimizer(self, lr_scale=1.0):
            return [{"name": "colour", "params": [self.colour], "lr": 0.1 * lr_scale}]

    field = build_field("test-constant-colour", colour=0.25)
    out = field.render(turntable_cameras(num_views=2, width=4, height=3))
    assert out.rgb.shape == (2, 3, 3, 4) and out.rgb.max().item() == 0.25
    assert field.regularizer().item() == 0.0
    with pytest.raises(ValueError, match="already registered"):
        register_field("test-constant-colour")(VoxelRadianceField)
    with pytest.raises(TypeError):
        register_field("test-not-a-field")(int)


def test_lazy_path_registration_imports_on_build():
    register_field_path("test-lazy-voxel", "csd_exp.render.voxel:VoxelRadianceField")
    assert isinstance(build_field("test-lazy-voxel", resolution=4), VoxelRadianceField)
    register_field_path("test-lazy-missing", "csd_exp.render.no_such_module:Field")
    with pytest.raises(ModuleNotFoundError):
        build_field("test-lazy-missing")
    with pytest.raises(ValueError, match="package.module:ClassName"):
        register_field_path("test-bad", "csd_exp.render.voxel.VoxelRadianceField")


def test_resolve_background():
    dev = torch.device("cpu")
    assert resolve_background(None, 2, 3, 4, dev, default=1.0).shape == (2, 3, 3, 4)
    assert resolve_background(0.5, 1, 1, 1, dev).flatten().tolist() == [0.5] * 3
    assert resolve_background((0.0, 1.0, 0.0), 1, 1, 1, dev).flatten().tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        resolve_background((0.0, 1.0), 1, 1, 1, dev)
