"""The schema package on its own: light to import, optional for a new ``_target_``, and the guidance rules on
plain configs (with and without Hydra's record of the group choices)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from framework_support import REPO_ROOT, compose_config

from csd_exp.schema import TARGET_SCHEMAS, ConfigError, validate_config

MAX_LINES = 450  # no module of csd_exp is longer


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The default composed config (panorama, csd_edit) as plain containers, as validate_config takes it."""
    from omegaconf import OmegaConf

    cfg = compose_config([], tmp_path_factory.mktemp("run"))
    return OmegaConf.to_container(cfg, resolve=True)


def test_importing_the_schema_imports_no_torch_and_no_omegaconf():
    heavy = "{'torch', 'omegaconf', 'hydra'}"
    code = f"import sys, csd_exp.schema; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"


def test_every_module_stays_under_the_line_limit():
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in (REPO_ROOT / "csd_exp").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_a_task_without_a_schema_entry_is_left_to_its_constructor(plain):
    cfg = copy.deepcopy(plain)
    cfg["task"] = {"_target_": "my_lab.tasks.SuperResolutionTask", "scale": 4, "prompt": "x"}
    cfg["data"] = {"path": "img.png", "tile": 128}  # keys no data schema lists
    assert cfg["task"]["_target_"] not in TARGET_SCHEMAS
    validate_config(cfg)


def test_a_guidance_or_kernel_without_a_schema_entry_is_left_to_its_constructor(plain):
    cfg = copy.deepcopy(plain)
    cfg["kernel"] = {"_target_": "my_lab.kernels.LaplaceKernel", "scale": 2.0}
    cfg["guidance"]["kernel"] = cfg["kernel"]
    validate_config(cfg, {"guidance": "csd_edit", "kernel": "laplace"})
    cfg["guidance"] = {"_target_": "my_lab.VariationalGuidance", "lora_rank": 4}
    validate_config(cfg)


def test_sds_with_an_rbf_kernel_is_named_csd_only_when_the_preset_is_known(plain):
    cfg = copy.deepcopy(plain)
    cfg["guidance"]["baseline"] = "random_noise"  # with the default RBF kernel: what guidance=csd composes to
    validate_config(cfg, {})
    validate_config(cfg, {"guidance": "csd", "kernel": "rbf"})
    # An overriding kernel relabels the run (csd_exp/methods.py: csd or csd_edit_random_noise), never refuses it.
    validate_config(cfg, {"guidance": "sds", "kernel": "rbf"})


@pytest.mark.parametrize(
    "baseline, kernel, allowed",
    [
        ("source_branch", {"normalize_by_count": True}, True),
        ("source_branch", {"normalize_by_count": False}, False),
        ("random_noise", {"normalize_by_count": True}, False),
        ("source_branch", None, False),  # the RBF kernel of the default config
    ],
)
def test_official_scaling_only_on_the_no_svgd_path(plain, baseline, kernel, allowed):
    cfg = copy.deepcopy(plain)
    cfg["guidance"].update(baseline=baseline, official_scaling=True)
    if kernel is not None:
        cfg["kernel"] = cfg["guidance"]["kernel"] = {"_target_": "csd_exp.distill.IdentityKernel", **kernel}
    if allowed:
        validate_config(cfg)
    else:
        with pytest.raises(ConfigError, match=r"guidance\.official_scaling=true .*kernel=identity_mean"):
            validate_config(cfg)


def test_messages_name_the_guidance_by_its_axes_without_hydra(plain):
    cfg = copy.deepcopy(plain)
    cfg["guidance"]["kernel"] = {}
    with pytest.raises(ConfigError, match="guidance=source_branch baseline with no kernel .*add kernel=rbf"):
        validate_config(cfg)


def test_metrics_is_an_evaluator_node_or_empty(plain):
    """``metrics`` is built by ``_target_`` (checked by its schema); an empty node is allowed and builds none."""
    cfg = copy.deepcopy(plain)
    assert cfg["metrics"]["_target_"] == "csd_exp.metrics.EditEvaluator"
    assert cfg["metrics"]["clip"]["batch_size"] == 8  # the YAML's value is the default
    cfg["metrics"] = {}
    validate_config(cfg)
    cfg["metrics"] = {"lpips_net": "alex"}
    with pytest.raises(ConfigError, match="metrics sets lpips_net but names no _target_; use metrics=default"):
        validate_config(cfg)
    cfg["metrics"] = copy.deepcopy(plain["metrics"])
    cfg["metrics"]["clip"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match=r"metrics\.clip\.precision"):
        validate_config(cfg)
