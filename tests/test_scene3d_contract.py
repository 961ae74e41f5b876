"""The 3D task on the shared task contract (csd_exp/tasks/base.py): pre-training and edit rounds are steps
of one loop, and the final result, its files and its metrics are separate pieces the base composes."""

from __future__ import annotations

import math

import pytest
import torch
from framework_support import compose_config

from csd_exp.tasks.results import final_metrics
from csd_exp.tasks.scene3d.editing import Scene3DTask

# 16x16 views (8 train + 2 held out), a 16^3 grid; pre-training steps 0-1, edit rounds of 2 views at 2 and 4.
TINY = [
    "task=scene3d",
    "data.image_size=16",
    "data.max_views=10",
    "task.field.resolution=16",
    "task.field.num_samples=16",
    "task.turntable_views=6",
    "task.pretrain_steps=2",
    "task.editor.every=2",
    "task.editor.views=2",
    "task.editor.iterations=2",
    "trainer.max_steps=6",
]
# The task's own metrics in summary order; consistency/reprojection_error comes first once the field is
# opaque enough for neighbouring turntable views to overlap (tests/test_scene3d.py checks it, trained).
OWN_METRICS = [
    "fidelity/heldout_psnr",
    "fidelity/heldout_psnr_pretrain",
    "consistency/mode_agreement_edited_views",
    "edit/edited_fraction",
    "edit/num_view_edits",
    "edit/distinct_views_edited",
]


@pytest.fixture
def task(tmp_path) -> Scene3DTask:
    from csd_exp.run import build_task

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    built = build_task(compose_config(TINY, tmp_path / "run"))
    built.setup("fit")
    yield built
    torch.set_num_threads(previous)


def test_the_task_keeps_the_base_loop_and_finalize():
    assert "training_step" not in vars(Scene3DTask) and "finalize" not in vars(Scene3DTask)
    assert Scene3DTask.loss_is_sharded is False  # every rank computes the same loss


def test_pretraining_and_edit_rounds_are_steps_of_one_loop(task):
    pretrain = task.distillation_step(0)
    assert set(pretrain.diagnostics) == {"photometric_psnr", "phase"} and pretrain.diagnostics["phase"] == 0.0
    assert pretrain.loss.requires_grad and math.isfinite(pretrain.diagnostics["photometric_psnr"])
    assert task.num_view_edits == 0 and task.heldout_psnr_pretrain is None

    edit = task.distillation_step(2)  # ends pre-training, then runs the first edit round before the loss
    assert edit.diagnostics["phase"] == 1.0 and task.heldout_psnr_pretrain is not None
    assert edit.diagnostics["edit/views"] == 2 and task.num_view_edits == 2
    assert set(edit.diagnostics) - {"photometric_psnr", "phase"} == {"edit/views", "edit/grad_norm", "edit/change"}
    assert "edit/views" not in task.distillation_step(3).diagnostics  # not an edit step


def test_result_files_and_metrics_are_separate(task, tmp_path):
    task.distillation_step(2)
    result = task.final_result()
    views = len(task.train_indices)
    assert result.sequence and result.edited.shape == result.source.shape == (views, 3, 16, 16)
    assert set(result.media) == {"source_grid", "edited_views_grid", "renders_train_grid", "turntable_grid"}
    assert all(image.ndim == 4 and image.shape[0] == 1 for image in result.media.values())
    assert result.mode_responsibilities.shape[0] == views and len(result.mode_names) == 4
    assert list(result.metrics) == OWN_METRICS  # barely trained: transparent, nothing to reproject
    assert result.metrics["edit/num_view_edits"] == 2 and result.metrics["edit/distinct_views_edited"] == 2

    videos = task.write_outputs(tmp_path / "out", result)
    assert videos == {"turntable": tmp_path / "out" / "turntable.mp4"}
    for name in ("turntable.gif", "turntable_grid.png", "edited_views/edits.json", "source_grid.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert len(list((tmp_path / "out" / "renders_train").glob("*.png"))) == views

    # Without an evaluator the task's own metrics and the exact prior's mode fractions remain.
    metrics = final_metrics(None, result, source_text="", target_text=task.prompt)
    assert list(metrics)[: len(OWN_METRICS)] == OWN_METRICS
    assert sum(v for k, v in metrics.items() if k.startswith("consistency/mode_fraction/")) == pytest.approx(1.0)
