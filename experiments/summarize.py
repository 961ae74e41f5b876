"""Turn runs' ``summary.json`` files into one table (mean ± std over seeds), optionally beside paper numbers.

    python -m csd_exp.experiments.summarize outputs/multiruns/2026-11-25_07-00-00 \\
        --metrics consistency/mode_agreement fidelity/psnr

Rows are grouped by method: a distillation run's guidance preset (the config's ``method``), a sampling
baseline's run name.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

DEFAULT_METRICS = (
    "consistency/mode_agreement",
    "consistency/seam_error",
    "fidelity/psnr",
    "fidelity/ssim",
    "wall_time_s",
)


def guidance_label(summary: dict) -> str:
    """The method of a distillation run: the config's ``method`` (its guidance preset, as in its run name and
    W&B tag), else, for runs older than that key, its two axes (baseline + kernel class)."""
    config = summary.get("config", {})
    if isinstance(config.get("method"), str):
        return config["method"]
    guidance = config.get("guidance", {})
    kernel = guidance.get("kernel") or {}
    kernel_class = str(kernel.get("_target_", "no kernel")).rsplit(".", 1)[-1]
    return f"{guidance.get('baseline', '?')} + {kernel_class}"


def run_label(summary: dict) -> str:
    config = summary.get("config", {})
    guidance = config.get("guidance", {})
    if "_target_" not in guidance:  # sampling baselines and IN2N: no distillation, the run name says which
        return str(config.get("run_name", "?"))
    label = guidance_label(summary)
    if guidance.get("official_scaling"):
        label += " (official scaling)"
    multiplier = (guidance.get("kernel") or {}).get("bandwidth_multiplier", 1.0)
    if multiplier != 1.0:
        label += f" (bandwidth ×{multiplier:g})"
    return label


def load_summaries(roots: Iterable[Path]) -> list[dict]:
    summaries = []
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("summary.json"))
        for path in paths:
            summary = json.loads(path.read_text())
            summary["_path"] = str(path)
            summaries.append(summary)
    return summaries


def metric_value(summary: dict, name: str) -> float | None:
    if name in summary.get("metrics", {}):
        return float(summary["metrics"][name])
    value = summary.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def table(summaries: list[dict], metrics: Iterable[str]) -> str:
    metrics = list(metrics)
    groups: dict[str, list[dict]] = defaultdict(list)
    for summary in summaries:
        if summary.get("status") == "completed":
            groups[run_label(summary)].append(summary)
    lines = ["| method | runs | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for label, runs in sorted(groups.items()):
        cells = []
        for name in metrics:
            values = [v for v in (metric_value(s, name) for s in runs) if v is not None and math.isfinite(v)]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="run folders, multirun folders or summary.json files")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    args = parser.parse_args(argv)
    summaries = load_summaries(args.roots)
    if not summaries:
        raise SystemExit(f"no summary.json under {', '.join(map(str, args.roots))}")
    print(table(summaries, args.metrics))


if __name__ == "__main__":
    main()
