"""The inputs a paper entry runs over (Table 1's clips, Fig. 5's panoramas, Table 3's prompts): a small
YAML or CSV that the user provides, or a list shipped in ``csd_exp.conf`` (``conf/paper/``).

YAML::

    root: /data/DAVIS/JPEGImages/480p     # optional: where relative paths start
    inputs:
      - {name: lucia, path: lucia, source_prompt: "a woman walking", prompt: "Make it as a painting of Claude Monet"}

CSV: a header row ``name,path,source_prompt,prompt`` (any subset but ``name`` optional), a row per input.
``path`` becomes ``data.path`` (a folder of frames, a video, an image or a scene folder), ``prompt`` and
``source_prompt`` the run's keys of the same names; an input may leave any of them out (Table 3's
inputs are prompts only). Relative paths start at ``--root``, else the file's ``root``, else the file's
folder; ``sample:<name>`` names a bundled sample (``sample:pan``, the panning clip).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from csd_exp.report.runs import ReportError

# What an input may set, and the config key each becomes.
INPUT_KEYS = {"path": "data.path", "prompt": "prompt", "source_prompt": "source_prompt"}
ALLOWED = ("name", *INPUT_KEYS)
# A path naming one of the bundled samples (``sample:pan``): kept as it is, never resolved against --root.
SAMPLE_PREFIX = "sample:"


@dataclass(frozen=True)
class Input:
    name: str  # the option of +paper_input, a valid file name
    values: dict[str, str]  # config key -> value ("data.path" -> "/abs/lucia")


def shipped_file(relative: str) -> Path:
    """A file of the installed ``csd_exp.conf`` package (works from a wheel as from a checkout)."""
    return Path(str(resources.files("csd_exp.conf").joinpath(relative)))


def _records(path: Path) -> tuple[list[dict], str | None]:
    """The file's input records and its ``root`` key (YAML only)."""
    if not path.is_file():
        raise ReportError(f"--inputs: no such file: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)], None
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # any parse error of the user's file becomes the one-line message
        raise ReportError(f"--inputs: cannot read {path}: {error}") from error
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise ReportError(f"--inputs: {path} must hold a list of inputs, or a mapping with an 'inputs' list")
    unknown = sorted(set(data) - {"root", "inputs"})
    if unknown:
        raise ReportError(f"--inputs: {path}: unknown top-level key(s) {', '.join(unknown)}; allowed: root, inputs")
    return data["inputs"], data.get("root")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "input"


def load_inputs(path: Path, root: Path | None = None) -> list[Input]:
    """The inputs of ``path``; every relative ``path`` resolved and checked to exist."""
    path = Path(path)
    records, file_root = _records(path)
    if not records:
        raise ReportError(f"--inputs: {path} lists no inputs")
    base = Path(root) if root is not None else Path(file_root) if file_root else path.parent
    inputs: list[Input] = []
    names: set[str] = set()
    missing: list[str] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ReportError(f"--inputs: {path}: input {number} is {record!r}, not a mapping of {', '.join(ALLOWED)}")
        record = {key: value for key, value in record.items() if value not in (None, "")}
        unknown = sorted(set(record) - set(ALLOWED))
        if unknown:
            raise ReportError(
                f"--inputs: {path}: input {number} has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(ALLOWED)}"
            )
        if not set(record) & set(INPUT_KEYS):
            raise ReportError(f"--inputs: {path}: input {number} sets none of {', '.join(INPUT_KEYS)}")
        values = {INPUT_KEYS[key]: str(record[key]) for key in INPUT_KEYS if key in record}
        if "data.path" in values and values["data.path"].startswith(SAMPLE_PREFIX):
            pass  # a bundled sample (sample:pan), resolved by the data sources
        elif "data.path" in values:
            full = Path(values["data.path"]).expanduser()
            full = full if full.is_absolute() else base / full
            if not full.exists():
                missing.append(str(full))
            values["data.path"] = str(full.resolve())
        path_name = values.get("data.path", "").removeprefix(SAMPLE_PREFIX)
        name = _safe_name(str(record.get("name") or Path(path_name).name or f"input{number}"))
        while name in names:
            name += f"_{number}"
        names.add(name)
        inputs.append(Input(name, values))
    if missing:
        hint = "" if root is not None else " (give --root for the folder they are in)"
        raise ReportError(f"--inputs: {path}: no such file or folder: {', '.join(missing)}{hint}")
    return inputs
