"""The ``csd-exp`` entry point: compose the Hydra config, check it, instantiate, fit, write ``summary.json``.

Everything is decided by the config (``conf/``, shipped in the package as ``csd_exp.conf``) and the
classes it names; this file only wires them together, in the manner of lightning-hydra-template's
``train.py``. Values are checked (:mod:`csd_exp.schema`) before torch or a model is imported.

Own configs: ``csd-exp --config-dir ~/my_conf experiment=mine`` (Hydra's option) or
``CSD_EXP_CONFIG_DIR=~/my_conf csd-exp ...``: that folder is searched first, so it can add experiments,
models or tasks, or replace one of ours by giving a file the same name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csd_exp.infra.run_folder import register_launch_id_resolver

# The default run and sweep folder names (conf/hydra/default.yaml) use it; registered on import, so that a
# process that only unpickles ``main`` (a submitit job) resolves them too.
register_launch_id_resolver()

CONFIG_PATH = "pkg://csd_exp.conf"
CONFIG_DIR_VARIABLE = "CSD_EXP_CONFIG_DIR"
#: Groups that ``--help`` leaves out: chosen by other groups or by csd-exp-paper, never by hand.
INTERNAL_GROUPS = ("debug_sizes", "paper", "hydra", "local")


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


def _config_dirs(argv: list[str]) -> list[Path]:
    """Where Hydra reads our configs: ``--config-dir`` (searched first), then the packaged ``csd_exp.conf``."""
    import csd_exp.conf

    dirs = [Path(arg.split("=", 1)[1]) for arg in argv if arg.startswith("--config-dir=")]
    dirs += [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg in ("--config-dir", "-cd")]
    return [*dirs, Path(csd_exp.conf.__file__).parent]


def help_groups() -> str:
    """The groups and options of ``csd-exp --help`` (conf/hydra/help/csd_exp.yaml), internal groups left out."""
    options: dict[str, set[str]] = {}
    for folder in _config_dirs(sys.argv):
        groups = [p for p in folder.iterdir() if p.is_dir() and p.name not in INTERNAL_GROUPS]
        for group in [*groups, folder / "hydra" / "launcher"]:
            found = {f.stem for f in group.glob("*.yaml")}
            if found:
                options.setdefault(group.relative_to(folder).as_posix(), set()).update(found)
    return "\n".join(f"  {group}: {', '.join(sorted(names))}" for group, names in sorted(options.items()))


@contextlib.contextmanager
def _short_composition_errors(argv: list[str]) -> Iterator[None]:
    """Hydra's composition errors, in a line where we know better (:mod:`csd_exp.schema.composition`).

    Hydra reports them in ``hydra._internal.utils.run_and_report`` (no public hook); this wraps it for the
    duration of the command. Without that function (another Hydra), the messages are Hydra's own.
    """
    from hydra._internal import utils as hydra_utils

    report = getattr(hydra_utils, "run_and_report", None)
    if report is None:
        yield
        return
    args = hydra_utils.get_args_parser().parse_known_args(argv[1:])[0]

    def compose(overrides: list[str]) -> dict:
        from hydra import compose as hydra_compose
        from omegaconf import OmegaConf

        config = hydra_compose(args.config_name or "config", overrides=overrides, return_hydra_config=True)
        return OmegaConf.to_container(config, resolve=False)

    def explained(func):
        from hydra.errors import ConfigCompositionException

        from csd_exp.schema.composition import explain_composition_error

        def run():
            try:
                return func()
            except ConfigCompositionException as error:
                message = explain_composition_error(error, list(args.overrides or []), compose)
                if message is None:
                    raise
                raise SystemExit("\n".join(f"csd-exp: {line}" for line in message.splitlines())) from None

        return report(run)

    hydra_utils.run_and_report = explained
    try:
        yield
    finally:
        hydra_utils.run_and_report = report


def _find_our_hydra_plugins() -> None:
    """Hydra finds plugins by walking the ``hydra_plugins`` namespace's folders. An editable install maps our
    ``hydra_plugins.csd_exp_launcher`` (the default ``grid`` sweeper, ``local_parallel``) from the checkout, a
    folder that namespace does not list unless the checkout is the working directory: add it before Hydra looks
    (a wheel installs it into site-packages, where it is found anyway)."""
    import importlib.util

    import hydra_plugins

    spec = importlib.util.find_spec("hydra_plugins.csd_exp_launcher")  # located, not imported (Hydra imports it)
    if spec is None or not spec.origin:
        return
    folder = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
    if folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)


def entry() -> None:
    """``csd-exp [overrides]`` runs a job; ``csd-exp eval ...`` scores existing outputs (= csd-exp-eval)."""
    if len(sys.argv) > 1 and sys.argv[1] == "eval":
        from csd_exp.eval import main as evaluate

        raise SystemExit(evaluate(sys.argv[2:]))
    sys.argv = _with_config_dir(sys.argv)
    _find_our_hydra_plugins()
    from omegaconf import OmegaConf

    from csd_exp.infra.interrupts import Interrupted, exit_status, install
    from csd_exp.infra.run_folder import release_claims, resume_in_own_folder
    from csd_exp.infra.sweep_end import report_interrupted_sweep
    from csd_exp.schema.composition import missing_extra

    OmegaConf.register_new_resolver("csd_exp_help_groups", help_groups, replace=True)

    extra = missing_extra([arg for arg in sys.argv[1:] if not arg.startswith("-")], _config_dirs(sys.argv))
    if extra:
        raise SystemExit(f"csd-exp: {extra}")
    sys.argv = resume_in_own_folder(sys.argv)  # ckpt_path=<run>/checkpoints/...: continue in <run>
    install()
    try:
        with _short_composition_errors(sys.argv):
            main()
    except KeyboardInterrupt:  # stopped outside a run (composing, between jobs): still a failure, status 130
        report_interrupted_sweep(exit_status(signal.SIGINT))
        raise SystemExit(exit_status(signal.SIGINT)) from None
    except Interrupted as stop:
        report_interrupted_sweep(stop.code)
        raise
    finally:
        release_claims()  # a refused or ended run's folder locks (the OS would drop them at exit; the files go too)


if __name__ == "__main__":
    entry()
