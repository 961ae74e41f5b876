"""No silent keys, early errors: every composed config key reaches a constructor or is refused, and a
bad value fails at compose time, before torch is imported, in a few lines."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from framework_support import CONFIG_DIR, compose_config
from hydra.utils import get_object

from csd_exp.schema import ConfigError, read_signature, validate_composed

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Every option of every group, each with the task it belongs to where it needs one.
GROUP_OPTIONS = [
    *[f"model={p.stem}" + (" method=pix2video" * ("depth" in p.stem)) for p in (CONFIG_DIR / "model").glob("*.yaml")],
    *[f"guidance={p.stem}" for p in (CONFIG_DIR / "guidance").glob("*.yaml")],
    *[f"method={p.stem}" for p in (CONFIG_DIR / "method").glob("*.yaml")],
    *[f"task={p.stem}" for p in (CONFIG_DIR / "task").glob("*.yaml")],
    *[f"task={p.stem.removeprefix('smoke_')} debug=smoke" for p in (CONFIG_DIR / "debug_sizes").glob("*.yaml")],
    "debug=fast",
    "kernel=identity",
    "kernel=identity_mean",
    "kernel=rbf",
    "schedule=paper",
    "metrics=none",
    "data.resize_policy=official",
    "data.resize_policy=short_side",
]


def _target_nodes(node, prefix=""):
    if isinstance(node, dict):
        if "_target_" in node:
            yield prefix, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{prefix}.{key}" if prefix else key)


def _composed(overrides, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_config(overrides, tmp_path)
    return cfg, OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("overrides", [f"experiment={e}" for e in EXPERIMENTS] + GROUP_OPTIONS)
def test_every_key_reaches_a_constructor_parameter(overrides, tmp_path):
    cfg, plain = _composed(overrides.split(), tmp_path)
    validate_composed(cfg)
    for path, node in _target_nodes(
        {k: plain[k] for k in ("model", "guidance", "kernel", "schedule", "task", "data", "metrics") if k in plain}
    ):
        target = get_object(node["_target_"])
        parameters = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):  # forwards **kwargs
            forwarded_to = (
                target.__mro__[2]
                if isinstance(target, type)
                # a baseline's task class
                else get_object(
                    "csd_exp.priors."
                    + ("InstructPix2PixPrior" if "pix2pix" in node["_target_"] else "StableDiffusionPrior")
                )
            )  # a tiny builder
            parameters = {**parameters, **inspect.signature(forwarded_to).parameters}
        unknown = set(node) - {"_target_", "_partial_"} - set(parameters)
        assert not unknown, f"{path}: keys no constructor takes: {unknown}"
    # Generation tasks have no source; every other task's data block names its source class.
    assert "_target_" in plain.get("data", {"_target_": None}), "every task's data block names its source class"
    if "_target_" in plain["guidance"]:  # every distillation preset takes the kernel group, so kernel= always acts
        assert plain["guidance"]["kernel"] == plain["kernel"] and plain["kernel"]
    else:
        assert not plain["kernel"], "a kernel chosen for a task that samples would do nothing"


# Every ``_target_`` of the run's groups (Lightning's callbacks and loggers and Hydra's own are not checked).
TARGETS = sorted(
    {
        target
        for path in CONFIG_DIR.rglob("*.yaml")
        if path.relative_to(CONFIG_DIR).parts[0] not in ("hydra", "callbacks", "logger", "trainer")
        for target in re.findall(r"_target_:\s*([\w.]+)", path.read_text())
    }
)
# The markers of csd_exp.schema.fields and the literals: an annotation that names one must be read as a type.
MARKERS = re.compile(
    r"\b(PositiveInt|PositiveFloat|NonNegativeInt|NonNegativeFloat|UnitFraction|Probability|OpenFraction|Seed"
    r"|Literal|Field|TorchDtypeName|DecoderName|BaselineName|BandwidthRule|AnnealingRule|SamplingMethod"
    r"|WindowSampler|EditInit|LpipsNet)\b"
)


@pytest.mark.parametrize("target", TARGETS)
def test_the_source_reader_finds_the_constructor_and_reads_its_markers(target):
    """What the compose-time check reads from source (never importing it) is the constructor Hydra calls: the
    same parameters (those passed on through ``**kwargs`` too), and every constrained annotation as a type."""
    signature = read_signature(target)
    assert signature is not None, f"{target}: its source was not found"
    parameters = inspect.signature(get_object(target)).parameters
    named = {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert named <= set(signature.parameters)
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        assert set(signature.parameters) == named and not signature.open
    for name in named:
        annotation = str(parameters[name].annotation)
        if MARKERS.search(annotation):
            assert signature.parameters[name] is not Any, f"{target}({name}: {annotation}) was not read"


GUIDANCE_PRESETS = sorted(p.stem for p in (CONFIG_DIR / "guidance").glob("*.yaml"))
#: The label follows the maths (csd_exp/methods.py): guidance=csd on the default exact prior (an instruction
#: prior) is the random-noise baseline with a coupling kernel there, csd_edit_random_noise.
LABEL_ON_EXACT = {"csd": "csd_edit_random_noise"}


@pytest.mark.parametrize("preset", GUIDANCE_PRESETS)
def test_the_method_label_is_the_guidance_choice(preset, tmp_path):
    """Run name, W&B tag and the summary table all name a run by its guidance preset, as they did by method."""
    from csd_exp.report.runs import recorded_labels

    cfg, plain = _composed([f"guidance={preset}"], tmp_path)
    from csd_exp.infra.wandb_identity import wandb_identity

    label = LABEL_ON_EXACT.get(preset, preset)
    assert plain["run_name"] == f"panorama_{label}" and wandb_identity(plain["method"], 0)["tags"] == [
        "panorama",
        label,
    ]
    # The report reads the recorded label (summary.json, else the config's method), never the run name.
    assert plain["method"] == label and recorded_labels({}, plain, tmp_path)[1] == label


@pytest.mark.parametrize(
    "overrides, name, tag",
    [
        (["task=video_sampling"], "video_sampling", "per_frame"),
        (["task=panorama_sampling", "task.method=per_window"], "panorama_sampling_per_window", "per_window"),
        (["method=in2n"], "scene3d_in2n", "in2n"),
    ],
)
def test_sampling_baselines_keep_their_names(overrides, name, tag, tmp_path):
    _, plain = _composed(overrides, tmp_path)
    from csd_exp.infra.wandb_identity import wandb_identity

    assert plain["run_name"] == name and wandb_identity(plain["method"], 0)["tags"][1] == tag


@pytest.mark.parametrize(
    "group, option",
    [
        ("model", "exact"),
        ("guidance", "csd_edit"),
        ("kernel", "rbf"),
        ("schedule", "default"),
        ("task", "panorama"),
        ("task", "video"),
        ("task", "scene3d"),
        ("metrics", "default"),
    ],
)
def test_python_defaults_equal_the_default_yaml(group, option, tmp_path):
    _, plain = _composed([f"{group}={option}"] if group == "task" else [], tmp_path)
    node = plain["task" if group == "task" else group]
    parameters = inspect.signature(get_object(node["_target_"])).parameters
    for key, value in node.items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        if default is not inspect.Parameter.empty and not isinstance(value, dict):
            assert default == value, f"{group}/{option}: {key} is {value!r} in YAML but {default!r} in Python"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["task.window_sampler=balanced"], "task.window_sampler"),
        (["kernel.bandwidth=medain"], "kernel.bandwidth"),
        (["guidance.guidance_scale=nan"], "guidance.guidance_scale"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["trainer.max_steps=-1"], "trainer.max_steps"),
        (["seed=-5"], "seed"),
        (["task.window_stride=0"], "task.window_stride"),
        (["guidance=csd", "kernel=none"], "kernel=rbf"),
        (["guidance.baseline=source"], "guidance.baseline"),
        (["guidance=csd_edit", "guidance.official_scaling=true"], "guidance.official_scaling"),
        (["guidance=csd_edit_no_svgd", "kernel=identity", "guidance.official_scaling=true"], "identity_mean"),
        (["task=panorama_sampling", "guidance=csd_edit"], "guidance"),
        (["task=scene3d", "task.editor.init=photo"], "task.editor.init"),
        (["model=ip2p", "model.torch_dtype=half16"], "model.torch_dtype"),
        (["data.resize_policy=fit"], "data.resize_policy"),
        (["metrics.lpips_net=vggg"], "metrics.lpips_net"),
        (["metrics.clip.batch_size=0"], "metrics.clip.batch_size"),
        (["metrics.clip.precision=fp8"], "metrics.clip.precision"),
        (["+metrics.clip.pretrained_path=x"], "metrics.clip.pretrained_path"),
    ],
)
def test_bad_values_fail_at_compose_time_naming_the_key(overrides, key, tmp_path):
    cfg, _ = _composed(overrides, tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_composed(cfg)


def _cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "csd_exp.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["task.window_sise=3"], "window_sise"),
        (["guidance=csd_edt"], "csd_edt"),
        (["task.window_sampler=balanced"], "coverage_balanced"),
    ],
)
def test_a_typo_or_a_bad_value_prints_a_few_lines_naming_the_fix(args, needle, tmp_path):
    result = _cli(args, tmp_path)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(output) <= 15 and needle in "\n".join(output)
    assert "Traceback" not in "\n".join(output)


def test_a_sweep_with_one_bad_value_starts_no_job(tmp_path):
    result = _cli(["-m", "seed=0,1", "guidance.guidance_scale=1.5,abc", "logger=csv", "trainer.max_steps=2"], tmp_path)
    assert result.returncode != 0 and "sweep not started" in result.stderr and "guidance_scale='abc'" in result.stderr
    assert not list(Path(tmp_path).rglob("summary.json")), "no job may have run"


def test_a_sweep_checks_each_job_under_its_own_presets(tmp_path):
    """The preset rules read each job's group choices, not the multirun's (whose guidance is the default)."""
    # (guidance=sds kernel=rbf, once refused here, is now relabelled: csd_exp/methods.py, tests/test_framework.py)
    overrides = ["guidance=csd_edit_no_svgd,csd_edit", "guidance.official_scaling=true", "trainer.max_steps=2"]
    result = _cli(["-m", *overrides, "logger=csv"], tmp_path)
    assert result.returncode != 0 and "sweep not started, job 1" in result.stderr, result.stderr[-2000:]
    assert "guidance=csd_edit" in result.stderr and "official_scaling" in result.stderr
    assert not list(Path(tmp_path).rglob("summary.json")), "no job may have run"


def test_a_refused_run_still_writes_its_summary(tmp_path):
    result = _cli(["seed=-5", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "seed=-5" in summary["error"]
