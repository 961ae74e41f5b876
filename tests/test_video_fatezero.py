"""task=video_fatezero: the CLI end to end on the bundled clip and a frame folder, resume by replay, the
attention store's memory guard, and the bad-input errors (model group, blend / eq words)."""

from __future__ import annotations

import json

import pytest
import torch
from framework_support import FAST, compose_config, run_cli

from csd_exp.data.video_write import write_frames

TINY = ["task=video_fatezero", "model=tiny_sd", "task.frame_size=8", "data.max_frames=3"]
PROMPTS = ["source_prompt=a photo of a city street", "prompt=a watercolor photo of a city street"]
#: The keys task=video's summary.json has (csd_exp/run.py), and its metrics for a prior without modes.
SUMMARY_KEYS = {"status", "metrics", "seed", "steps", "wall_time_s", "versions", "device", "world_size", "outputs"}
VIDEO_METRICS = {"fidelity/psnr", "fidelity/ssim", "consistency/warp_error"}


def test_the_cli_runs_two_steps_on_the_bundled_clip_and_on_a_frame_folder(tmp_path):
    """One CLI sweep over the two inputs (one process: the imports are paid once). One DDIM step each way:
    step 1 inverts (storing the maps), step 2 edits with every fusion on."""
    write_frames(torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(0)), tmp_path / "clip")
    sweep = tmp_path / "sweep"
    fusion = [
        "task.num_inference_steps=1",
        "task.cross_replace_steps=1.0",
        "task.self_replace_steps=1.0",
        "task.blend_words=[street]",
        "task.eq_params={words:[watercolor],values:[2]}",
    ]
    args = [
        "-m",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        *PROMPTS,
        *FAST,
        *fusion,
        f"data.path=sample:pan,{tmp_path / 'clip'}",
    ]
    result = run_cli(args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 2
    import imageio.v3 as iio

    for out, metrics in zip(runs, (VIDEO_METRICS, VIDEO_METRICS - {"consistency/warp_error"})):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        assert SUMMARY_KEYS <= set(summary) and set(summary["metrics"]) == metrics  # no known motion for a folder
        assert summary["config"]["method"] == "fatezero"
        for name in ("edited.mp4", "edited.gif", "source.mp4", "edited_grid.png", "edited_frames/frame_00002.png"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert (out / "checkpoints" / "last.ckpt").is_file()
    assert iio.imread(runs[1] / "edited_frames" / "frame_00000.png").shape == (20, 30, 3)  # the folder's size


def _task(tmp_path, *overrides):
    from csd_exp.run import build_task

    task = build_task(compose_config([*TINY, *PROMPTS, *overrides], tmp_path))
    task.configure_particles(torch.device("cpu"))
    return task


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")  # steps called without a Trainer
def test_a_resumed_run_replays_the_steps_before_it_and_ends_identical(tmp_path):
    """Inversion and the attention store are not checkpointed: the first step after a resume replays the
    deterministic steps before it, so the edit equals the uninterrupted one bit for bit."""
    options = ["task.num_inference_steps=2", "task.blend_words=[street]", "task.self_replace_steps=1.0"]
    whole = _task(tmp_path / "a", *options)
    for index in range(4):
        whole.training_step(index, index)
    resumed = _task(tmp_path / "b", *options)  # a fresh process that loaded the checkpoint of step 3
    resumed.training_step(3, 0)
    assert torch.equal(whole.latents, resumed.latents)
    assert not torch.equal(whole.latents, whole.source_latents) and whole.store is None  # edited; store freed


def test_the_attention_store_stops_early_when_it_would_outgrow_memory(tmp_path, monkeypatch):
    import csd_exp.tasks.video_fatezero as fatezero

    monkeypatch.setattr(fatezero, "default_memory_budget", lambda: 10_000)
    task = _task(tmp_path, "task.num_inference_steps=4", "task.attention_store_device=cpu")
    with pytest.raises(
        ValueError, match=r"attention store would need .* MiB .*data.max_frames.*attention_store_device=cpu"
    ):
        for index in range(4):
            task._advance(index, log_step=False)
    assert task.store is None  # the maps are dropped, not kept while the error propagates


@pytest.mark.parametrize("task", ["video_fatezero", "video_pix2video"])
@pytest.mark.parametrize("model", ["ip2p", "exact", "tiny_ip2p"])
def test_a_model_that_is_not_stable_diffusion_text_to_image_is_refused_at_compose_time(task, model, tmp_path):
    from csd_exp.schema import ConfigError, validate_composed

    cfg = compose_config([f"task={task}", f"model={model}"], tmp_path)
    with pytest.raises(
        ConfigError, match=rf"task={task} .* not model={model}: choose model=sd15, model=sd21, model=tiny_sd"
    ):
        validate_composed(cfg)


def test_the_cli_names_the_model_groups_that_work(tmp_path):
    result = run_cli(["task=video_fatezero", "model=exact", f"paths.output_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0
    assert "model=sd15, model=sd21, model=tiny_sd" in result.stderr


def test_python_callers_get_the_same_error_from_the_task(tmp_path):
    from csd_exp.priors import ExactScorePrior
    from csd_exp.tasks.video_fatezero import require_text_to_image_prior

    with pytest.raises(ValueError, match="model=sd15, model=sd21, model=tiny_sd"):
        require_text_to_image_prior(ExactScorePrior(), "video_fatezero")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["task.blend_words=[car]"],
            r"task.blend_words: 'car' is not a word .* its words are: a, photo, of, a, city, street",
        ),
        (["task.eq_params={words:[ink],values:[5]}"], r"task.eq_params.words: 'ink' .* a, watercolor, photo"),
        (["task.temporal_attention_frames=[next]"], "first, previous, self, middle, last"),
        (["model.max_rows_per_call=2"], "max_rows_per_call=2: set it to at least 3"),
    ],
)
def test_bad_fatezero_input_fails_before_any_step(overrides, message, tmp_path):
    from csd_exp.run import build_task

    with pytest.raises(ValueError, match=message):
        build_task(compose_config([*TINY, *PROMPTS, *overrides], tmp_path))
