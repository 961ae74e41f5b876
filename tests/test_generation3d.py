"""task=generation3d end to end on the exact generation prior: the CLI writes the turntables and
``summary.json`` with the view-agreement (Janus) metric; bad prompts fail early, naming the known ones.

(The kernel side, B = 1 ≡ SDS and the image kernels' gradients, is tested in tests/distill/test_view_kernels.py.)
"""

from __future__ import annotations

import json

import pytest
from framework_support import compose_config, run_cli

SMOKE = ["experiment=generation3d_exact_cpu", "debug=smoke"]


@pytest.mark.parametrize("guidance", ["csd", "sds"])
def test_a_two_step_run_writes_turntables_and_view_agreement(tmp_path, guidance):
    result = run_cli([*SMOKE, f"guidance={guidance}", f"paths.output_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 2)
    for name in ("turntable.mp4", "turntable.gif", "turntable_depth.mp4", "turntable_grid.png"):
        assert (tmp_path / name).is_file(), name
    agreement = summary["metrics"]["consistency/view_agreement"]
    assert 0.0 < agreement <= 1.0  # at least the majority reference's own views agree
    assert summary["config"]["method"] == guidance


def test_an_unknown_prompt_lists_the_known_ones(tmp_path):
    from csd_exp.run import build_task

    cfg = compose_config([*SMOKE, "prompt=a purple elephant"], tmp_path)
    with pytest.raises(ValueError, match="does not know the prompt 'a purple elephant'; it knows: 'a painted ball'"):
        build_task(cfg)
