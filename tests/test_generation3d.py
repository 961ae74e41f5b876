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


@pytest.mark.parametrize(("model", "kernel"), [("tiny_sd", "feature_rbf"), ("tiny_if", "rbf")])
def test_two_steps_on_tiny_latent_and_pixel_priors(tmp_path, model, kernel):
    """SD (latent: the renders go through the differentiable VAE encode) and IF (pixel space) priors."""
    args = ["task=generation3d", f"model={model}", f"kernel={kernel}", "debug=smoke", "prompt=a red chair"]
    result = run_cli([*args, f"paths.output_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 2)
    assert (tmp_path / "turntable.mp4").is_file() and (tmp_path / "turntable_depth.mp4").is_file()


def _one_step(tmp_path, guidance):
    import torch

    from csd_exp.run import build_task

    cfg = compose_config([*SMOKE, f"guidance={guidance}", "task.views_per_step=1"], tmp_path / guidance)
    task = build_task(cfg)
    task.setup("fit")
    out = task.distillation_step(0)
    out.loss.backward()
    return out, [p.grad.clone() for p in task.parameters() if p.grad is not None], torch


def test_with_one_view_per_step_csd_is_sds(tmp_path):
    with pytest.warns(UserWarning, match="single particle"):
        csd, csd_grads, torch = _one_step(tmp_path, "csd")
    sds, sds_grads, _ = _one_step(tmp_path, "sds")
    assert csd.t == sds.t and torch.equal(csd.gradients, sds.gradients)
    assert csd_grads and all(torch.equal(a, b) for a, b in zip(csd_grads, sds_grads, strict=True))
