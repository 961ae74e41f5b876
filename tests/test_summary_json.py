"""summary.json is strict JSON: non-finite numbers become null with a reason (csd_exp/infra/summary.py)."""

from __future__ import annotations

import json
import math

import pytest

from csd_exp.infra.run_folder import write_json_atomically
from csd_exp.infra.summary import write_summary


def _refuse_constant(name: str):
    raise ValueError(f"summary.json holds {name}, which is not JSON")


def test_run_summary_writes_non_finite_values_as_null_with_a_reason(tmp_path):
    summary = {
        "status": "completed",
        "metrics": {"fidelity/psnr": math.inf, "consistency/seam_error": math.nan, "fidelity/ssim": 0.5},
        "config": {"trainer": {"gradient_clip_val": -math.inf}, "sizes": [1.0, math.inf]},
    }
    write_summary(tmp_path / "summary.json", summary)
    written = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_refuse_constant)
    assert written["metrics"] == {"fidelity/psnr": None, "consistency/seam_error": None, "fidelity/ssim": 0.5}
    assert written["config"] == {"trainer": {"gradient_clip_val": None}, "sizes": [1.0, None]}
    assert written["non_finite"] == {
        "fidelity/psnr": "inf: identical images (zero error)",
        "consistency/seam_error": "nan",
        "config.trainer.gradient_clip_val": "-inf",
        "config.sizes.1": "inf",
    }
    assert summary["metrics"]["fidelity/psnr"] == math.inf  # the caller's dict is left as it was


def test_the_json_writer_refuses_what_is_not_json(tmp_path):
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomically(tmp_path / "raw.json", {"psnr": math.inf})
    assert not (tmp_path / "raw.json").exists() and not list(tmp_path.iterdir())
