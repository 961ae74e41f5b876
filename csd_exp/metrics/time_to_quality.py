"""Time-to-quality curves: ideal-edit PSNR and mode agreement against cumulative UNet rows, read from one run's
own logged series (no second run).

A run on an exact prior logs, at every validation point (``trainer.val_check_interval``), ``val/unet_rows`` (the
UNet rows its updates so far would cost a learned prior, :meth:`csd_exp.distill.Guidance.unet_rows`),
``val/fidelity/ideal_psnr`` and ``val/consistency/mode_agreement`` (``csd_exp.tasks.base``). With ``logger=csv``
they are rows of ``<run>/csv/metrics.csv``; :func:`read_curve` reads them back, :func:`rows_to_reach` finds the
first point at or above a target, and ``python -m csd_exp.metrics.time_to_quality`` compares a candidate
schedule's runs with the official schedule's, paired by seed (the folder name's ``_s<seed>`` or the summary's
seed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

ROWS = "val/unet_rows"
PSNR = "val/fidelity/ideal_psnr"
AGREEMENT = "val/consistency/mode_agreement"


@dataclass(frozen=True)
class CurvePoint:
    unet_rows: float
    ideal_psnr: float
    agreement: float


def _metrics_csv(run: Path) -> Path:
    run = Path(run)
    path = run if run.suffix == ".csv" else run / "csv" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path}: time-to-quality curves read a run's CSV series; run it with logger=csv and a "
            "trainer.val_check_interval that puts several validation points on the curve"
        )
    return path


def read_curve(run: Path) -> list[CurvePoint]:
    """The run's validation points (UNet rows, ideal PSNR, agreement), in logging order."""
    points = []
    with _metrics_csv(run).open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = [row.get(key) or "" for key in (ROWS, PSNR, AGREEMENT)]
            if all(values):
                points.append(CurvePoint(*(float(value) for value in values)))
    if not points:
        raise ValueError(
            f"{_metrics_csv(run)} has no validation row with {ROWS}, {PSNR} and {AGREEMENT}: the run needs an "
            "exact prior (model=exact) and at least one validation point"
        )
    return points


def rows_to_reach(curve: list[CurvePoint], ideal_psnr: float, agreement: float) -> float | None:
    """The UNet rows of the first point with ideal PSNR ≥ ``ideal_psnr`` and agreement ≥ ``agreement``, or None."""
    for point in curve:
        if point.ideal_psnr >= ideal_psnr and point.agreement >= agreement:
            return point.unet_rows
    return None


def _seed(run: Path) -> int:
    summary = Path(run) / "summary.json"
    if summary.is_file():
        seed = json.loads(summary.read_text()).get("seed")
        if seed is not None:
            return int(seed)
    name = Path(run).name
    if "_s" in name and name.rsplit("_s", 1)[1].isdigit():
        return int(name.rsplit("_s", 1)[1])
    raise ValueError(f"cannot tell the seed of {run}: no summary.json seed and no _s<seed> suffix")


def compare(reference: list[Path], candidate: list[Path]) -> list[dict]:
    """One row per seed: the reference's final ideal PSNR, agreement and rows; the rows the candidate took to reach
    both (None if it never did), their ratio, and the candidate's final point."""
    candidates = {_seed(run): run for run in candidate}
    rows = []
    for run in reference:
        seed = _seed(run)
        if seed not in candidates:
            raise ValueError(f"no candidate run with seed {seed} (reference {run}): pair the runs by seed")
        final = read_curve(run)[-1]
        curve = read_curve(candidates[seed])
        reached = rows_to_reach(curve, final.ideal_psnr, final.agreement)
        rows.append(
            {
                "seed": seed,
                "reference_psnr": final.ideal_psnr,
                "reference_agreement": final.agreement,
                "reference_rows": final.unet_rows,
                "candidate_rows_to_reach": reached,
                "ratio": None if reached is None else reached / final.unet_rows,
                "candidate_final_psnr": curve[-1].ideal_psnr,
                "candidate_final_agreement": curve[-1].agreement,
                "candidate_rows": curve[-1].unet_rows,
            }
        )
    return rows


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.3g} ± {std:.2g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", nargs="+", type=Path, required=True, help="run folders, official schedule")
    parser.add_argument("--candidate", nargs="+", type=Path, required=True, help="run folders, the new schedule")
    args = parser.parse_args(argv)
    rows = compare(args.reference, args.candidate)
    print(
        "| seed | official: ideal PSNR dB | agreement | UNet rows | new: rows to reach both | ratio | new final PSNR | "
        "new final agreement | new UNet rows |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        reached = row["candidate_rows_to_reach"]
        print(
            f"| {row['seed']} | {row['reference_psnr']:.2f} | {row['reference_agreement']:.3f} | "
            f"{row['reference_rows']:.0f} | {'never' if reached is None else f'{reached:.0f}'} | "
            f"{'—' if reached is None else format(row['ratio'], '.2f')} | {row['candidate_final_psnr']:.2f} | "
            f"{row['candidate_final_agreement']:.3f} | {row['candidate_rows']:.0f} |"
        )
    ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
    reached = f"({len(ratios)}/{len(rows)} reached)"
    print(
        f"| mean ± std | {_mean_std([r['reference_psnr'] for r in rows])} | "
        f"{_mean_std([r['reference_agreement'] for r in rows])} | | | "
        f"{_mean_std(ratios)} {reached} | "
        f"{_mean_std([r['candidate_final_psnr'] for r in rows])} | "
        f"{_mean_std([r['candidate_final_agreement'] for r in rows])} | |"
    )


if __name__ == "__main__":
    main()
