"""task=generation3d end to end on the exact generation prior: the CLI writes the turntables and
``summary.json`` with the view-agreement (Janus) metric; bad prompts fail early, naming the known ones.

(The kernel side, B = 1 ≡ SDS and the image kernels' gradients, is tested in tests/distill/test_view_kernels.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
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
    from csd_exp.run import build_task

    cfg = compose_config([*SMOKE, f"guidance={guidance}", "task.views_per_step=1"], tmp_path / guidance)
    task = build_task(cfg)
    task.setup("fit")
    out = task.distillation_step(0)
    out.loss.backward()
    return out, [p.grad.clone() for p in task.parameters() if p.grad is not None]


def test_with_one_view_per_step_csd_is_sds(tmp_path):
    with pytest.warns(UserWarning, match="single particle"):
        csd, csd_grads = _one_step(tmp_path, "csd")
    sds, sds_grads = _one_step(tmp_path, "sds")
    assert csd.t == sds.t and torch.equal(csd.gradients, sds.gradients)
    assert csd_grads and all(torch.equal(a, b) for a, b in zip(csd_grads, sds_grads, strict=True))


def test_cameras_and_view_prompts_come_from_the_seed_and_step(tmp_path):
    from csd_exp.run import build_task
    from csd_exp.tasks.generation3d.cameras import ViewPrompting, prompt_batch

    task = build_task(compose_config(SMOKE, tmp_path))
    first, again, later = task.step_cameras(3), task.step_cameras(3), task.step_cameras(4)
    assert torch.equal(first[0].azimuth, again[0].azimuth) and first[1] == again[1]
    assert not torch.equal(first[0].azimuth, later[0].azimuth)
    lo, hi = task.camera_sampler.azimuth_range
    assert bool(((first[0].azimuth >= lo) & (first[0].azimuth <= hi)).all())

    views = ViewPrompting(front_half_width=45, back_half_width=45, overhead_elevation=60)
    azimuth, elevation = torch.tensor([10.0, -170.0, 90.0, 0.0]), torch.tensor([0.0, 10.0, 20.0, 70.0])
    assert views.directions(azimuth, elevation) == ["front", "back", "side", "overhead"]
    prompts = views.prompts("a ball", azimuth[:3], elevation[:3])
    distinct, weights = prompt_batch(prompts)
    assert distinct == ["a ball, front view", "a ball, back view", "a ball, side view"]
    assert torch.equal(weights, torch.eye(3))  # one prompt per view: the guidance's one-hot multi-prompt path


def test_view_agreement_reads_the_janus_split():
    from csd_exp.tasks.generation3d.metrics import view_agreement

    one_object = torch.tensor([[0.9, 0.1, 0.0]] * 4)
    split = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.2, 0.8]])
    assert view_agreement(one_object) == 1.0
    assert view_agreement(split) == 0.5  # two of four views on the majority reference
