"""``csd-exp-report``: a report per sweep, from the runs' ``summary.json`` files.

    csd-exp-report outputs/multiruns/2026-11-25_07-00-00 [more sweep or run folders] \\
        [--metrics fidelity/psnr 'consistency/*'] [--out DIR] [--paper-column paper.yaml] [--reference METHOD]

Reads every ``summary.json`` under the given paths (recursively) and writes into the first path (or
``--out``):

- ``report.md``: one row per distinct (method, swept values) with n (seeds) and mean ± sample std per
  metric; a line per non-completed status (``2 runs failed: <paths>``), which are counted, never averaged;
  notes; the figures below.
- ``report.csv``: the same rows at full precision, plus the runs' folders.
- ``report_grid.png``: the runs' output images (rows = method and swept values, columns = seeds).
- ``report_<metric>.png`` per metric (``/`` becomes ``_``): a line plot against the swept key when exactly
  one numeric key was swept, bars otherwise.

The task and method are what the run recorded (``summary.json``'s ``task`` / ``method``, else the saved
config's ``method`` label); a run that records neither is ``unknown``, never guessed from run, folder or
class names (csd_exp/report/runs.py). The swept keys are the flattened config keys whose values differ
between the completed runs, leaving out the seed and bookkeeping (paths, run name, checkpoint path,
loggers, callbacks, trainer devices, Hydra, the experiment's ``paper`` node); a row never averages over a
swept key. ``.hydra/overrides.yaml`` is not read, so copied or merged run folders report the same.

Beside the table (csd_exp/report/conditions.py, paired.py, jobs.py):

- a conditions block: per method its model, input, frames, size in pixels, steps, scales and seeds, and
  what the method sets itself (listed, not flagged); a model-family difference marked as expected; any
  other difference between the methods flagged as a confounder in ``report.md``, the CSV and the plots;
- paired differences against ``--reference`` (default ``csd_edit``) per metric, paired by input and seed:
  mean, 95 % t interval, number of pairs (``report_paired.csv``);
- the jobs of the sweep that left no summary (``jobs.json``, else job folders), with their overrides.

``--paper-column`` takes a YAML or JSON mapping ``method -> metric -> number`` and shows a "paper" column
beside each metric it names.

Weights & Biases is never read: the report rests on ``summary.json`` and the run folders' images only.
When the runs logged to W&B (their ``summary.json`` has a ``"wandb"`` identity) and W&B is not disabled
(``WANDB_MODE=disabled`` or ``--no-wandb``), the table also goes to W&B as a ``wandb.Table`` with links to
the runs, in one run of ``job_type="report"`` in the runs' group (offline counts; ``report_wandb.json``
records it). Imports no torch unless it sends to W&B, so it starts fast.

``csd-exp-paper`` (csd_exp/report/paper.py) runs the paper's figures and tables on top of this.
"""

from __future__ import annotations

from csd_exp.report.cli import main

__all__ = ["main"]
