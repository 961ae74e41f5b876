"""Acceptance table for 3D editing: CSD-Edit dataset updates against the Instruct-NeRF2NeRF-style baseline
(and CSD-Edit without SVGD coupling) on the bundled sample scene with the exact prior, paired by seed.

    python -m csd_exp.experiments.scene3d_ablation --seeds 0 1 2
    python -m csd_exp.experiments.scene3d_ablation --seeds 0 1 2 --prompt "make it night"

Runs every setting through the ``csd-exp`` CLI (one Hydra multirun per editor, one torch thread per run:
on a shared 2-core machine two threads can be many times slower), then prints the table from the runs'
``summary.json`` files with experiments/summarize.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csd_exp.experiments.ablation import multirun
from csd_exp.experiments.summarize import load_summaries, table

METRICS = (
    "consistency/mode_agreement",
    "consistency/mode_agreement_edited_views",
    "edit/edited_fraction",
    "consistency/reprojection_error",
    "fidelity/heldout_psnr",
    "fidelity/heldout_psnr_pretrain",
    "wall_time_s",
)
EXPERIMENT = "scene3d_exact_cpu"
BASELINE_EXPERIMENT = "scene3d_in2n_exact_cpu"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--prompt", default="turn it into a pop-art painting")
    parser.add_argument(
        "--guidance",
        default="csd_edit,csd_edit_no_svgd",
        help="guidance presets (conf/guidance) swept for the CSD-Edit editor, comma-separated",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: outputs/experiments/scene3d_<time>)"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--table-only", action="store_true", help="only print the table of an existing --out")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/experiments") / time.strftime("scene3d_%Y%m%d_%H%M%S")

    if not args.table_only:
        import os

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        seeds = ",".join(map(str, args.seeds))
        common = [f"prompt={args.prompt!r}", f"seed={seeds}", "~callbacks.progress", *args.extra]
        multirun(out / "csd_edit", [f"experiment={EXPERIMENT}", *common, f"guidance={args.guidance}"])
        multirun(out / "in2n", [f"experiment={BASELINE_EXPERIMENT}", *common])
    print()
    print(table(load_summaries([out]), METRICS))


if __name__ == "__main__":
    main()
