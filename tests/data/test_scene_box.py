"""A camera inside the 3D scene box warns (the field can put density in front of it)."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import torch

from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.scene import warn_cameras_inside_box
from csd_exp.data.scene_formats import write_nerfstudio_scene
from csd_exp.data.sources import SceneSource

BIG_BOX = torch.tensor([[-50.0, -50.0, -50.0], [50.0, 50.0, 50.0]])


def test_cameras_outside_the_box_pass_silently(caplog):
    scene = make_sample_scene(num_views=6, num_val=1, size=(8, 8), seed=0)
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.scene"):
        assert warn_cameras_inside_box(scene) == []
    assert caplog.text == ""


def test_cameras_inside_the_box_warn_naming_them(caplog):
    scene = make_sample_scene(num_views=6, num_val=1, size=(8, 8), seed=0)
    # Only the first camera inside: a box around its centre, away from the others.
    centre = scene.cameras.centers[0]
    one = dataclasses.replace(scene, scene_box=torch.stack([centre - 1e-3, centre + 1e-3]))
    everyone = dataclasses.replace(scene, scene_box=BIG_BOX)
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.scene"):
        assert warn_cameras_inside_box(one) == [0]
        assert "1 of 6 cameras lie inside the scene box" in caplog.text and "(view 0)" in caplog.text
        caplog.clear()
        assert warn_cameras_inside_box(everyone) == list(range(6))
    assert "6 of 6 cameras" in caplog.text and "and 1 more" in caplog.text and "'scene_box'" in caplog.text


def test_the_3d_task_warns_about_a_scene_box_around_its_cameras(tmp_path, caplog):
    from csd_exp.distill import Guidance
    from csd_exp.priors import ExactScorePrior
    from csd_exp.render import VoxelRadianceField
    from csd_exp.tasks import RunInputs, Scene3DTask
    from csd_exp.tasks.scene3d.editors import CSDEditEditor

    scene = make_sample_scene(num_views=6, num_val=1, size=(16, 16), seed=0)
    folder = tmp_path / "scene"
    write_nerfstudio_scene(dataclasses.replace(scene, scene_box=BIG_BOX), folder)
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.scene"):
        Scene3DTask(
            ExactScorePrior(),
            Guidance("source_branch", "rbf", guidance_scale=1.5, image_guidance_scale=1.5),
            inputs=RunInputs(prompt="turn it into a pop-art painting", max_steps=320),
            data=SceneSource(path=str(folder)),
            field=partial(VoxelRadianceField, resolution=8, num_samples=8),
            optimizer=lambda params: torch.optim.Adam(params),
            editor=CSDEditEditor(
                every=40, views=2, iterations=2, lr=0.5, lr_decay=0.9, lr_decay_every=20, init="render"
            ),
        )
    assert f"scene of {folder}: 6 of 6 cameras lie inside the scene box" in caplog.text
