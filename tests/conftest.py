"""Test-wide settings (no hub look-ups, W&B offline) and helpers that compose and run the real config."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("CSD_EXP_CACHE_DIR", tempfile.mkdtemp(prefix="csd-exp-test-cache-"))

import pytest  # noqa: E402
from framework_support import compose_config  # noqa: E402


@pytest.fixture
def run_job(tmp_path):
    """Compose with overrides and run in-process; returns (summary dict, run folder)."""
    from csd_exp.run import run

    def _run(overrides: list[str], name: str = "run"):
        output_dir = tmp_path / name
        cfg = compose_config(overrides, output_dir)
        return run(cfg), output_dir

    return _run


# Tests whose tolerances rest on float rounding, which differs between CPU vector ISAs: ``make test``
# runs them a second time with PyTorch, oneDNN and MKL capped to AVX2 (see the Makefile).
NUMERICS_FOLDERS = ("priors", "distill", "metrics", "render")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.relative_to(config.rootpath / "tests").parts
        if len(parts) > 1 and parts[0] in NUMERICS_FOLDERS:
            item.add_marker(pytest.mark.numerics)
