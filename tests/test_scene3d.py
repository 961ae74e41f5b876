"""The 3D editing task (csd_exp/tasks/scene3d/editing.py) end to end through the CLI config, on tiny scenes."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from framework_support import compose_config
from PIL import Image

from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.scene_formats import write_nerfstudio_scene
from csd_exp.data.sources import SceneSource
from csd_exp.priors import ExactScorePrior
from csd_exp.render import VoxelRadianceField
from csd_exp.tasks.base import RunInputs
from csd_exp.tasks.scene3d.editing import Scene3DTask
from csd_exp.tasks.scene3d.editors import CSDEditEditor

# 16x16 views, 10 views (8 train + 2 held out), a 16^3 grid: one run takes a few seconds on one thread.
TINY = [
    "trainer=cpu",
    "logger=csv",
    "~callbacks.progress",
    "callbacks.checkpoint.every_n_train_steps=1",
    "data.image_size=16",
    "data.max_views=10",
    "task.field.resolution=16",
    "task.field.num_samples=16",
    "task.field.lr_density=0.3",
    "task.field.lr_color=0.3",
    "task.turntable_views=6",
    "trainer.val_check_interval=100",
    "task.views_per_step=4",
]
# Pre-train 20 steps, then one CSD-Edit round of 4 views at step 20 and two more training steps.
CSD = [
    "task=scene3d",
    "trainer.max_steps=22",
    "task.pretrain_steps=20",
    "task.editor.every=100",
    "task.editor.views=4",
    "task.editor.iterations=10",
    "task.editor.lr=1.0",
]
KEYS = (
    "consistency/mode_agreement",
    "consistency/reprojection_error",
    "fidelity/heldout_psnr",
    "fidelity/heldout_psnr_pretrain",
    "fidelity/psnr",
)


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory) -> Path:
    """The bundled sample scene written as a nerfstudio folder (10 views, 16x16)."""
    folder = tmp_path_factory.mktemp("scene") / "sample"
    write_nerfstudio_scene(make_sample_scene(num_views=10, num_val=2, size=(16, 16), seed=0), folder)
    return folder


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_csd_edit_run_writes_outputs_and_never_touches_the_scene(run_job, scene_folder):
    before = _bytes(scene_folder)
    summary, run_dir = run_job([*TINY, *CSD, f"data.path={scene_folder}"])
    assert summary["status"] == "completed" and summary["steps"] == 22
    metrics = summary["metrics"]
    for key in KEYS:
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 < metrics["consistency/mode_agreement"] <= 1.0
    assert metrics["edit/num_view_edits"] == 4 and metrics["edit/distinct_views_edited"] == 4
    assert not any(k.startswith(("clip/", "lpips/")) for k in metrics), "CLIP/LPIPS need weights that are absent"
    for name in (
        "summary.json",
        "turntable.mp4",
        "turntable.gif",
        "turntable_grid.png",
        "edited_views/edits.json",
        "renders_train_grid.png",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    # The user's scene folder is byte-for-byte unchanged and holds nothing new.
    assert _bytes(scene_folder) == before
    # The edited training images are edits of the photos: nearer one of the instruction's modes than the photo.
    prior = ExactScorePrior()
    manifest = json.loads((run_dir / "edited_views" / "edits.json").read_text())
    assert len(manifest["edited"]) == 4
    for index, name in manifest["edited"].items():
        original = prior.encode(_png(scene_folder / "images" / f"frame_{int(index):05d}.png")[None])
        edited = prior.encode(_png(run_dir / "edited_views" / name)[None])
        modes = prior.mode_means(original, "turn it into a pop-art painting")
        to_mode = (modes - edited[None]).pow(2).mean(dim=(1, 2, 3, 4)).min()
        assert to_mode < 0.5 * (edited - original).pow(2).mean(), name


def test_in2n_baseline_runs(run_job, scene_folder):
    summary, run_dir = run_job(
        [
            *TINY,
            "task=scene3d_in2n",
            "trainer.max_steps=14",
            "task.pretrain_steps=10",
            "task.editor.every=2",
            "task.editor.diffusion_steps=4",
            f"data.path={scene_folder}",
        ]
    )
    assert summary["status"] == "completed" and summary["steps"] == 14
    metrics = summary["metrics"]
    assert metrics["edit/num_view_edits"] == 2  # steps 10 and 12, one view each
    assert metrics["edit/distinct_views_edited"] == 2
    assert "consistency/mode_agreement" in metrics and (run_dir / "turntable.mp4").is_file()
    assert summary["config"]["task"]["editor"]["_target_"].endswith("IN2NEditor")


def _write_ns(folder: Path, frames: list[dict], images: dict[str, tuple[int, int]]) -> Path:
    (folder / "images").mkdir(parents=True)
    for name, (w, h) in images.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / name)
    (folder / "transforms.json").write_text(json.dumps({"fl_x": 20.0, "fl_y": 20.0, "frames": frames}))
    return folder


def _pose(z: float = 3.0) -> list[list[float]]:
    return [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z], [0, 0, 0, 1]]


def _bad_scenes(root: Path) -> dict[str, tuple[Path, str]]:
    no_cameras = root / "no_cameras"
    (no_cameras / "images").mkdir(parents=True)
    frames = [{"file_path": f"images/{i}.png", "transform_matrix": _pose(3 + i)} for i in range(3)]
    missing = _write_ns(root / "missing", frames, {"images/0.png": (16, 16), "images/1.png": (16, 16)})
    mixed = _write_ns(
        root / "mixed", frames, {"images/0.png": (16, 16), "images/1.png": (16, 16), "images/2.png": (20, 16)}
    )
    degenerate_frames = [dict(f) for f in frames]
    degenerate_frames[1]["transform_matrix"] = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3], [0, 0, 0, 1]]
    degenerate = _write_ns(root / "degenerate", degenerate_frames, {f"images/{i}.png": (16, 16) for i in range(3)})
    return {
        "no_cameras": (no_cameras, "transforms.json"),
        "missing": (missing, "2.png"),
        "mixed": (mixed, "2.png"),
        "degenerate": (degenerate, "1.png"),
    }


@pytest.mark.parametrize("case", ["no_cameras", "missing", "mixed", "degenerate"])
def test_bad_scene_folders_fail_before_training_naming_the_file(tmp_path, case):
    from csd_exp.run import run

    folder, named = _bad_scenes(tmp_path / "scenes")[case]
    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, *CSD, f"data.path={folder}"], run_dir)
    with pytest.raises(ValueError) as error:
        run(cfg)
    assert named in str(error.value)
    assert not (run_dir / "checkpoints").exists(), "the error must come before any training"


def _final_state(run_dir: Path) -> tuple[dict, dict]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"], checkpoint["scene3d"]


def test_resume_restores_the_edited_image_set(run_job, scene_folder):
    # Edit rounds at steps 3 and 5 (4 views each); the resumed run starts from the checkpoint after step 4,
    # i.e. after the first round, and must end exactly where the uninterrupted run ends.
    base = [
        *TINY,
        "task=scene3d",
        "task.pretrain_steps=3",
        "task.editor.every=2",
        "task.editor.views=4",
        "task.editor.iterations=5",
        f"data.path={scene_folder}",
    ]
    _, straight = run_job([*base, "trainer.max_steps=7"], name="straight")
    _, first = run_job([*base, "trainer.max_steps=4"], name="first")
    first_state = _final_state(first)[1]
    assert len(first_state["edited_indices"]) == 4
    summary, resumed = run_job(
        [*base, "trainer.max_steps=7", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"], name="resumed"
    )
    assert summary["steps"] == 7 and summary["metrics"]["edit/num_view_edits"] == 8
    (field_a, edits_a), (field_b, edits_b) = _final_state(straight), _final_state(resumed)
    assert edits_a["edited_indices"] == edits_b["edited_indices"]
    torch.testing.assert_close(edits_b["edited_images"], edits_a["edited_images"], rtol=0, atol=1e-6)
    assert edits_a["heldout_psnr_pretrain"] == pytest.approx(edits_b["heldout_psnr_pretrain"])
    for name in field_a:
        torch.testing.assert_close(field_b[name], field_a[name], rtol=0, atol=1e-5)


def _tiny_task(**kwargs) -> Scene3DTask:
    from csd_exp.distill import Guidance
    from csd_exp.priors import ExactScorePrior

    settings = dict(every=40, views=8, iterations=40, lr=0.5, lr_decay=0.9, lr_decay_every=20, init="render")
    settings.update(kwargs.pop("editor", {}))
    editor = kwargs.pop("editor_object", None) or CSDEditEditor(**settings)
    guidance = kwargs.pop("guidance", None) or Guidance(
        "source_branch", "rbf", guidance_scale=1.5, image_guidance_scale=1.5
    )  # CSD-Edit
    options = dict(
        prompt="turn it into a pop-art painting",
        data=SceneSource(image_size=16, max_views=10),
        field=partial(VoxelRadianceField, resolution=8, num_samples=8),
        optimizer=lambda params: torch.optim.Adam(params),
        editor=editor,
    )
    options.update(kwargs)
    run = {"max_steps": 320, **{k: options.pop(k) for k in ("prompt", "seed", "max_steps") if k in options}}
    inputs = RunInputs(**run)  # Scene3DTask's former max_steps default, 320
    return Scene3DTask(ExactScorePrior(), guidance, inputs=inputs, **options)


def test_edit_rounds_cover_every_view_before_repeating():
    task = _tiny_task(editor={"views": 3}, max_steps=500)
    rounds = [task.edit_round_views(r) for r in range(8)]
    assert all(len(set(r)) == 3 for r in rounds)
    first_epoch = [v for r in rounds[:2] for v in r]  # 8 training views: the first 6 draws are distinct
    assert len(set(first_epoch)) == 6 and set(first_epoch) <= set(task.train_indices)
    assert rounds == [task.edit_round_views(r) for r in range(8)]  # a pure function of (seed, round)


def test_short_runs_clamp_pretraining_and_unknown_keys_fail():
    assert _tiny_task(pretrain_steps=200, max_steps=2).pretrain_steps == 1
    with pytest.raises(TypeError, match="frame_size"):
        _tiny_task(data=SceneSource(image_size=16, frame_size=3))
    with pytest.raises(ValueError, match="DatasetEditor"):
        _tiny_task(editor_object={"kind": "dreamfusion"})
    with pytest.raises(ValueError, match="training views"):
        _tiny_task(editor={"views": 9})
    with pytest.raises(TypeError, match="diffusion_steps"):
        _tiny_task(editor={"diffusion_steps": 20})  # an in2n setting given to the csd_edit editor
    from csd_exp.schema import check_target

    # The editor's choices are its signature's annotation, refused when the config is checked (issue 21: the
    # constructor no longer repeats the check).
    with pytest.raises(ValueError, match="task.editor.init"):
        check_target("task.editor", {"_target_": "csd_exp.tasks.scene3d.editors.CSDEditEditor", "init": "photo"})


def test_annealed_schedules_run_over_the_edit_iterations_not_the_trainer_steps(monkeypatch):
    """Edit rounds at steps 200, 240, ..., 480 (8 rounds of 40 iterations): the schedule's horizon is those
    320 iterations, and round r, iteration k sits at position 40 r + k on it (it used to sit at step·40 + k,
    past the horizon from the first round, i.e. at the schedule's end point)."""
    from csd_exp.distill import Guidance, TimestepSchedule

    guidance = Guidance(
        "source_branch",
        "rbf",
        schedule=TimestepSchedule(annealing="linear"),
        guidance_scale=1.5,
        image_guidance_scale=1.5,
    )
    task = _tiny_task(guidance=guidance, max_steps=520, pretrain_steps=200)
    assert task.num_edit_rounds == 8 and guidance.schedule.max_steps == 8 * 40
    positions = []

    class Stop(Exception):
        pass

    def record_position(self, *args, **kwargs):
        positions.append(kwargs["schedule_step"])
        raise Stop

    monkeypatch.setattr(type(guidance), "__call__", record_position)
    with pytest.raises(Stop):
        task.editor.edit_round(task.scene_view(), task.edit_round_views(1), step=240, round_index=1)
    assert positions == [40]
    low, high = guidance.schedule.bounds(40)
    assert high > guidance.schedule.bounds(8 * 40)[1]  # not yet at the annealed end point


def test_an_editor_written_outside_the_package_sees_a_scene_view_not_the_task():
    """The editor contract (docs/scene3d.md "A new editor"): a DatasetEditor subclass gets a SceneView in
    ``attach`` and ``edit_round`` and edits through it; here one that writes back the original photos."""
    from csd_exp.tasks.scene3d.editors import DatasetEditor
    from csd_exp.tasks.scene3d.view import SceneView

    class PhotoEditor(DatasetEditor):
        def attach(self, scene):
            self.seen = [type(scene)]
            self.rounds = scene.num_edit_rounds

        def edit_round(self, scene, views, step, round_index):
            self.seen.append(type(scene))
            rendered, originals = scene.edit_inputs(views)
            for view, photo in zip(views, originals):
                scene.images.replace(view, photo.cpu())
            return {"views": len(views), "change": float((rendered - originals).abs().mean())}

    editor = PhotoEditor(every=1, views=2)
    task = _tiny_task(editor_object=editor, pretrain_steps=1, max_steps=3)
    logged = [task.distillation_step(step).diagnostics for step in range(3)]
    assert editor.rounds == 2 and editor.seen == [SceneView] * 3
    assert task.num_view_edits == 4 and logged[1]["edit/views"] == 2.0 and "edit/views" not in logged[0]
    assert set(task.images.edited_indices) == set(task.edit_round_views(0) + task.edit_round_views(1))
