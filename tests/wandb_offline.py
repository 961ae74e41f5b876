"""Read back what a run gave W&B offline, from its ``run-<id>.wandb`` file (test support).

wandb >= 0.19 writes offline runs from its Go core and ships no Python reader. The file is W&B's
7-byte header (``:W&B``, magic, version) followed by a LevelDB-style log: 32 KiB blocks of records, each
with a 7-byte header (CRC-32C, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4), a block's
tail shorter than a header being padding. Each assembled record is a ``wandb_internal_pb2.Record``.
This reads only what the tests check: the run's identity, config, summary and artifacts.
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


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The identity, config, final summary and artifacts recorded in ``run_dir/run-<id>.wandb``."""
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
    return run
