"""Paired differences against a reference method: for each metric, each other method's run minus the
reference run on the same input and seed (and the same value of every other swept key), with the mean
difference, its 95 % confidence interval from Student's t distribution and the number of pairs.

Pairing removes what the two runs share (the input's difficulty, the seed's noise), so the interval is
about the methods. Only the standard library: the t quantile is computed here (the closed-form CDF for
integer degrees of freedom, inverted by bisection) rather than importing scipy.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from csd_exp.report.runs import MISSING, Run, canonical

# Config keys that say which input a run edited: the pairing matches them through the run's input
# condition, so they never split the differences of one method into groups.
INPUT_KEYS = frozenset({"data.path", "prompt", "source_prompt", "source_caption"})
CONFIDENCE = 0.95


def t_cdf_central(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with ``dof`` (integer ≥ 1) degrees of freedom, t ≥ 0 (closed form:
    Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        total, term = 0.0, 1.0
        for k in range(1, (dof - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        series = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2.0 / math.pi * (theta + series)
    total, term = 0.0, 1.0
    for k in range(1, dof // 2 + 1):
        total += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided critical value: t with P(|T| < t) = ``confidence`` (bisection to float precision)."""
    if dof < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"t_quantile needs dof >= 1 and 0 < confidence < 1, got {dof}, {confidence}")
    low, high = 0.0, 1.0
    while t_cdf_central(high, dof) < confidence:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf_central(middle, dof) < confidence else (low, middle)
    return 0.5 * (low + high)


@dataclass
class Interval:
    mean: float | None
    low: float | None  # the 95 % interval; None below two pairs
    high: float | None
    n: int


def mean_interval(differences: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{n-1} · s / √n over ``differences`` (finite values only)."""
    values = [value for value in differences if math.isfinite(value)]
    if not values:
        return Interval(None, None, None, 0)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None, 1)
    half = t_quantile(confidence, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


@dataclass
class Paired:
    """One method's paired differences on one metric, within one value of the other swept keys."""

    metric: str
    method: str
    context: dict[str, Any]  # swept key -> value (the keys besides method, input and seed)
    interval: Interval
    unpaired: int  # runs of the method with no reference run on the same input and seed


def _input(run: Run) -> tuple:
    return (canonical(run.conditions.value("input")), *(canonical(run.config.get(key, MISSING)) for key in ("prompt",)))


def _context(run: Run, keys: list[str]) -> dict[str, Any]:
    return {key: run.config.get(key, MISSING) for key in keys}


def _context_values(runs: list[Run], key: str) -> list[Any]:
    return [run.config.get(key, MISSING) for run in runs]


def _matches(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Equal on every key both runs have (a key one method lacks, e.g. the baselines' sampler, is no split)."""
    return all(
        canonical(one[key]) == canonical(other[key])
        for key in one
        if one[key] is not MISSING and other[key] is not MISSING
    )


def paired_differences(
    runs: list[Run], metrics: list[str], reference: str, swept_keys: list[str], input_linked: set[str]
) -> list[Paired]:
    """Every other method's differences against ``reference`` on ``metrics``; ``swept_keys``: the report's
    columns, of which those in ``input_linked`` (the input keys and keys that vary with them) pair through
    the input rather than split the results."""
    keys = [key for key in swept_keys if key not in input_linked]
    by_pair: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.method == reference:
            by_pair.setdefault((_input(run), run.seed), []).append(run)
    # A key the reference runs all share (SDS's kernel beside CSD's RBF and feature kernels) is part of what the
    # methods are, not a split of the reference: it selects no partner. Keys the reference varies (a scale swept
    # for every method) still must match.
    references = [run for pair in by_pair.values() for run in pair]
    partner_keys = [key for key in keys if len({canonical(v) for v in _context_values(references, key)}) > 1]
    results: list[Paired] = []
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.method != reference:
            context = _context(run, keys)
            groups.setdefault((run.method, tuple(canonical(v) for v in context.values())), []).append(run)
    for metric in metrics:
        for (method, _), members in groups.items():
            differences, unpaired = [], 0
            for run in members:
                context = _context(run, partner_keys)
                partner = next(
                    (
                        ref
                        for ref in by_pair.get((_input(run), run.seed), [])
                        if _matches(context, _context(ref, partner_keys))
                    ),
                    None,
                )
                value = run.metric(metric)
                other = partner.metric(metric) if partner is not None else None
                if partner is None or run.seed is None:
                    unpaired += 1
                elif value is not None and other is not None:
                    differences.append(value - other)
            results.append(Paired(metric, method, _context(members[0], keys), mean_interval(differences), unpaired))
    return results
