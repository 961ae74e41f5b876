"""What a run prints: what runs and where (two lines), its final metrics and outputs, and none of the
libraries' start-up chatter.

:func:`quiet_libraries` drops, by their exact wording, the messages that tell a user nothing about this
run: Lightning's accelerator inventory ("GPU available: False, used: False", "TPU available: ..."), its
litlogger tip and its "`Trainer.fit` stopped" line (the progress says so), a deprecation inside Lightning,
its note that a sampling baseline has no optimizer (none by design), and, for a one-process run, the hint
to prepend ``srun`` (which matters only to a job of several processes). Warnings that name something to
fix (a GPU left unused, a slow dtype, ...) stay. The config tree is saved in the run folder and printed
only with ``extras.print_config=true``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("csd_exp.run")

#: INFO lines of Lightning's rank-zero logger that describe the machine, not the run (matched at the start).
LIGHTNING_NOISE = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "💡 Tip:",
    "`Trainer.fit` stopped:",
)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
#: Python warnings of the libraries that no user of csd-exp can act on (regular expressions of the message
#: start): a deprecation inside Lightning, and the sampling baselines' deliberate lack of an optimizer.
LIBRARY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
)
SRUN_HINT = r"The `srun` command is available on your system but is not used"
#: Files of the run folder that are its record rather than its results (named once by the summary line).
RECORD_FILES = frozenset(
    {"cli.log", "config_tree.log", "resolved_config.yaml", "summary.json", "csv", "wandb", "checkpoints"}
)
WIDTH = 150


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith(LIGHTNING_NOISE))


_NOISE_FILTER = _DropLightningNoise()


def quiet_libraries(*, single_process: bool) -> None:
    """Silence the library messages listed above (idempotent: a sweep's jobs call it once each)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
    for message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if single_process:
        warnings.filterwarnings("ignore", message=SRUN_HINT)


def quiet_wandb_logger(loggers: Iterable) -> None:
    """Lightning's WandbLogger passes ``anonymous=None`` to ``wandb.init``, which wandb answers with "The
    anonymous setting has no effect"; drop the argument Lightning adds when it carries no value."""
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", True) is None:
            del init["anonymous"]


def single_process(trainer_cfg: Mapping[str, Any]) -> bool:
    """True when the trainer config asks for one process (one device on one node)."""
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    return str(devices) in ("1", "[0]") and int(nodes or 1) == 1


def describe_device(trainer_cfg: Mapping[str, Any]) -> str:
    """``cpu``, ``cuda (NVIDIA H100)``, ``4 x cuda, 2 nodes``: what the trainer config will run on."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    name = "cuda" if accelerator in ("gpu", "cuda") else accelerator
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if str(devices) == "auto" or str(devices) == "-1":
        devices = torch.cuda.device_count() if name == "cuda" else 1
    text = name
    if name == "cuda" and str(devices) == "1" and torch.cuda.is_available():
        text = f"cuda ({torch.cuda.get_device_name(0)})"
    elif str(devices) != "1":
        text = f"{devices} x {name}"
    return text + (f", {nodes} nodes" if nodes > 1 else "")


def _choice(choices: Mapping[str, Any], group: str, node: Any) -> str:
    chosen = choices.get(group)
    if chosen:
        return str(chosen)
    target = str(node.get("_target_", "")) if isinstance(node, Mapping) else ""
    return target.rsplit(".", 1)[-1] or "?"


def run_header(cfg: Mapping[str, Any], output_dir: Path, choices: Mapping[str, Any] | None = None) -> list[str]:
    """Two lines: task, method, model with its dtype, device, steps, seed (and experiment); the run folder."""
    from csd_exp.infra.devices import parse_torch_dtype

    choices = choices or {}
    trainer = cfg.get("trainer") or {}
    device = describe_device(trainer)
    model = cfg.get("model") or {}
    dtype = model.get("torch_dtype") if isinstance(model, Mapping) else None
    if dtype is not None:
        resolved = str(parse_torch_dtype(dtype, "cuda" if device.startswith("cuda") else "cpu")).removeprefix("torch.")
        dtype = f"{resolved} (auto)" if str(dtype) == "auto" else resolved
    parts = [
        f"task {_choice(choices, 'task', cfg.get('task'))}",
        f"method {cfg.get('method', '?')}",
        f"model {_choice(choices, 'model', model)}" + (f" in {dtype}" if dtype else ""),
        device,
        f"seed {cfg.get('seed', '?')}",
    ]
    max_steps = trainer.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:  # a sampling baseline's length is its reverse process
        parts.insert(4, f"{max_steps} steps")
    if choices.get("experiment"):
        parts.append(f"experiment {choices['experiment']}")
    return ["csd-exp: " + " · ".join(parts), f"run folder: {output_dir}"]


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _wrap(prefix: str, items: list[str], width: int = WIDTH) -> list[str]:
    """``prefix`` + the items joined by " · ", broken into lines of about ``width`` characters."""
    rows: list[list[str]] = [[]]
    for item in items:
        if rows[-1] and len(prefix) + len(" · ".join([*rows[-1], item])) > width:
            rows.append([])
        rows[-1].append(item)
    indent = " " * len(prefix)
    return [(prefix if index == 0 else indent) + " · ".join(row) for index, row in enumerate(rows)]


def metrics_lines(metrics: Mapping[str, Any]) -> list[str]:
    """``metrics: fidelity/psnr 18.51 · fidelity/ssim 0.7299 · ...``, keys below a common parent
    (``consistency/mode_fraction/<mode>``) gathered into one item, wrapped to a few lines."""
    if not metrics:
        return ["metrics: none"]
    items: list[str] = []
    groups: dict[str, list[str]] = {}
    for key, value in metrics.items():
        parent, _, leaf = key.rpartition("/")
        if parent.count("/") >= 1:  # a family such as consistency/mode_fraction/<mode>
            if parent not in groups:
                groups[parent] = []
                items.append(parent)
            groups[parent].append(f"{leaf} {_number(value)}")
        else:
            items.append(f"{key} {_number(value)}")
    items = [f"{item} ({', '.join(groups[item])})" if item in groups else item for item in items]
    return _wrap("metrics: ", items)


def outputs_line(output_dir: Path, limit: int = 6) -> str:
    """``outputs in <run folder>: edited.png, source.png, ...`` (the record files left out; the summary
    line names summary.json)."""
    output_dir = Path(output_dir)
    names = sorted(
        f"{path.name}/" if path.is_dir() else path.name
        for path in output_dir.iterdir()
        if not path.name.startswith(".") and path.name not in RECORD_FILES
    )
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        names.append("checkpoints/")
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"outputs in {output_dir}: {shown or 'none'}"


def announce(lines: Iterable[str]) -> None:
    """Log each line at INFO (the console and the run's cli.log)."""
    for line in lines:
        log.info("%s", line)
