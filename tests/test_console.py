"""What a run prints: a few lines that say what runs, its progress, its metrics and where its outputs are;
progress lines at every tenth of the run and every 30 s where output is not a terminal; one short note per
skipped metric, once per sweep."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from framework_support import run_cli

TINY = ["experiment=panorama_exact_cpu", "data.short_side=8", "task.window_size=8", "task.window_stride=4"]
PROGRESS = re.compile(r"step (\d+)/(\d+) \| loss \S+ \| it/s \S+ \| ETA (?:\d+:)?\d+:\d\d$")
NOISE = ("GPU available", "TPU available", "Tip:", "litlogger", "srun", "FLOPs", "Total params", "Epoch", "anonymous")


@pytest.fixture(scope="module")
def ordinary_run(tmp_path_factory):
    """A 300-step run as a user starts it (W&B offline, default metrics), stdout and stderr not a terminal;
    no CLIP / LPIPS weights (empty caches). ``every_s`` is raised so that only the tenths print on a slow
    machine (the 30 s cadence is tested with a clock below)."""
    root = tmp_path_factory.mktemp("ordinary")
    caches = {"HF_HOME": str(root / "hf_home"), "TORCH_HOME": str(root / "torch_home")}
    result = run_cli(
        [*TINY, "trainer.max_steps=300", "callbacks.progress.every_s=3600", f"hydra.run.dir={root / 'run'}"],
        env={**caches, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, root / "run"


def test_an_ordinary_run_prints_a_few_lines_that_say_what_runs_and_where(ordinary_run):
    result, folder = ordinary_run
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 25, "\n".join(lines)
    text = "\n".join(lines)
    header = next(line for line in lines if "csd-exp: task panorama" in line)
    for part in ("method csd_edit", "model exact in float32", "· cpu ·", "300 steps", "seed 0"):
        assert part in header, header
    assert f"run folder: {folder}" in text
    assert re.search(r"metrics: fidelity/psnr \d", text) and f"outputs in {folder}: edited.png" in text
    assert not [line for line in lines if any(noise in line for noise in NOISE)], text
    # The config tree is saved, not printed (extras.print_config=true prints it).
    assert "window_size: 8" in (folder / "config_tree.log").read_text() and "└──" not in text
    # Each skipped metric: one line, naming the key that fixes it and the docs section with the rest.
    notes = [line for line in lines if "skipped:" in line and ("CLIP" in line or "LPIPS" in line)]
    assert len(notes) == 2 and all('docs/metrics.md "Missing metric weights"' in note for note in notes), notes
    assert "metrics.clip.pretrained=PATH" in notes[0] and all(len(note) < 300 for note in notes)


def test_progress_lines_at_every_tenth_of_the_run_in_its_log(ordinary_run):
    result, folder = ordinary_run
    for log_text in (result.stdout, (folder / "cli.log").read_text()):
        found = [PROGRESS.search(line) for line in log_text.splitlines() if "step " in line and " | " in line]
        assert all(found), [line for line in log_text.splitlines() if "step " in line]
        assert [int(match.group(1)) for match in found] == list(range(30, 301, 30))
        assert {match.group(2) for match in found} == {"300"}


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake_run(total: int, start: int = 0):
    trainer = SimpleNamespace(
        global_step=start, max_steps=total, num_training_batches=total, progress_bar_metrics={"loss": 0.5}
    )
    return trainer, SimpleNamespace(automatic_optimization=True, completed_steps=start)


def test_a_slow_run_also_prints_every_30_seconds(caplog):
    from csd_exp.infra.progress import StepLines

    clock = _Clock()
    bar = StepLines(every_fraction=0.1, every_s=30.0, clock=clock)
    trainer, module = _fake_run(100)
    caplog.set_level(logging.INFO, logger="csd_exp.infra.progress")
    bar.on_train_start(trainer, module)
    for _ in range(100):  # 7 s a step: a tenth (10 steps) takes 70 s, so 30 s pass twice in each tenth
        clock.now += 7.0
        trainer.global_step += 1
        module.completed_steps += 1
        bar.on_train_batch_end(trainer, module, None, None, 0)
    lines = [record.getMessage() for record in caplog.records]
    steps = [int(PROGRESS.search(line).group(1)) for line in lines]
    # A line after 5 steps (35 s), then the tenth at 10, then 30 s after it (15), ...
    assert steps[:6] == [5, 10, 15, 20, 25, 30]
    assert steps[-1] == 100 and set(range(10, 101, 10)) <= set(steps)
    gaps = [later - earlier for earlier, later in zip(steps, steps[1:], strict=False)]
    assert max(gaps) * 7.0 < 30.0 + 7.0  # never more than 30 s (plus the step in flight) without a line
    assert lines[1] == "step 10/100 | loss 0.5 | it/s 0.143 | ETA 10:30"  # 5 steps in 35 s; 90 to go


def test_a_fast_run_prints_only_the_tenths_and_a_resumed_one_counts_on(caplog):
    from csd_exp.infra.progress import StepLines

    clock = _Clock()
    caplog.set_level(logging.INFO, logger="csd_exp.infra.progress")
    bar = StepLines(clock=clock)
    trainer, module = _fake_run(300, start=150)  # resumed at step 150 of 300
    bar.on_train_start(trainer, module)
    for _ in range(150):
        clock.now += 0.1
        trainer.global_step += 1
        module.completed_steps += 1
        bar.on_train_batch_end(trainer, module, None, None, 0)
    steps = [int(PROGRESS.search(record.getMessage()).group(1)) for record in caplog.records]
    assert steps == [180, 210, 240, 270, 300]
    assert StepLines().marks(7) == [1, 2, 3, 4, 5, 6, 7] and StepLines().marks(20) == list(range(2, 21, 2))


def test_progress_settings_are_checked():
    from csd_exp.infra.progress import StepBar, StepLines, progress_callback

    with pytest.raises(ValueError, match="style='fancy'"):
        progress_callback(style="fancy")
    with pytest.raises(ValueError, match="every_fraction"):
        progress_callback(style="lines", every_fraction=0)
    with pytest.raises(ValueError, match="every_s"):
        progress_callback(style="bar", every_s=0)
    assert isinstance(progress_callback(style="lines"), StepLines)
    assert isinstance(progress_callback(style="bar"), StepBar)


def test_the_terminal_bar_counts_steps_to_the_real_total(tmp_path):
    """Four batches an epoch, 10 steps in all: the bar reads "step", total 10, not "Epoch 0/-2" of 4."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from csd_exp.infra.progress import StepBar

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            loss = ((self.weight - 1.0) ** 2).sum()
            self.log("loss", loss, prog_bar=True)
            return loss

        def train_dataloader(self):
            return DataLoader(list(range(4)), batch_size=None)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar = StepBar()
    trainer = pl.Trainer(
        max_steps=10,
        max_epochs=-1,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(Tiny())
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.description, task.total, task.completed) == ("step", 10, 10)
    assert "v_num" not in bar.get_metrics(trainer, trainer.lightning_module)


def test_lightning_inventory_lines_are_dropped_and_its_warnings_kept(caplog):
    from csd_exp.infra.console import quiet_libraries

    quiet_libraries(single_process=True)
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    caplog.set_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero")
    lightning.info("GPU available: False, used: False")
    lightning.info("💡 Tip: For seamless cloud logging ...")
    lightning.info("Restoring states from the checkpoint path at last.ckpt")
    lightning.warning("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    assert [record.getMessage()[:20] for record in caplog.records] == ["Restoring states fro", "GPU available but no"]


def test_the_header_and_the_metrics_lines():
    from csd_exp.infra.console import metrics_lines, run_header

    config = {
        "method": "sds",
        "seed": 3,
        "model": {"_target_": "csd_exp.priors.StableDiffusionPrior", "torch_dtype": "auto"},
        "task": {"_target_": "csd_exp.tasks.PanoramaTask"},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 50},
    }
    header, folder = run_header(config, "out/run", {"task": "panorama", "model": "sd15"})
    assert header == "csd-exp: task panorama · method sds · model sd15 in float32 (auto) · cpu · 50 steps · seed 3"
    assert folder == "run folder: out/run"
    lines = metrics_lines(
        {"fidelity/psnr": 21.123456, "consistency/mode_fraction/a": 0.25, "consistency/mode_fraction/b": 0.75}
    )
    assert lines == ["metrics: fidelity/psnr 21.12 · consistency/mode_fraction (a 0.25, b 0.75)"]
    assert metrics_lines({}) == ["metrics: none"]


def test_a_skipped_metric_is_noted_once_per_sweep(tmp_path, monkeypatch, caplog):
    from csd_exp.metrics import load_lpips, notes

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    caplog.set_level(logging.WARNING)
    sweep = tmp_path / "sweep"
    with notes.once_per_sweep(sweep):
        assert load_lpips("alex") is None and load_lpips("alex") is None  # two jobs of one process
        monkeypatch.setattr(notes, "_said", set())  # a job in another process (joblib, SLURM) of the same sweep
        assert load_lpips("alex") is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "alexnet" in warnings[0] and "docs/metrics.md" in warnings[0]
    assert load_lpips("alex") is None  # outside a sweep (a single run, a library call): said every time
    with notes.once_per_sweep(tmp_path / "another_sweep"):
        assert load_lpips("alex") is None  # another sweep says it again
    assert len([record for record in caplog.records if record.levelno >= logging.WARNING]) == 3


def test_a_sweep_notes_each_skipped_metric_once(tmp_path):
    result = run_cli(
        ["-m", *TINY, "trainer.max_steps=1", "logger=csv", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        env={"HF_HOME": str(tmp_path / "hf_home"), "TORCH_HOME": str(tmp_path / "torch_home"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert len([line for line in lines if "CLIP metrics skipped" in line]) == 1
    assert len([line for line in lines if "LPIPS metric skipped" in line]) == 1
    assert len([line for line in lines if line.count("csd-exp: task panorama")]) == 2  # one header a job
