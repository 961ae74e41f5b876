"""The guidance's baseline axis as classes, its two input objects, and distill's torch-only imports."""

import ast
import sys
import typing
from pathlib import Path

import pytest
import torch
from distill_fakes import FakePrior

from csd_exp.distill import (
    Baseline,
    Guidance,
    Particles,
    RandomNoise,
    Shard,
    SourceBranch,
    TimestepSchedule,
    draw_step_randomness,
    make_baseline,
)
from csd_exp.distill.baselines import BASELINES, BaselineName

SHAPE = (4, 4, 8, 8)


def inputs():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(*SHAPE, generator=generator)
    latents = (source + 0.1 * torch.randn(*SHAPE, generator=generator)).requires_grad_(True)
    return Particles(latents, source_latents=source, condition=0.5 * torch.randn(*SHAPE, generator=generator))


def test_the_short_names_are_the_schemas_and_name_the_classes():
    assert tuple(BASELINES) == typing.get_args(BaselineName)  # the names the compose-time check allows
    assert make_baseline("random_noise") == RandomNoise() and make_baseline("source_branch") == SourceBranch()
    assert Guidance("source_branch", "rbf", guidance_scale=1.5, image_guidance_scale=1.5).baseline == SourceBranch()
    with pytest.raises(ValueError, match="baseline must be one of"):
        make_baseline(object())


class ZeroBaseline(Baseline):
    """Δ = ε̂: subtracts nothing (what a learned baseline predicting 0 would give)."""

    def predict(self, prior, noisy_latents, noise, t, cond, source_latents):
        target = prior.predict_noise(noisy_latents, t, cond).target.float()
        return target, torch.zeros_like(target)


def test_a_baseline_class_changes_only_the_residual():
    """Same t, ε and kernel: a baseline of zeros differs from random noise exactly by the ε term."""
    particles, step = inputs(), dict(prompt="p", step=3, seed=1)
    noise_out = Guidance(RandomNoise(), "identity", guidance_scale=7.5, image_guidance_scale=1.5)(
        FakePrior(), particles, **step
    )
    zero_out = Guidance(ZeroBaseline(), "identity", guidance_scale=7.5, image_guidance_scale=1.5)(
        FakePrior(), particles, **step
    )
    assert zero_out.t == noise_out.t
    weight = noise_out.diagnostics["w_t"]
    _, noise = draw_step_randomness(1, 3, TimestepSchedule(), SHAPE[0], SHAPE[1:])
    torch.testing.assert_close(zero_out.gradients - noise_out.gradients, weight * noise, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="source_prompt conditions the source branch"):
        Guidance(ZeroBaseline(), "rbf", source_prompt="a photo", guidance_scale=1.5, image_guidance_scale=1.5)


def test_a_shard_must_hold_the_particles_it_is_given():
    particles = inputs()
    guidance = Guidance("source_branch", "rbf", guidance_scale=7.5, image_guidance_scale=1.5)
    with pytest.raises(ValueError, match="the shard has 3 particles"):
        guidance(FakePrior(), particles, prompt="p", step=0, seed=0, shard=Shard(offset=0, total=4, count=3))
    with pytest.raises(ValueError, match="needs the step's total"):
        guidance(FakePrior(), particles, prompt="p", step=0, seed=0, shard=Shard(group=object()))
    assert Shard(offset=2, total=6, count=3).rows == slice(2, 5)


def test_distill_imports_torch_only():
    """No csd_exp package but distill itself, and no third-party module but torch (numpy through torch); the one
    exception is the argument checker ``csd_exp.arguments``, re-exported by ``distill/arguments.py``: its module
    level imports the standard library only (tests/test_import_graph.py), pydantic and the source reader at the
    first call of a checked function."""
    root = Path(__file__).resolve().parents[2] / "csd_exp" / "distill"
    outside = set()
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if path.name == "arguments.py" and isinstance(node, ast.ImportFrom) and node.module == "csd_exp.arguments":
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("csd_exp.") and not name.startswith("csd_exp.distill"):
                    outside.add((path.name, name))
                elif top != "csd_exp" and top not in sys.stdlib_module_names and top != "torch":
                    outside.add((path.name, name))
    assert not outside, sorted(outside)
