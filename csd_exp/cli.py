"""The ``csd-exp`` entry point: compose the Hydra config, instantiate, fit, write ``summary.json``.

Everything is decided by the config (``conf/``) and the classes it names; this file only wires them
together, in the manner of lightning-hydra-template's ``train.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

CONFIG_DIR = os.environ.get("CSD_EXP_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "conf"))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from csd_exp.run import run

    summary = run(cfg)
    return summary.get("metrics", {}).get("consistency/mode_agreement")


def entry() -> None:
    """``csd-exp [overrides]`` runs a job; ``csd-exp eval ...`` scores existing outputs (= csd-exp-eval)."""
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "eval":
        from csd_exp.eval import main as evaluate

        raise SystemExit(evaluate(sys.argv[2:]))
    main()


if __name__ == "__main__":
    entry()
