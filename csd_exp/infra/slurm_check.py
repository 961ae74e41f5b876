"""Before a SLURM sweep sends any job: ask SLURM whether it can place one (``sbatch --test-only``), and if not, stop
with its refusal in one line that names the launcher keys behind it.

A Hydra callback (``conf/hydra/default.yaml``: ``check_slurm_resources``); it acts only when the launcher is
submitit's SLURM launcher (``hydra/launcher=submitit_slurm`` or one of our ``slurm_*`` presets).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Launcher keys that decide whether SLURM can place a job, and the sbatch option each becomes.
RESOURCE_OPTIONS = {
    "partition": "--partition",
    "nodes": "--nodes",
    "tasks_per_node": "--ntasks-per-node",
    "gpus_per_node": "--gpus-per-node",
    "gpus_per_task": "--gpus-per-task",
    "gres": "--gres",
    "cpus_per_task": "--cpus-per-task",
    "mem_gb": "--mem",
    "timeout_min": "--time",
    "constraint": "--constraint",
    "qos": "--qos",
    "account": "--account",
}
CHECK_TIMEOUT_S = 30


def sbatch_test_args(launcher: dict[str, Any]) -> list[str]:
    """``sbatch --test-only`` options for the launcher's resource keys (unset keys are left to SLURM)."""
    args = []
    for key, option in RESOURCE_OPTIONS.items():
        value = launcher.get(key)
        if value is None:
            continue
        if key == "mem_gb":
            value = f"{value}G"
        args.append(f"{option}={value}")
    return args


def refusal_message(sbatch_output: str, launcher: dict[str, Any], preset: str) -> str:
    """One line: sbatch's reason and the keys the preset asked for."""
    errors = [line.split("error:", 1)[1].strip() for line in sbatch_output.splitlines() if "error:" in line]
    reason = errors[-1] if errors else sbatch_output.strip().splitlines()[-1] if sbatch_output.strip() else "refused"
    asked = ", ".join(f"{key}={launcher[key]}" for key in RESOURCE_OPTIONS if launcher.get(key) is not None)
    return (
        f"SLURM cannot run the jobs of hydra/launcher={preset}: {reason.rstrip('.')}. The launcher asks for "
        f"{asked}; change them with hydra.launcher.<key>=... (sinfo -o '%P %c %m %G %l' shows each partition)"
    )


def is_slurm_launcher(launcher: DictConfig) -> bool:
    return str(launcher.get("_target_", "")).endswith("submitit_launcher.SlurmLauncher")


class CheckSlurmResources(Callback):
    """Hydra callback: ``sbatch --test-only`` with the launcher's resources before the first job is sent."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        if not is_slurm_launcher(launcher) or shutil.which("sbatch") is None:
            return  # no SLURM here: submitit's own error says so when it submits
        values = OmegaConf.to_container(launcher, resolve=True)
        command = ["sbatch", "--test-only", *sbatch_test_args(values), "--wrap=true"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return  # a slow controller is not a refusal: let submitit submit and report
        if result.returncode != 0:
            preset = config.hydra.runtime.choices.get("hydra/launcher", "?")
            raise SystemExit(f"csd-exp: {refusal_message(result.stderr + result.stdout, values, preset)}")
