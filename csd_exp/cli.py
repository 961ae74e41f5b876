"""The ``csd-exp`` entry point: compose the Hydra config, check it, instantiate, fit, write ``summary.json``.

Everything is decided by the config (``conf/``, shipped in the package as ``csd_exp.conf``) and the
classes it names; this file only wires them together, in the manner of lightning-hydra-template's
``train.py``. Values are checked (:mod:`csd_exp.schema`) before torch or a model is imported.

Own configs: ``csd-exp --config-dir ~/my_conf experiment=mine`` (Hydra's option) or
``CSD_EXP_CONFIG_DIR=~/my_conf csd-exp ...``: that folder is searched first, so it can add experiments,
models or tasks, or replace one of ours by giving a file the same name.
"""

from __future__ import annotations

import os
import signal
import sys

import hydra
from omegaconf import DictConfig

CONFIG_PATH = "pkg://csd_exp.conf"
CONFIG_DIR_VARIABLE = "CSD_EXP_CONFIG_DIR"


def _reject(cfg: DictConfig, message: str) -> None:
    """Record the refusal in the run folder's ``summary.json`` and stop with a short message."""
    from csd_exp.infra.summary import write_failed_summary

    write_failed_summary(cfg, message)
    raise SystemExit(f"csd-exp: {message}")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from csd_exp.infra.interrupts import install
    from csd_exp.schema import ConfigError, validate_composed

    install()  # also in a launcher's worker process: Ctrl-C / SIGTERM end the job with a checkpoint

    try:
        validate_composed(cfg)
    except ConfigError as error:
        _reject(cfg, str(error))
    from csd_exp.run import run

    summary = run(cfg)
    return _optimized_value(cfg, summary)


def _optimized_value(cfg: DictConfig, summary: dict) -> float | None:
    """What the job returns to a sweeper that optimises (``optimized_metric``: a name in ``summary.json``)."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    metrics = summary.get("metrics", {})
    if name not in metrics:
        raise SystemExit(
            f"csd-exp: optimized_metric={name!r} is not among this run's metrics "
            f"({', '.join(sorted(metrics)) or 'none: the run did not complete'}); choose one of them"
        )
    return float(metrics[name])


def _with_config_dir(argv: list[str]) -> list[str]:
    folder = os.environ.get(CONFIG_DIR_VARIABLE)
    if not folder or any(arg.startswith(("--config-dir", "-cd")) for arg in argv):
        return argv
    if not os.path.isdir(folder):
        raise SystemExit(f"csd-exp: {CONFIG_DIR_VARIABLE}={folder} is not a folder")
    return [argv[0], f"--config-dir={os.path.abspath(folder)}", *argv[1:]]


def entry() -> None:
    """``csd-exp [overrides]`` runs a job; ``csd-exp eval ...`` scores existing outputs (= csd-exp-eval)."""
    if len(sys.argv) > 1 and sys.argv[1] == "eval":
        from csd_exp.eval import main as evaluate

        raise SystemExit(evaluate(sys.argv[2:]))
    sys.argv = _with_config_dir(sys.argv)
    from csd_exp.infra.interrupts import Interrupted, exit_status, install
    from csd_exp.infra.sweep_end import report_interrupted_sweep

    install()
    try:
        main()
    except KeyboardInterrupt:  # stopped outside a run (composing, between jobs): still a failure, status 130
        report_interrupted_sweep(exit_status(signal.SIGINT))
        raise SystemExit(exit_status(signal.SIGINT)) from None
    except Interrupted as stop:
        report_interrupted_sweep(stop.code)
        raise


if __name__ == "__main__":
    entry()
