"""Compose and run the real Hydra config from tests (imported by the framework tests)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"

# Overrides that make any configuration CPU-sized: a few steps, no W&B, tiny windows when needed.
FAST = [
    "trainer=cpu",
    "logger=csv",
    "trainer.max_steps=2",
    "trainer.val_check_interval=1",
    "callbacks.checkpoint.every_n_train_steps=1",
    "~callbacks.progress",
]


def compose_config(overrides: list[str], output_dir: Path):
    """Compose ``conf/config.yaml`` as the CLI would, with the run folder set to ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import csd_exp.conf  # noqa: F401  (registers the config's resolvers, as the CLI's pkg://csd_exp.conf does)

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(REPO_ROOT)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(args: list[str], cwd: Path = REPO_ROOT, env: dict | None = None, timeout: int = 900):
    """``python -m csd_exp.cli *args`` in a subprocess, outside any DDP environment of the test run;
    ``env`` adds or replaces variables."""
    import os
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "csd_exp.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_COMPOSE_CHECK = """
import json, sys
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from csd_exp.schema import ConfigError
from csd_exp.schema.rules import validate_composed

found = {}
for overrides in json.loads(sys.argv[1]):
    with initialize_config_module(config_module="csd_exp.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
    try:
        validate_composed(cfg)
        found[overrides[-1].lstrip("+")] = None
    except ConfigError as error:
        found[overrides[-1].lstrip("+")] = str(error)
print(json.dumps({"messages": found, "torch": "torch" in sys.modules}))
"""


def compose_check_verdicts(runs: list[list[str]]) -> tuple[dict[str, str | None], bool]:
    """The compose-time check of each run's overrides, in a fresh process: {last override (without ``+``): the
    refusal, or None when accepted}, and whether torch was imported by then."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _COMPOSE_CHECK, json.dumps(runs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["messages"], report["torch"]
