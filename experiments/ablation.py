"""Panorama acceptance table: CSD-Edit against SDS, without-SVGD, the random-noise baseline and the
sampling baselines, on the bundled photo with the exact prior, paired by seed.

    python -m experiments.panorama_ablation --seeds 0 1 2 --prompt "turn it into a pop-art painting"

Runs every setting through the ``csd-exp`` CLI (one Hydra multirun per family), then prints the table
from the runs' ``summary.json`` files (see experiments/summarize.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from experiments.summarize import load_summaries, table

METRICS = ("consistency/mode_agreement", "consistency/seam_error", "fidelity/psnr", "fidelity/ssim", "wall_time_s")


def multirun(sweep_dir: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "csd_exp.cli", "-m", f"hydra.sweep.dir={sweep_dir}", "logger=csv", *overrides]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--prompt", default="turn it into a pop-art painting")
    parser.add_argument("--out", type=Path, default=Path("outputs/experiments") / time.strftime("panorama_%Y%m%d_%H%M%S"))
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    args = parser.parse_args(argv)

    seeds = ",".join(map(str, args.seeds))
    common = ["experiment=panorama_exact_cpu", f"prompt={args.prompt!r}", f"seed={seeds}", *args.extra]
    multirun(args.out / "distill", [*common, "guidance=csd_edit,sds,csd_edit_no_svgd,csd_edit_random_noise"])
    multirun(args.out / "sampling", [*common, "task=panorama_sampling",
                                     "task.method=per_window,multidiffusion,downscaled"])
    print()
    print(table(load_summaries([args.out]), METRICS))


if __name__ == "__main__":
    main()
