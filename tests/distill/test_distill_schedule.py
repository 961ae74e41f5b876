"""Timestep schedules and the per-step random stream."""

import pytest
import torch

from csd_exp.distill import TimestepSchedule, draw_step_randomness


def test_default_is_the_official_range_and_paper_is_one_key_away():
    assert TimestepSchedule().bounds(0) == (20, 500)
    assert TimestepSchedule(min_fraction=0.2).bounds(123) == (200, 500)


def test_constant_draws_cover_the_inclusive_range():
    schedule = TimestepSchedule(min_fraction=0.1, max_fraction=0.105)  # timesteps 100..105
    generator = torch.Generator().manual_seed(0)
    draws = {schedule.sample(0, generator) for _ in range(400)}
    assert draws == set(range(100, 106))


def test_linear_annealing_shrinks_the_upper_bound():
    schedule = TimestepSchedule(annealing="linear", max_steps=100)
    assert schedule.bounds(0) == (20, 500)
    assert schedule.bounds(50) == (20, 260)
    assert schedule.bounds(100) == schedule.bounds(500) == (20, 20)
    generator = torch.Generator().manual_seed(1)
    assert max(schedule.sample(75, generator) for _ in range(200)) <= 140


def test_sqrt_annealing_is_deterministic():
    schedule = TimestepSchedule(annealing="sqrt", max_steps=100)
    assert schedule.bounds(0) == (500, 500)
    assert schedule.bounds(25) == (260, 260)  # 500 − 480·sqrt(1/4)
    assert schedule.bounds(100) == (20, 20)
    assert schedule.sample(25, torch.Generator().manual_seed(2)) == 260


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_fraction=0.0), "min_fraction=0.0 is not allowed"),
        (dict(max_fraction=1.0), "max_fraction=1.0 is not allowed"),
        (dict(min_fraction=0.6, max_fraction=0.5), "must not exceed"),
        (dict(annealing="cosine"), "annealing='cosine' is not allowed"),
        (dict(annealing="linear", max_steps=0), "max_steps=0 is not allowed"),
    ],
)
def test_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimestepSchedule(**kwargs)


def test_step_randomness_is_reproducible_and_independent_of_history_and_sharding():
    schedule = TimestepSchedule()
    t, noise = draw_step_randomness(3, 7, schedule, 5, (4, 2, 2))
    assert isinstance(t, int) and 20 <= t <= 500 and noise.shape == (5, 4, 2, 2) and noise.dtype == torch.float32
    for step in range(7):  # drawing other steps first (a run before a resume) changes nothing
        draw_step_randomness(3, step, schedule, 5, (4, 2, 2))
    t_again, noise_again = draw_step_randomness(3, 7, schedule, 5, (4, 2, 2), dtype=torch.float64)
    assert t_again == t and torch.equal(noise_again, noise.double())
    t_next, noise_next = draw_step_randomness(3, 8, schedule, 5, (4, 2, 2))
    assert not torch.equal(noise_next, noise)
    _, other_seed = draw_step_randomness(4, 7, schedule, 5, (4, 2, 2))
    assert not torch.equal(other_seed, noise)
    with pytest.raises(ValueError, match="num_particles"):
        draw_step_randomness(3, 7, schedule, 0, (4,))


def test_an_annealed_schedule_takes_its_horizon_from_the_task_unless_given():
    schedule = TimestepSchedule(annealing="linear")
    with pytest.raises(ValueError, match="needs a horizon"):
        schedule.bounds(3)
    schedule.set_horizon(100)
    assert schedule.bounds(100) == (schedule.min_timestep, schedule.min_timestep)
    given = TimestepSchedule(annealing="linear", max_steps=10)
    given.set_horizon(100)
    assert given.max_steps == 10


def test_step_scale_to_none_keeps_the_constant_factor_and_the_official_step_bit_for_bit():
    # neutral value: no annealing of the step factor, so schedule=default (factor 1.0, never multiplied) and the
    # constant schedule=fast factor are unchanged
    assert repr(TimestepSchedule(step_scale_to=None)) == repr(TimestepSchedule())
    assert all(TimestepSchedule(step_scale_to=None).step_factor(step) == 1.0 for step in range(300))  # no horizon
    constant = TimestepSchedule(step_scale=2.0, step_scale_from=0.1, max_steps=40)
    neutral = TimestepSchedule(step_scale=2.0, step_scale_from=0.1, step_scale_to=None, max_steps=40)
    flat = TimestepSchedule(step_scale=2.0, step_scale_from=0.1, step_scale_to=2.0, max_steps=40)
    factors = [constant.step_factor(step) for step in range(45)]
    assert factors == [neutral.step_factor(step) for step in range(45)]
    assert factors == [flat.step_factor(step) for step in range(45)]
    assert factors[:4] == [1.0] * 4 and set(factors[4:]) == {2.0}


def test_step_scale_to_anneals_the_factor_linearly_to_the_end_of_the_horizon():
    schedule = TimestepSchedule(step_scale=3.0, step_scale_from=0.2, step_scale_to=0.5, max_steps=10)
    factors = [schedule.step_factor(step) for step in range(13)]
    assert factors[:2] == [1.0, 1.0]  # the official step before step_scale_from
    assert factors[2] == 3.0
    assert factors[6] == pytest.approx(1.75, rel=1e-12)  # halfway from 0.2 to 1.0 of the horizon
    assert factors[10:] == [pytest.approx(0.5, rel=1e-12)] * 3  # the horizon's end, and after it
    assert all(a > b for a, b in zip(factors[2:10], factors[3:11]))
    with pytest.raises(ValueError, match="needs a horizon"):
        TimestepSchedule(step_scale_to=0.5).step_factor(0)  # an annealed factor is never neutral
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="step_scale_to"):
            TimestepSchedule(step_scale_to=bad)
