"""Read back what a run gave W&B offline, from its ``run-<id>.wandb`` file (test support).

wandb >= 0.19 writes offline runs from its Go core and ships no Python reader. The file is W&B's
7-byte header (``:W&B``, magic, version) followed by a LevelDB-style log: 32 KiB blocks of records, each
with a 7-byte header (CRC-32C, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4), a block's
tail shorter than a header being padding. Each assembled record is a ``wandb_internal_pb2.Record``.
This reads only what the tests check: the run's identity, config, summary, history rows and artifacts,
plus the warnings W&B's core wrote into ``logs/debug-internal.log`` (a history row it ignored shows there).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    artifacts: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (type, files)
    history: list[dict] = field(default_factory=list)  # one dict per row; a media entry is a dict of its fields
    warnings: list[str] = field(default_factory=list)  # "<msg> <fields>" of each WARN line of the core's log


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (no :W&B header)")
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        payload = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
        else:  # zero padding up to the end of the block
            position += BLOCK - position % BLOCK if position % BLOCK else 0


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _history_row(history) -> dict:
    row: dict = {}
    for item in history.item:
        value = json.loads(item.value_json)
        if item.key or len(item.nested_key) == 1:
            row[item.key or item.nested_key[0]] = value
        else:  # a media entry, e.g. ("final/edited", "_type") -> row["final/edited"]["_type"]
            *parents, leaf = item.nested_key
            node = row
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
    return row


def _core_warnings(run_dir: Path) -> list[str]:
    log = Path(run_dir) / "logs" / "debug-internal.log"
    warnings = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") == "WARN":
            fields = {k: v for k, v in entry.items() if k not in ("time", "level", "msg")}
            warnings.append(f"{entry.get('msg', '')} {fields}")
    return warnings


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The identity, config, final summary, history and artifacts recorded in ``run_dir/run-<id>.wandb``."""
    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun()
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.id, run.name, run.group, run.job_type = info.run_id, info.display_name, info.run_group, info.job_type
            run.tags = list(info.tags)
        elif kind == "config":
            run.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            run.summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "artifact":
            files = sorted(entry.path for entry in record.artifact.manifest.contents)
            run.artifacts[record.artifact.name] = (record.artifact.type, files)
        elif kind == "history":
            run.history.append(_history_row(record.history))
    run.warnings = _core_warnings(run_dir)
    return run
