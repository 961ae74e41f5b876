"""lightning-hydra-template conveniences: the debug presets, the machine-local config group, the config
record of a run folder, and the top-level ``tags`` list."""

from __future__ import annotations

import csv
import json

import pytest
from framework_support import REPO_ROOT, compose_config, run_cli

SMALL = ["experiment=panorama_exact_cpu", "data.short_side=32", "task.window_size=32", "task.window_stride=8"]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_overfit_repeats_step_zeros_draw_so_the_loss_falls(tmp_path):
    result = run_cli([*SMALL, "debug=overfit", "trainer.max_steps=6", f"paths.output_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("loss")]
    losses = [float(row["loss"]) for row in rows]
    assert len(losses) == 6
    assert len({row["train/t"] for row in rows}) == 1  # one timestep, drawn once
    # The same target every step: gradient descent on a fixed residual shrinks the surrogate each step.
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses


def test_overfit_refuses_a_sampling_baseline(tmp_path):
    args = ["task=panorama_sampling", "data.short_side=32", "task.window_size=32", "task.window_stride=8"]
    result = run_cli([*args, "debug=overfit", f"paths.output_dir={tmp_path}"])
    assert result.returncode != 0
    assert "sampling baseline" in result.stderr and "drop debug=overfit" in result.stderr
    assert _summary(tmp_path)["status"] == "failed"


def test_fdr_runs_one_step_and_a_local_group_applies_machine_settings(tmp_path):
    local = tmp_path / "conf" / "local"
    local.mkdir(parents=True)
    (local / "default.yaml").write_text("# @package _global_\ntags: [cluster_a]\nseed: 3\n")
    out = tmp_path / "run"
    result = run_cli([f"--config-dir={tmp_path / 'conf'}", *SMALL, "debug=fdr", f"paths.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(out)
    assert (summary["status"], summary["steps"], summary["seed"], summary["tags"]) == ("completed", 1, 3, ["cluster_a"])
    assert "fidelity/psnr" in summary["metrics"]
    # The run folder keeps the values the run used, as YAML and as the printed tree.
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(OmegaConf.load(out / "resolved_config.yaml")) == summary["config"]
    tree = (out / "config_tree.log").read_text()
    assert "task" in tree and "guidance" in tree and "window_size: 32" in tree


def test_the_debug_presets_compose_and_set_what_they_promise(tmp_path):
    fdr = compose_config(["debug=fdr"], tmp_path)
    assert fdr.trainer.fast_dev_run is True and not fdr.logger
    limit = compose_config(["debug=limit"], tmp_path)
    assert (limit.trainer.max_steps, limit.trainer.val_check_interval) == (10, 5) and "wandb" in limit.logger
    overfit = compose_config(["debug=overfit"], tmp_path)
    assert overfit.trainer.overfit_batches == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [("tags=oops", "tags"), ("extras.print_config=3", "extras.print_config"), ("+extras.colour=true", "extras.colour")],
)
def test_bad_tags_and_extras_are_refused_by_name(tmp_path, override, message):
    from csd_exp.schema import ConfigError, validate_composed

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_composed(compose_config([override], tmp_path))


def test_the_local_group_is_ignored_by_git():
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "/conf/local/" in ignored
