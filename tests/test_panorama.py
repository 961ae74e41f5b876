"""Panorama task internals: window geometry, the coverage-balanced sampler, gradient normalisation."""

from __future__ import annotations

import pytest
import torch

from csd_exp.data import ImageSource
from csd_exp.distill import Guidance, Particles
from csd_exp.priors import ExactScorePrior
from csd_exp.tasks import PanoramaTask, RunInputs, WindowGrid


def test_window_grid_tiles_and_crops():
    grid = WindowGrid(height=8, width=20, size=8, stride=4)
    assert grid.origins == [(0, 0), (0, 4), (0, 8), (0, 12)]
    coverage = grid.coverage(range(len(grid)))[0, 0]
    assert coverage[0, 0] == 1 and coverage[0, 5] == 2 and coverage[0, 19] == 1
    canvas = torch.arange(2 * 8 * 20, dtype=torch.float32).reshape(1, 2, 8, 20)
    windows = grid.crop(canvas, [1, 3])
    assert windows.shape == (2, 2, 8, 8)
    torch.testing.assert_close(windows[1], canvas[0, :, :, 12:20])


def test_coverage_balanced_sampler_evens_out_corners():
    grid = WindowGrid(height=24, width=72, size=16, stride=4)
    masks = torch.stack([grid.coverage([i])[0, 0] for i in range(len(grid))])
    uniform = torch.full((len(grid),), 1.0 / len(grid))
    balanced = grid.balanced_probabilities()
    assert torch.isclose(balanced.sum(), torch.tensor(1.0))
    expected_uniform = torch.einsum("w,whv->hv", uniform, masks)
    expected_balanced = torch.einsum("w,whv->hv", balanced, masks)
    spread = lambda cover: float(cover.std() / cover.mean())
    assert spread(expected_balanced) < 0.75 * spread(expected_uniform)
    assert expected_balanced[0, 0] > 2 * expected_uniform[0, 0]  # the corner is visited far more often


def _task(**overrides) -> PanoramaTask:
    kwargs = dict(
        prompt="turn it into a pop-art painting",
        data=ImageSource(path="sample:rocket", short_side=32),
        window_size=16,
        window_stride=8,
        windows_per_step=3,
        seed=5,
    )
    kwargs.update(overrides)
    guidance = Guidance("source_branch", kernel="rbf", guidance_scale=1.5, image_guidance_scale=1.5)  # CSD-Edit
    kwargs["inputs"] = RunInputs(**{k: kwargs.pop(k) for k in ("prompt", "seed", "max_steps") if k in kwargs})
    task = PanoramaTask(ExactScorePrior(), guidance, optimizer=lambda params: torch.optim.SGD(params, lr=1.0), **kwargs)
    task.setup("fit")
    return task


def test_window_gradients_are_divided_by_their_step_coverage():
    task = _task()
    step = 7
    out = task.distillation_step(step)
    out.loss.backward()
    windows = task.sample_windows(step)
    # The same step without the 1/coverage scale: identical randomness, raw combiner output.
    raw = task.guidance(
        task.prior,
        Particles(
            task.grid.crop(task.canvas, windows),
            source_latents=task.grid.crop(task.source_latents, windows),
            condition=task.grid.crop(task.image_condition, windows),
        ),
        prompt=task.prompt,
        step=step,
        seed=task.seed,
    )
    expected = torch.zeros_like(task.canvas)
    for (top, left), gradient in zip([task.grid.origins[int(i)] for i in windows], raw.gradients):
        expected[0, :, top : top + 16, left : left + 16] += gradient
    coverage = task.grid.coverage(windows)
    expected = torch.where(coverage > 0, expected / coverage.clamp(min=1), torch.zeros_like(expected))
    torch.testing.assert_close(task.canvas.grad, expected, rtol=1e-5, atol=1e-7)
    assert (task.canvas.grad[coverage.expand_as(expected) == 0] == 0).all()


def test_windows_are_reproducible_per_step_and_differ_across_steps():
    task = _task()
    assert torch.equal(task.sample_windows(3), task.sample_windows(3))
    assert any(not torch.equal(task.sample_windows(3), task.sample_windows(s)) for s in range(4, 10))


def test_canvas_starts_at_the_source_and_prior_stays_out_of_the_state_dict():
    task = _task()
    torch.testing.assert_close(task.canvas.detach(), task.source_latents)
    assert set(task.state_dict()) == {"canvas"}


def test_unknown_sampler_is_rejected():
    """The choices are the constructor's annotation, refused when the config is checked (before a model loads);
    the constructor no longer repeats the check (issue 21)."""
    from csd_exp.schema import check_target

    with pytest.raises(ValueError, match="window_sampler"):
        check_target("task", {"_target_": "csd_exp.tasks.PanoramaTask", "window_sampler": "random"})
