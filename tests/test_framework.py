"""The framework end to end: every experiment composes and steps, the main job, sweeps, W&B offline,
resume, Ctrl-C, and the early errors on bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from framework_support import CONFIG_DIR, FAST, REPO_ROOT, compose_config, run_cli

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SMALL_EXACT = ["data.short_side=32", "task.window_size=32", "task.window_stride=8"]


def _smoke_overrides(experiment: str) -> list[str]:
    """``debug=smoke``: sizes in conf/debug_sizes/ (chosen by the task), and the offline tiny stand-in of a
    model or kernel that needs weights in conf/debug_model/, conf/debug_kernel/ (chosen by the model and the
    kernel). Nothing per experiment, nothing per prior class: a new one needs no edit here."""
    return ["debug=smoke"]


def test_smoke_replaces_every_model_that_needs_weights_by_a_tiny_one_of_its_family(tmp_path):
    """Every model option with hub weights has its stand-in in conf/debug_model/, of the same prior family."""
    from csd_exp.methods import prior_family

    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        plain = compose_config([f"model={path.stem}"], tmp_path)
        if "pretrained_model_name_or_path" not in plain.model:
            continue
        assert (CONFIG_DIR / "debug_model" / f"smoke_{path.stem}.yaml").is_file(), f"no smoke stand-in for {path.stem}"
        smoke = compose_config([f"model={path.stem}", "debug=smoke"], tmp_path)
        assert "pretrained_model_name_or_path" not in smoke.model, path.stem
        assert prior_family(dict(smoke.model)) == prior_family(dict(plain.model)), path.stem


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_steps(experiment, run_job):
    summary, run_dir = run_job([f"experiment={experiment}", *_smoke_overrides(experiment)])
    assert summary["status"] == "completed"
    assert summary["steps"] == 2
    assert (run_dir / "summary.json").is_file()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["metrics"].values())


def test_main_job_edits_and_reports(run_job):
    summary, run_dir = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "trainer.max_steps=6"])
    metrics = summary["metrics"]
    for key in ("fidelity/psnr", "fidelity/ssim", "consistency/seam_error", "consistency/mode_agreement"):
        assert key in metrics, key
    assert 0.0 <= metrics["consistency/mode_agreement"] <= 1.0
    assert not any(k.startswith("clip/") for k in metrics), "CLIP metrics must be absent without weights"
    for name in ("source.png", "edited.png", "edited_fullres.png", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["seed"] == 0 and on_disk["versions"]["torch_build"] == torch.__version__
    assert on_disk["config"]["prompt"] == "turn it into a pop-art painting"
    # The edit changed the image, and a CSD-Edit step keeps it recognisably the source.
    assert 5.0 < metrics["fidelity/psnr"] < 60.0


def _canvas(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["canvas"]


def test_resume_continues_at_the_right_step(run_job):
    base = ["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT]
    _, straight = run_job([*base, "trainer.max_steps=4"], name="straight")
    _, first = run_job([*base, "trainer.max_steps=2"], name="first")
    resumed_summary, resumed = run_job(
        [*base, "trainer.max_steps=4", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"], name="resumed"
    )
    assert resumed_summary["steps"] == 4
    torch.testing.assert_close(_canvas(resumed), _canvas(straight), rtol=0, atol=1e-6)


def test_frozen_prior_weights_stay_out_of_checkpoints(run_job):
    _, run_dir = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert list(state) == ["canvas"]


def test_wandb_offline_run_writes_its_files(run_job, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary, run_dir = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "logger=wandb"])
    assert summary["status"] == "completed"
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].rglob("*.wandb"))
    media = list(runs[0].rglob("*.png"))
    assert media, "snapshots and the edited panorama should be logged as images"


def test_ctrl_c_keeps_a_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, caplog):
    from csd_exp.run import run
    from csd_exp.tasks import PanoramaTask

    original = PanoramaTask.distillation_step

    def interrupt_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(PanoramaTask, "distillation_step", interrupt_at_step_3)
    cfg = compose_config(
        [
            "experiment=panorama_exact_cpu",
            *FAST,
            *SMALL_EXACT,
            "trainer.max_steps=6",
            "callbacks.checkpoint.every_n_train_steps=100",
        ],
        tmp_path,
    )
    with caplog.at_level("WARNING"), pytest.raises(SystemExit):
        run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert "ckpt_path=" in caplog.text


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["data.path=/nonexistent/pano.jpg"], FileNotFoundError, "data.path"),
        (["data.short_side=16", "task.window_size=32"], ValueError, "smaller than one window"),
        (["task.window_stride=7"], ValueError, "do not tile"),
        (["task.window_stride=0"], ValueError, "window_stride"),
        (["prompt='paint it like a potato'"], ValueError, "pop-art"),
    ],
)
def test_bad_input_fails_before_any_long_work(overrides, error, message, tmp_path):
    from csd_exp.run import build_task

    cfg = compose_config(["experiment=panorama_exact_cpu", *SMALL_EXACT, *overrides], tmp_path)
    with pytest.raises(error, match=message):
        task = build_task(cfg)
        task.setup("fit")


@pytest.mark.parametrize("size, windows", [((480, 640), 2), ((600, 400), 3), ((500, 500), 1), ((400, 600), 3)])
def test_ordinary_photos_edit_with_the_default_panorama_settings(size, windows, tmp_path, caplog):
    """4:3, 2:3, square and 3:2 photos: fewer windows per step when the canvas has fewer windows."""
    from PIL import Image

    from csd_exp.run import build_task

    height, width = size
    gradient = torch.linspace(0, 255, width).round().to(torch.uint8).expand(height, width)
    Image.fromarray(torch.stack([gradient] * 3, dim=-1).numpy()).save(tmp_path / "photo.png")
    cfg = compose_config(["experiment=panorama_exact_cpu", f"data.path={tmp_path / 'photo.png'}"], tmp_path)
    with caplog.at_level("WARNING"):
        task = build_task(cfg)
    assert min(task.grid.height, task.grid.width) == 64 and len(task.grid) == windows
    assert task.windows_per_step == min(4, windows)
    assert "task.windows_per_step=4" in caplog.text


def test_a_nan_prior_stops_the_run_with_the_fix_named(tmp_path, monkeypatch):
    from csd_exp.priors import ExactScorePrior
    from csd_exp.run import run

    original = ExactScorePrior.predict_noise

    def nan_after_two_steps(self, noisy_latents, t, cond, **kwargs):
        prediction = original(self, noisy_latents, t, cond, **kwargs)
        calls = getattr(self, "_test_calls", 0) + 1
        self._test_calls = calls
        if calls > 2:
            prediction.target.fill_(float("nan"))
        return prediction

    monkeypatch.setattr(ExactScorePrior, "predict_noise", nan_after_two_steps)
    cfg = compose_config(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "trainer.max_steps=5"], tmp_path)
    with pytest.raises(FloatingPointError, match="model.torch_dtype"):
        run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "not finite" in summary["error"]
    # The last good checkpoint (step 2) is kept, not overwritten with broken parameters.
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert torch.isfinite(_canvas(tmp_path)).all()


def test_a_job_that_cannot_start_still_writes_its_summary(tmp_path):
    from csd_exp.run import run

    cfg = compose_config(["experiment=panorama_exact_cpu", *FAST, "data.path=/nonexistent/pano.jpg"], tmp_path)
    with pytest.raises(FileNotFoundError, match="data.path"):
        run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "pano.jpg" in summary["error"] and summary["steps"] == 0


def test_unreadable_image_is_named(tmp_path):
    from csd_exp.data.images import load_image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(broken)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(args, cwd=cwd, timeout=600)


def test_unknown_config_key_is_an_error(tmp_path):
    result = _cli(["task.window_sise=3"], cwd=tmp_path)
    assert result.returncode != 0
    assert "window_sise" in result.stderr


def test_two_job_multirun(tmp_path):
    result = _cli(
        [
            "-m",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "experiment=panorama_exact_cpu",
            *FAST,
            *SMALL_EXACT,
            "guidance=csd_edit,sds",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").rglob("summary.json"))]
    assert [s["config"]["run_name"] for s in summaries] == ["panorama_csd_edit", "panorama_sds"]
    assert all(s["status"] == "completed" for s in summaries)


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=panorama_sampling", "task.method=per_window", *SMALL_EXACT],
        ["task=panorama_sampling", "task.method=multidiffusion", *SMALL_EXACT],
        ["task=panorama_sampling", "task.method=downscaled", *SMALL_EXACT],
        ["task=video_sampling", "task.frame_size=32", "data.max_frames=4"],
        ["guidance=csd_edit_random_noise", *SMALL_EXACT],
        ["guidance=csd_edit_no_svgd", "guidance.official_scaling=true", *SMALL_EXACT],
        ["guidance=csd", "kernel=identity", *SMALL_EXACT],
        ["task.window_sampler=coverage_balanced", *SMALL_EXACT],
        ["schedule=paper", "schedule.annealing=sqrt", *SMALL_EXACT],
    ],
    ids=lambda o: " ".join(o[:2]),
)
def test_baselines_and_options_run_from_the_same_cli(overrides, run_job):
    summary, _ = run_job([*FAST, "task.num_inference_steps=3" if "sampling" in overrides[0] else "seed=1", *overrides])
    assert summary["status"] == "completed"
    assert summary["steps"] == (3 if "sampling" in overrides[0] else 2)
    assert "consistency/mode_agreement" in summary["metrics"]


def test_trainer_gpu_without_cuda_fails_before_the_prior_loads(tmp_path, monkeypatch):
    from csd_exp import run as run_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_module, "build_task", lambda cfg: pytest.fail("the prior must not be loaded"))
    cfg = compose_config(["experiment=panorama_exact_cpu", *FAST, "trainer=gpu"], tmp_path)
    with pytest.raises(RuntimeError, match="no CUDA device.*trainer=cpu"):
        run_module.run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "no CUDA device" in summary["error"]


def test_a_full_disk_reports_the_run_error_first_and_names_the_checkpoint(tmp_path, monkeypatch, caplog):
    import errno

    from csd_exp import run as run_module
    from csd_exp.tasks import PanoramaTask

    def fail_at_step_3(self, step):
        if step == 3:
            raise FloatingPointError("the run's own error")
        return original(self, step)

    def full_disk(path, summary):
        raise OSError(errno.ENOSPC, f"could not write {path}: No space left on device")

    original = PanoramaTask.distillation_step
    monkeypatch.setattr(PanoramaTask, "distillation_step", fail_at_step_3)
    monkeypatch.setattr(run_module, "write_summary", full_disk)
    cfg = compose_config(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "trainer.max_steps=6"], tmp_path)
    with caplog.at_level("ERROR"), pytest.raises(FloatingPointError, match="the run's own error"):
        run_module.run(cfg)
    assert "No space left on device" in caplog.text and "checkpoints/last.ckpt is kept" in caplog.text
    assert not list(tmp_path.glob(".summary.json*"))


def test_auto_dtype_is_float32_on_cpu_and_the_first_step_is_logged(run_job, caplog):
    with caplog.at_level("INFO"):
        summary, _ = run_job(
            [
                "experiment=panorama_exact_cpu",
                *FAST,
                "model=tiny_ip2p",
                "model.torch_dtype=auto",
                "data.short_side=8",
                "task.window_size=8",
                "task.window_stride=4",
            ]
        )
    assert summary["status"] == "completed"
    assert "prior on cpu, model.torch_dtype=auto -> float32" in caplog.text
    assert "first step took" in caplog.text and "prior in float32" in caplog.text


def _tiny_ip2p_folder(tmp_path) -> Path:
    from csd_exp.priors.tiny import _cached_build, build_tiny_ip2p

    return _cached_build(tmp_path / "models", "tiny_ip2p", build_tiny_ip2p, 0)


@pytest.mark.parametrize("task", ["panorama", "video", "scene3d"])
@pytest.mark.parametrize("model", ["exact", "tiny_ip2p", "ip2p"])
def test_every_model_group_runs_at_its_own_scale_with_only_its_location_set(task, model, tmp_path):
    """No size override: sizes are latent px, so the VAE factor of the prior decides the pixels."""
    from csd_exp.run import build_task

    location = [f"model.pretrained_model_name_or_path={_tiny_ip2p_folder(tmp_path)}"] if model == "ip2p" else []
    cfg = compose_config([f"task={task}", f"model={model}", *location], tmp_path)
    built = build_task(cfg)
    scale = int(built.prior.latent_scale_factor)
    if task == "panorama":  # the bundled 200 x 640 photo
        height, width = built.source_image.shape[-2:]
        expected = (192, 640) if model != "exact" else (64, 208)  # official: no upscaling, floored to 32 px
        assert (height, width) == expected and built.grid.size * scale <= min(height, width)
    elif task == "video":
        assert built.source_frames.shape[-1] == 64 * scale
    else:
        assert min(built.scene.height, built.scene.width) == 32 * scale


SIX_METHODS = ["csd_edit", "csd_edit_no_svgd", "sds", "per_frame", "fatezero", "pix2video"]
TINY_VIDEO = ["trainer.max_steps=2", "trainer.val_check_interval=1", "data.max_frames=3", "task.frame_size=8"]


def test_six_methods_are_one_sweep_on_the_same_frames(tmp_path):
    """One command compares distillation methods and zero-shot baselines: one W&B group, six labels, each
    method on the prior family its maths needs, and every run on the same clip, frames, pixels, steps and seeds."""
    sweep = tmp_path / "sweep"
    result = _cli(
        [
            "-m",
            f"method={','.join(SIX_METHODS)}",
            "experiment=video_exact_cpu",
            "seed=0,1",
            *TINY_VIDEO,
            "logger=wandb",
            "~callbacks.progress",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 12 and all(s["status"] == "completed" for s in summaries)
    assert sorted({s["method"] for s in summaries}) == sorted(SIX_METHODS)
    assert len({s["wandb"]["group"] for s in summaries}) == 1
    assert all(s["method"] in s["wandb"]["tags"] for s in summaries)
    families = {s["method"]: (s["prior_family"], s["model_family"], s["prior_setting"]) for s in summaries}
    for method in ("csd_edit", "csd_edit_no_svgd", "sds", "per_frame"):
        assert families[method] == ("instruction", "exact", "model"), method
    assert families["fatezero"] == ("text_to_image", "stable_diffusion", "priors.text_to_image")
    assert families["pix2video"] == ("depth", "stable_diffusion_depth", "priors.depth")  # as released
    assert {s["kernel"] for s in summaries if s["method"] == "csd_edit"} == {"rbf"}
    assert {s["kernel"] for s in summaries if s["method"] == "fatezero"} == {None}
    # The same frames for all: the tiny SD VAE halves the side, so its latent frame_size is 4 for 8 px.
    shared = ("input", "frames", "size_px", "steps", "guidance_scale")
    assert {tuple(str(s["conditions"][k]) for k in shared) for s in summaries} == {
        ("sample:pan", "3", "[8, 8]", "2", "1.5")
    }
    assert sorted(s["conditions"]["seed"] for s in summaries) == [0] * 6 + [1] * 6
    for summary in summaries:  # the frames actually edited, read from the outputs
        frames = sorted((Path(summary["outputs"]["run_dir"]) / "edited_frames").glob("*.png"))
        assert len(frames) == 3, summary["method"]
        from PIL import Image

        assert Image.open(frames[0]).size == (8, 8), summary["method"]
    steps = {s["method"]: (s["conditions"]["steps_meaning"], s["steps"]) for s in summaries}
    assert steps["csd_edit"] == ("updates", 2)
    assert steps["per_frame"] == ("denoising steps over the whole t range", 2)
    assert steps["fatezero"] == ("inversion steps and editing steps each", 4)  # trainer.max_steps each


@pytest.mark.parametrize(
    "overrides, label, kernel",
    [
        (["guidance=sds", "kernel=rbf"], "csd_edit_random_noise", "RBFKernel"),
        (["method=sds", "kernel=rbf", "model=tiny_sd"], "csd", "RBFKernel"),
        (["guidance=csd_edit", "kernel=identity_mean"], "csd_edit_no_svgd", "IdentityKernel"),
        (["method=csd_edit_no_svgd", "kernel=consensus"], "csd_edit", "ConsensusKernel"),
        (["guidance=csd"], "csd_edit_random_noise", "RBFKernel"),  # the exact prior is an instruction prior
        (["method=csd"], "csd", "RBFKernel"),  # brings its text-to-image prior
        (["guidance=csd", "kernel=identity"], "sds", "IdentityKernel"),
    ],
)
def test_the_label_follows_the_maths(overrides, label, kernel, tmp_path):
    from csd_exp.schema import validate_composed

    cfg = compose_config(["experiment=video_exact_cpu", *overrides], tmp_path)
    validate_composed(cfg)
    assert cfg.method == label and cfg.run_name == f"video_{label}"
    assert str(cfg.kernel._target_).endswith(kernel)


def test_a_method_brings_its_prior_family_and_keeps_the_pixels(tmp_path):
    from csd_exp.schema import validate_composed

    cfg = compose_config(["experiment=video_exact_cpu", "method=fatezero", "task.frame_size=16"], tmp_path)
    validate_composed(cfg)
    assert str(cfg.model._target_).endswith("tiny_stable_diffusion_prior")  # priors.text_to_image
    assert cfg.task.frame_size == 8  # 16 px on the exact prior (1 px per latent px) = 8 on the tiny SD VAE (2)
    single = compose_config(["method=fatezero", "model=tiny_sd", "task.frame_size=16"], tmp_path)
    validate_composed(single)  # a model of the method's family, chosen by hand, is the prior (sizes as given)
    assert single.task.frame_size == 16 and str(single.model._target_).endswith("tiny_stable_diffusion_prior")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["method=bogus"], "method=bogus is not an option"),
        (["method=multidiffusion", "experiment=video_exact_cpu"], "methods that fit: csd_edit"),
        (["method=fatezero", "experiment=video_exact_cpu", "model=exact"], "model=exact is an instruction one"),
        (["method=csd_edit", "experiment=generation3d_exact_cpu"], "methods that fit: csd, sds"),
    ],
)
def test_a_method_that_does_not_fit_is_refused_in_one_line(args, expected, tmp_path):
    result = _cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("csd-exp: ") and expected in lines[0], result.stderr[-2000:]


def test_the_caption_is_source_caption_and_its_old_name_still_works(run_job, caplog):
    """source_caption (CLIP's caption) and guidance.source_prompt (DDS's source branch) are two things; the
    caption's old name, top-level source_prompt, is taken with a one-line notice; text-to-3D has no caption."""
    with caplog.at_level("WARNING"):
        summary, _ = run_job(["experiment=panorama_exact_cpu", *FAST, *SMALL_EXACT, "source_prompt=a rocket"])
    assert summary["status"] == "completed"
    config = summary["config"]
    # The task takes the caption from the run's inputs (one RunInputs node), not from a copy in its own YAML.
    from omegaconf import OmegaConf

    from csd_exp.tasks.base import RunInputs

    assert "source_prompt" not in config["task"] and "source_caption" not in config["task"]
    assert config["source_caption"] == "a rocket"
    assert RunInputs.from_config(OmegaConf.create(config)).caption == "a rocket"
    assert config["guidance"]["source_prompt"] == ""  # the DDS text is untouched by the caption
    notices = [r.getMessage() for r in caplog.records if "old name of source_caption" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    generation = compose_config(["experiment=generation3d_exact_cpu"], Path("/tmp/unused"))
    assert "source_prompt" not in generation.task
    from csd_exp.run import build_task  # a caller that composes itself gets the old name's caption too

    built = build_task(
        compose_config(["experiment=panorama_exact_cpu", *SMALL_EXACT, "source_prompt=a cat"], Path("/tmp/unused"))
    )
    assert built.source_prompt == "a cat"


@pytest.mark.parametrize(
    "method, family, rows",
    [("csd_edit", "instruction", 5 * 4), ("sds", "instruction", 3 * 4), ("per_frame", "instruction", 3 * 4)],
)
def test_the_conditions_state_the_unet_rows_of_a_step(method, family, rows, tmp_path):
    from omegaconf import OmegaConf

    from csd_exp.methods import conditions
    from csd_exp.schema import validate_composed

    cfg = compose_config(["experiment=video_exact_cpu", f"method={method}", "data.max_frames=4"], tmp_path)
    validate_composed(cfg)
    block = conditions(OmegaConf.to_container(cfg, resolve=True), latent_scale_factor=1, family=family)
    assert block["unet_passes_per_step"] == rows and block["frames"] == 4 and block["size_px"] == [64, 64]
