"""Resume safety: the config fingerprint in checkpoints, and the checks of ``ckpt_path`` before a resume."""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from framework_support import FAST, compose_config
from omegaconf import OmegaConf

from csd_exp.infra.callbacks import RunFingerprint
from csd_exp.infra.checkpoints import check_resume_checkpoint, run_fingerprint

SMALL_EXACT = ["experiment=panorama_exact_cpu", "data.short_side=32", "task.window_size=32", "task.window_stride=8"]


def _fingerprint(overrides: list[str], output_dir: Path = Path("/tmp/unused")) -> dict:
    cfg = compose_config(overrides, output_dir)
    return run_fingerprint(OmegaConf.to_container(cfg, resolve=True))


class Tiny(pl.LightningModule):
    """One parameter and SGD: a real Lightning checkpoint in well under a second."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(8, 3), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(folder: Path, fingerprint: dict, max_steps: int, ckpt_path: Path | None = None) -> Path:
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename="step{step:02d}",
        every_n_train_steps=1,
        save_top_k=-1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[checkpoints, RunFingerprint(fingerprint)],
    )
    trainer.fit(Tiny(), ckpt_path=ckpt_path)
    return folder / "last.ckpt"


@pytest.fixture(scope="module")
def sds_fingerprint():
    return _fingerprint([*SMALL_EXACT, "guidance=sds"])


@pytest.fixture
def sds_checkpoint(tmp_path, sds_fingerprint):
    return _fit(tmp_path / "checkpoints", sds_fingerprint, max_steps=2)


def test_the_fingerprint_ignores_what_may_change_on_resume(sds_fingerprint):
    elsewhere = _fingerprint(
        [
            *SMALL_EXACT,
            "guidance=sds",
            "trainer=ddp_sim",
            "trainer.max_steps=999",
            "logger=csv",
            "metrics=none",
            "run_name=other",
            "ckpt_path=/x/last.ckpt",
            "~callbacks.progress",
            "trainer.val_check_interval=7",
        ],
        Path("/elsewhere"),
    )
    assert elsewhere == sds_fingerprint
    keys = sds_fingerprint["keys"]
    assert keys["guidance.baseline"] == "random_noise" and keys["guidance.kernel._target_"].endswith("IdentityKernel")
    assert keys["seed"] == 0 and keys["trainer.precision"] == "32-true"
    assert not any(k.split(".")[0] in {"logger", "callbacks", "paths", "metrics", "run_name"} for k in keys)


@pytest.mark.parametrize(
    "override",
    [
        "guidance=csd_edit",
        "seed=1",
        "prompt='make it night'",
        "trainer.precision=64-true",
        "task.window_stride=16",
        "data.short_side=64",
    ],
)
def test_the_fingerprint_sees_what_changes_the_math(override, sds_fingerprint):
    changed = _fingerprint([*SMALL_EXACT, "guidance=sds", override])
    assert changed["hash"] != sds_fingerprint["hash"]


def test_every_checkpoint_carries_the_fingerprint_and_loads_weights_only(sds_checkpoint, sds_fingerprint):
    for path in sds_checkpoint.parent.glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["csd_exp"]["fingerprint"] == sds_fingerprint, path.name


def test_resuming_under_another_guidance_names_the_keys_and_the_override(sds_checkpoint):
    csd_edit = _fingerprint([*SMALL_EXACT, "guidance=csd_edit"])
    with pytest.raises(ValueError) as refused:
        check_resume_checkpoint(sds_checkpoint, csd_edit, allow_config_change=False)
    message = str(refused.value)
    assert 'guidance.baseline: "random_noise" -> "source_branch"' in message
    assert "resume.allow_config_change=true" in message
    assert len(message.splitlines()) <= 13


def test_allowing_the_change_warns_and_returns_the_differences(sds_checkpoint, caplog):
    seed_1 = _fingerprint([*SMALL_EXACT, "guidance=sds", "seed=1"])
    with caplog.at_level(logging.WARNING):
        differences = check_resume_checkpoint(sds_checkpoint, seed_1, allow_config_change=True)
    assert differences == ["seed: 0 -> 1"]
    assert "seed: 0 -> 1" in caplog.text


def test_extending_a_run_resumes(sds_checkpoint, sds_fingerprint):
    longer = _fingerprint([*SMALL_EXACT, "guidance=sds", "trainer.max_steps=400"])
    assert check_resume_checkpoint(sds_checkpoint, longer) == []
    _fit(sds_checkpoint.parent, longer, max_steps=4, ckpt_path=sds_checkpoint)
    assert torch.load(sds_checkpoint, map_location="cpu", weights_only=True)["global_step"] == 4


def test_a_resume_reads_the_checkpoint_once_before_lightning_does(sds_checkpoint, sds_fingerprint, monkeypatch):
    """The resume checks, the W&B identity and a requeue's step read one load of the file; a new version of it
    (written again) is read again."""
    from csd_exp.infra import checkpoints
    from csd_exp.infra.requeue import _global_step

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or real_load(*args, **kwargs))
    checkpoints._record.cache_clear()
    assert check_resume_checkpoint(sds_checkpoint, sds_fingerprint) == []
    assert checkpoints.stored_wandb_identity(sds_checkpoint) == {}
    assert _global_step(sds_checkpoint) == real_load(sds_checkpoint, weights_only=True)["global_step"]
    assert len(loads) == 1
    rewritten = real_load(sds_checkpoint, weights_only=True)
    rewritten["global_step"] += 1
    torch.save(rewritten, sds_checkpoint)
    assert _global_step(sds_checkpoint) == rewritten["global_step"] and len(loads) == 2


def test_a_class_named_by_another_of_its_import_paths_is_the_same_config():
    """A checkpoint written when a task lived at its module path resumes under the re-exported name (and the
    reverse); a path to another class, or one that no longer imports, is still a difference."""
    from csd_exp.infra.checkpoints import fingerprint_differences

    def fingerprint(target):
        return run_fingerprint({"task": {"_target_": target, "window_size": 64}})

    moved = fingerprint("csd_exp.tasks.panorama.windows.PanoramaTask")
    assert fingerprint_differences(moved, fingerprint("csd_exp.tasks.PanoramaTask")) == []
    assert fingerprint_differences(fingerprint("csd_exp.tasks.VideoTask"), moved) == [
        'task._target_: "csd_exp.tasks.VideoTask" -> "csd_exp.tasks.panorama.windows.PanoramaTask"'
    ]
    assert len(fingerprint_differences(fingerprint("csd_exp.tasks.panorama_old.PanoramaTask"), moved)) == 1


def test_many_differences_are_cut_short(tmp_path):
    old = run_fingerprint({"task": {f"k{i:02d}": i for i in range(25)}})
    new = run_fingerprint({"task": {f"k{i:02d}": -i for i in range(25)}})
    path = _fit(tmp_path, old, max_steps=1)
    with pytest.raises(ValueError, match=r"\.\.\. and 14 more") as refused:
        check_resume_checkpoint(path, new)
    assert "task.k01: 1 -> -1" in str(refused.value)


def test_a_checkpoint_of_an_older_run_only_warns(tmp_path, caplog):
    """A real job's checkpoint (whatever run.py wires today), stripped of its fingerprint as older runs'."""
    from csd_exp.run import run

    cfg = compose_config([*SMALL_EXACT, *FAST], tmp_path)
    run(cfg)
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # our own files load safely
    checkpoint.pop("csd_exp", None)
    torch.save(checkpoint, path)
    with caplog.at_level(logging.WARNING):
        assert check_resume_checkpoint(path, run_fingerprint(OmegaConf.to_container(cfg, resolve=True))) == []
    assert "no config fingerprint" in caplog.text


class Opaque:
    pass


class RunsCode:
    """Pickles as a call of os.system: what a weights-only load exists to refuse."""

    def __reduce__(self):
        return (os.system, ("true",))


def _write_bad(folder: Path, kind: str) -> Path:
    path = folder / "step99.ckpt"
    good = (folder / "last.ckpt").read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "garbage":
        path.write_bytes(random.Random(0).randbytes(512))  # seeded: never a pickle header
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "object":
        torch.save({"state_dict": {}, "extra": Opaque()}, path)
    elif kind == "code":
        torch.save({"state_dict": {}, "extra": RunsCode()}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}, "extra": Opaque()}))
    elif kind == "list":
        torch.save([1, 2], path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("truncated", "corrupt or truncated"),
        ("garbage", "corrupt or truncated"),
        ("text", "corrupt or truncated"),
        ("object", "not a weights-only checkpoint: it holds a Python object \\(test_checkpoints.Opaque\\)"),
        ("code", "not a weights-only checkpoint: it holds a Python object \\(posix.system\\)"),
        ("pickle", "not a weights-only checkpoint: it holds a Python object \\(a plain pickle"),
        ("list", "not a Lightning checkpoint"),
    ],
)
def test_a_broken_checkpoint_is_a_clear_value_error(kind, message, sds_checkpoint, sds_fingerprint):
    path = _write_bad(sds_checkpoint.parent, kind)
    with pytest.raises(ValueError, match=message) as refused:
        check_resume_checkpoint(path, sds_fingerprint)
    assert f"ckpt_path={path}" in str(refused.value)
    if kind != "list":
        assert str(sds_checkpoint) in str(refused.value), "the message should name a checkpoint to use instead"


def test_a_missing_checkpoint_names_ckpt_path(tmp_path, sds_fingerprint):
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*does not exist"):
        check_resume_checkpoint(tmp_path / "nope.ckpt", sds_fingerprint)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        check_resume_checkpoint(tmp_path, sds_fingerprint)
    assert check_resume_checkpoint(None, sds_fingerprint) == []
