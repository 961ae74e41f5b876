"""Backends are chosen by ``_target_``: a new one is a class and a config line, no registry."""

import pytest
import torch
from backends_support import ConstantField
from framework_support import compose_config

from csd_exp.data.cameras import turntable_cameras
from csd_exp.render import RadianceField, VoxelRadianceField
from csd_exp.render.base import resolve_background


def test_the_default_scene3d_field_is_the_voxel_backend(tmp_path):
    from csd_exp.run import build_task

    task = build_task(compose_config(["task=scene3d", "data.image_size=8", "data.max_views=12"], tmp_path))
    assert isinstance(task.field, VoxelRadianceField) and task.field.resolution == (48, 48, 48)
    torch.testing.assert_close(task.field.aabb, task.scene.scene_box.to(task.field.aabb.dtype))


def test_a_new_backend_is_one_class_named_in_the_config(tmp_path):
    from csd_exp.run import build_task

    overrides = [
        "task=scene3d",
        "data.image_size=8",
        "data.max_views=12",
        "~task.field",
        "+task.field={_target_:backends_support.ConstantField,_partial_:true,colour:0.25}",
    ]
    task = build_task(compose_config(overrides, tmp_path))
    assert isinstance(task.field, ConstantField) and isinstance(task.field, RadianceField)
    out = task.field.render(turntable_cameras(num_views=2, width=4, height=3))
    assert out.rgb.shape == (2, 3, 3, 4) and out.rgb.max().item() == 0.25
    assert task.field.regularizer().item() == 0.0


def test_a_field_target_that_is_not_a_radiance_field_is_refused(tmp_path):
    from csd_exp.run import build_task

    overrides = [
        "task=scene3d",
        "data.image_size=8",
        "data.max_views=12",
        "~task.field",
        "+task.field={_target_:builtins.dict,_partial_:true}",
    ]
    with pytest.raises(ValueError, match="not a csd_exp.render.RadianceField"):
        build_task(compose_config(overrides, tmp_path))


def test_resolve_background():
    dev = torch.device("cpu")
    assert resolve_background(None, 2, 3, 4, dev, default=1.0).shape == (2, 3, 3, 4)
    assert resolve_background(0.5, 1, 1, 1, dev).flatten().tolist() == [0.5] * 3
    assert resolve_background((0.0, 1.0, 0.0), 1, 1, 1, dev).flatten().tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        resolve_background((0.0, 1.0), 1, 1, 1, dev)
