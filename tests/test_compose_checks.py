"""Mistakes caught when the config is composed: key typos, missing inputs, region boxes, optimized_metric,
missing extras, and what ``csd-exp --help`` shows. Each refusal is a line or two, before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from framework_support import REPO_ROOT, run_cli

from csd_exp.schema import ConfigError
from csd_exp.schema import inputs as compose_inputs
from csd_exp.schema.composition import explain_composition_error, missing_extra

SMALL = ["experiment=panorama_exact_cpu", "trainer.max_steps=1"]
REGIONS = ["experiment=panorama_region_exact_cpu", "trainer.max_steps=1"]
#: Our data sources, recognised by what their classes declare they read (``reads``), not by these names.
IMAGE, CLIP, SCENE = "csd_exp.data.ImageSource", "csd_exp.data.ClipSource", "csd_exp.data.SceneSource"

# Runs ``csd-exp`` in this interpreter, then reports on stdout whether torch was imported. ``HIDE`` (a
# comma-separated list of module prefixes) makes importlib.util.find_spec report those modules absent,
# as on an install without the extra that provides them.
_PROBE = """
import importlib.util, os, sys
hidden = tuple(p for p in os.environ.get("HIDE", "").split(",") if p)
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if hidden and name.startswith(hidden) else real(name, *a)
sys.argv = ["csd-exp", *sys.argv[1:]]
from csd_exp.cli import entry
try:
    entry()
finally:
    print(f"TORCH_IMPORTED={'torch' in sys.modules}", flush=True)
"""


def _probe(args: list[str], cwd: Path, hide: str = "") -> tuple[int, list[str], bool]:
    """(exit status, the lines the user sees, whether torch was imported) of ``csd-exp *args``."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(HIDE=hide, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    torch_lines = [line for line in lines if line.startswith("TORCH_IMPORTED=")]
    assert torch_lines, result.stderr[-2000:]
    return result.returncode, [line for line in lines if line not in torch_lines], torch_lines[0].endswith("True")


def _write_mask(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    Image.new("L", (size[1], size[0]), 255).save(path)
    return path


# ------------------------------------------------------------------------------------------ typos
def test_key_typos_name_the_closest_keys_in_one_line_each(tmp_path):
    code, lines, _ = _probe([*SMALL, "task.windw_size=8", "trainr.max_steps=3"], tmp_path)
    assert code == 1
    assert lines == [
        "csd-exp: task.windw_size is not a key of this config; did you mean task.window_size?",
        "csd-exp: trainr.max_steps is not a key of this config; did you mean trainer.max_steps?",
    ]


def test_a_key_with_no_close_match_offers_to_add_it(tmp_path):
    code, lines, _ = _probe([*SMALL, "task.zzqx=3"], tmp_path)
    assert code == 1 and len(lines) == 1
    assert "did you mean" not in lines[0] and "write +task.zzqx=3" in lines[0]
    assert "window_size" in lines[0], "the message should list the keys task has"


def test_a_mistyped_option_names_the_nearest_option(tmp_path):
    code, lines, _ = _probe(["task=panoram"], tmp_path)
    assert code == 1 and len(lines) == 1 and "did you mean task=panorama?" in lines[0]


# ------------------------------------------------------------------------- compose-time refusals
def _refusals(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    (tmp_path / "empty_scene").mkdir()
    return {
        "missing image": (["data.path=" + str(tmp_path / "nope.jpg")], "no such image file"),
        "unreadable image": ([f"data.path={not_an_image}"], "cannot read the image"),
        "box outside the image": (["task.regions=[{box: [0, 0.6, 1, 0.5]}]"], "outside the 200x640 px"),
        "missing mask": ([f"task.regions=[{{mask: {tmp_path / 'no_mask.png'}}}]"], "no such mask image"),
        "mask of another size": (
            [f"task.regions=[{{mask: {_write_mask(tmp_path / 'small.png', (100, 320))}}}]"],
            "is 100x320 px but the image is 200x640 px",
        ),
        "unknown optimized_metric": (["optimized_metric=fidelity/psnrr"], "did you mean fidelity/psnr?"),
        "missing checkpoint": ([f"ckpt_path={tmp_path / 'last.ckpt'}"], "no such checkpoint"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing image",
        "unreadable image",
        "box outside the image",
        "missing mask",
        "mask of another size",
        "unknown optimized_metric",
        "missing checkpoint",
    ],
)
def test_a_bad_input_is_refused_at_compose_time_without_torch(case, tmp_path):
    overrides, needle = _refusals(tmp_path)[case]
    run_dir = tmp_path / "run"
    code, lines, torch_imported = _probe([*REGIONS, *overrides, f"paths.output_dir={run_dir}"], tmp_path)
    assert code == 1 and 1 <= len(lines) <= 5, lines
    assert needle in lines[0] and lines[0].startswith("csd-exp: ")
    assert not torch_imported, "the compose-time checks must not import torch"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and needle in summary["error"] and summary["steps"] == 0


STRIPES_TASK = """
import torch  # never imported by the check: it reads this file


class StripesTask:
    def __init__(self, prior, guidance, optimizer, *, inputs, data, regions=None, **settings):
        self.regions = regions
"""
STRIPES_YAML = """
# @package _global_
task:
  _target_: stripes_task.StripesTask
  data: ${data}
  optimizer: {_target_: torch.optim.SGD, _partial_: true, lr: 1.0}
data:
  _target_: csd_exp.data.ImageSource
"""


def test_the_regions_of_a_task_written_outside_the_package_are_checked_before_torch(tmp_path, monkeypatch):
    """Any task whose constructor takes ``regions`` has them checked against the image, as PanoramaRegionTask."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "stripes_task.py").write_text(STRIPES_TASK)
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "stripes.yaml").write_text(STRIPES_YAML)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "code"))
    args = [f"--config-dir={tmp_path / 'conf'}", *SMALL, "task=stripes", "+task.regions=[{box: [0, 0.6, 1, 0.5]}]"]
    code, lines, torch_imported = _probe([*args, f"paths.output_dir={tmp_path / 'run'}"], tmp_path)
    assert code == 1 and lines[0].startswith("csd-exp: task.regions[0].box [0.0, 0.6, 1.0, 0.5]"), lines
    assert "outside the 200x640 px" in lines[0] and not torch_imported


def test_clip_scene_and_fid_inputs_are_checked_from_the_config(tmp_path, monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "readme.txt").write_text("no frames here")
    scene = tmp_path / "scene"
    scene.mkdir()
    cases = [
        ({"data": {"_target_": CLIP, "path": str(frames)}}, "holds no .png"),
        ({"data": {"_target_": CLIP, "path": "sample:spin"}}, "sample:pan or sample:zoom"),
        ({"data": {"_target_": CLIP, "path": str(tmp_path / "a.avi")}}, "no such video"),
        ({"data": {"_target_": SCENE, "path": str(scene)}}, "no cameras"),
        ({"data": {"_target_": IMAGE, "path": "sample:moon"}}, "sample:rocket or"),
        ({"task": {"fid_reference_dir": str(tmp_path / "refs")}}, "no such folder"),
    ]
    for cfg, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            compose_inputs.check_inputs(cfg)
    (frames / "f1.png").write_bytes(b"")
    (scene / "transforms.json").write_text("{}")
    compose_inputs.check_inputs({"data": {"_target_": CLIP, "path": str(frames)}})
    compose_inputs.check_inputs({"data": {"_target_": SCENE, "path": str(scene)}})
    # fid/rgb with the folder given but torch-fidelity absent: the extra that installs it.
    monkeypatch.setattr(compose_inputs, "missing", lambda module: module == compose_inputs.FID_MODULE)
    with pytest.raises(ConfigError, match=r"pip install 'csd-exp\[fid\]'"):
        compose_inputs.check_inputs({"task": {"fid_reference_dir": str(tmp_path)}})


def test_optimized_metric_accepts_every_name_a_run_writes():
    from csd_exp.metrics.keys import ALL_METRIC_KEYS
    from csd_exp.tasks.generation3d import generation as generation3d

    task_keys = [generation3d.VIEW_AGREEMENT, generation3d.REFERENCE_PSNR, generation3d.FID_RGB]
    task_keys.append(generation3d.CLIP_DEPTH_TEXT_SIMILARITY)
    for name in [*ALL_METRIC_KEYS, *task_keys, "consistency/mode_fraction/teal", "region/1/consistency/mode_agreement"]:
        compose_inputs.check_optimized_metric(name)
    with pytest.raises(ConfigError, match="did you mean fidelity/psnr"):
        compose_inputs.check_optimized_metric("psnr")


def test_the_compose_time_names_agree_with_the_readers():
    import importlib

    images, sample_clip, samples, video = (
        importlib.import_module(f"csd_exp.data.{name}") for name in ("images", "sample_clip", "samples", "video")
    )

    assert compose_inputs.IMAGE_SUFFIXES == images.IMAGE_SUFFIXES
    assert compose_inputs.VIDEO_SUFFIXES == video.READ_VIDEO_EXTENSIONS
    assert compose_inputs.FRAME_SUFFIXES == video.FRAME_EXTENSIONS
    assert compose_inputs.SAMPLE_CLIPS == tuple(sample_clip.SAMPLE_CLIPS)
    assert tuple(compose_inputs.SAMPLE_IMAGE_SIZES) == samples.SAMPLE_NAMES
    for name, size in compose_inputs.SAMPLE_IMAGE_SIZES.items():
        assert tuple(samples.sample_image(name).shape[1:]) == size


def test_a_sweep_with_a_missing_input_starts_no_job(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMALL, "seed=0,1", f"data.path={tmp_path / 'nope.png'}", f"hydra.sweep.dir={sweep}"]
    code, lines, torch_imported = _probe(args, tmp_path)
    assert code == 1 and len(lines) == 1 and "sweep not started, job 0" in lines[0] and "no such image" in lines[0]
    assert not torch_imported and not list(sweep.rglob("summary.json"))


def test_an_optuna_sweep_with_an_unknown_metric_runs_no_trial(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=guidance_scale_optuna", *SMALL, "optimized_metric=clip/nope"]
    code, lines, torch_imported = _probe([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("csd-exp: sweep not started: optimized_metric=clip/nope is not a metric")
    assert not torch_imported and not list(sweep.rglob("summary.json"))


# ---------------------------------------------------------------------------------------- extras
@pytest.mark.parametrize(
    "overrides, hidden, extra",
    [
        (["hparams_search=guidance_scale_optuna"], "hydra_plugins.hydra_optuna_sweeper", "sweeps"),
        (["hydra/launcher=joblib"], "hydra_plugins.hydra_joblib_launcher", "sweeps"),
        (["hydra/launcher=slurm_gpu"], "hydra_plugins.hydra_submitit_launcher", "cluster"),
    ],
)
def test_a_missing_extra_is_named_with_its_pip_command(overrides, hidden, extra, tmp_path):
    code, lines, torch_imported = _probe(["-m", *SMALL, *overrides, "seed=0,1"], tmp_path, hide=hidden)
    assert code == 1 and len(lines) == 1 and not torch_imported
    assert (
        lines[0].startswith(f"csd-exp: {overrides[0]} needs hydra-") and f"pip install 'csd-exp[{extra}]'" in lines[0]
    )


def test_installed_extras_are_not_refused():
    conf = [REPO_ROOT / "conf"]
    assert missing_extra(["hparams_search=guidance_scale_optuna", "hydra/launcher=local_parallel"], conf) is None


def test_hydras_own_missing_plugin_error_names_the_extra(monkeypatch):
    from hydra.errors import ConfigCompositionException

    from csd_exp.schema import composition

    monkeypatch.setattr(composition, "missing", lambda module: module == "hydra_plugins.hydra_joblib_launcher")
    error = ConfigCompositionException("In 'hydra/launcher/local_parallel': Could not find 'hydra/launcher/joblib'")
    message = explain_composition_error(error, [], compose=lambda overrides: {})
    assert (
        message
        == "hydra/launcher/joblib needs hydra-joblib-launcher, of the sweeps extra: pip install 'csd-exp[sweeps]'"
    )


# ------------------------------------------------------------------------------------------ help
def test_help_names_the_companion_commands_and_extras_and_hides_internal_groups(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for needle in (
        "csd-exp eval",
        "csd-exp-report",
        "csd-exp-paper",
        "csd-exp[EXTRA]",
        "hydra/launcher: local_parallel",
    ):
        assert needle in text
    for extra in ("sweeps", "cluster", "fid"):
        assert f"\n  {extra} " in text
    listed = {line.split(":")[0].strip() for line in text.splitlines() if line.startswith("  ") and ": " in line}
    groups = {p.name for p in (REPO_ROOT / "conf").iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    assert groups - listed == {"debug_sizes", "paper", "hydra"}
    assert "debug_sizes" not in text and "davis_table1" not in text
