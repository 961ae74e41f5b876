"""Extending csd-exp from outside the package: a new task, a new data source, a new guidance baseline.

A new task is first-class with its module, its task YAML and its experiment YAML, and nothing else: the
files are written into a temporary folder (as a user's would be) and run through the CLI with
``--config-dir``; no switch, schema entry, size table or evaluator edit is needed for the run to step,
snapshot, log ``val/`` curves, write its outputs and report metrics in ``summary.json``. A new data
source is one class named by ``data._target_``; a new guidance method is one ``Baseline`` subclass and one
``conf/guidance`` YAML naming it by ``guidance.baseline._target_``.
"""

from __future__ import annotations

import json
import os
import textwrap

from framework_support import run_cli

TASK_MODULE = '''
"""Whole-image CSD-Edit: the image is the only particle (N = 1, so CSD is SDS-Edit)."""
import torch

from csd_exp.data.images import load_image, save_image
from csd_exp.data.resample import resize_frames
from csd_exp.distill import Particles
from csd_exp.tasks.base import DistillationTask
from csd_exp.tasks.results import TaskResult


class WholeImageTask(DistillationTask):
    def __init__(self, prior, guidance, optimizer, *, prompt, image, size, seed=0, source_prompt="", max_steps=2):
        super().__init__(prior, guidance, optimizer, prompt=prompt, seed=seed, source_prompt=source_prompt,
                         max_steps=max_steps)
        self.source = resize_frames(load_image(image), size, size)
        scale = prior.latent_scale_factor
        self.latents = torch.nn.Parameter(torch.zeros(1, prior.latent_channels, size // scale, size // scale))

    def configure_particles(self, device):
        self.source_latents, self.image_condition = self.encode_sources(self.source[None].to(device))
        self.latents.data.copy_(self.source_latents)

    def distillation_step(self, step):
        particles = Particles(self.latents, source_latents=self.source_latents, condition=self.image_condition)
        return self.guidance(self.prior, particles, prompt=self.prompt, step=step, seed=self.seed)

    def edited(self):
        with torch.no_grad():
            return self.prior.decode(self.latents.detach()).float().clamp(0, 1).cpu()

    def current_images(self):
        return {"edited": self.edited()}

    def current_pair(self):
        return self.edited(), self.source[None]

    def final_result(self):
        return TaskResult(edited=self.edited(), source=self.source[None], media={"edited": self.edited()})

    def write_outputs(self, output_dir, result):
        save_image(result.edited[0], output_dir / "edited.png")
        return {}
'''

TASK_YAML = """
# @package _global_
task:
  _target_: whole_image_task.WholeImageTask
  prompt: ${prompt}
  source_prompt: ${source_prompt}
  seed: ${seed}
  max_steps: ${trainer.max_steps}
  image: sample:rocket
  size: 32
  optimizer:
    _target_: torch.optim.SGD
    _partial_: true
    lr: 2.0
"""

EXPERIMENT_YAML = """
# @package _global_
defaults:
  - override /task: whole_image
  - override /model: exact
  - override /guidance: csd_edit
trainer:
  max_steps: 3
  val_check_interval: 1
"""


def _run_cli(tmp_path, code_dir, *overrides):
    pythonpath = os.pathsep.join([str(code_dir), os.environ.get("PYTHONPATH", "")])
    return run_cli([*overrides, "logger=csv"], cwd=tmp_path, env={"PYTHONPATH": pythonpath}, timeout=600)


def test_a_new_task_needs_its_module_and_two_yamls(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "whole_image_task.py").write_text(textwrap.dedent(TASK_MODULE))
    for group, text in (
        ("task/whole_image.yaml", TASK_YAML),
        ("experiment/whole_image_exact_cpu.yaml", EXPERIMENT_YAML),
    ):
        (tmp_path / "conf" / group).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / group).write_text(textwrap.dedent(text))
    run_dir = tmp_path / "run"
    result = _run_cli(
        tmp_path,
        tmp_path / "code",
        f"--config-dir={tmp_path / 'conf'}",
        "experiment=whole_image_exact_cpu",
        "~callbacks.progress",
        f"paths.output_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert {"fidelity/psnr", "fidelity/ssim"} <= set(summary["metrics"])
    assert "consistency/mode_agreement" not in summary["metrics"]  # the task reports no modes: none invented
    assert (run_dir / "edited.png").is_file() and len(list((run_dir / "snapshots").glob("*.png"))) == 3
    (metrics_csv,) = run_dir.rglob("metrics.csv")
    assert "val/fidelity/psnr" in metrics_csv.read_text().splitlines()[0]
    assert summary["config"]["run_name"].startswith("whole_image_")


CLIP_SOURCE = '''
"""A user's clip source: a colour ramp that brightens frame by frame (no file involved)."""
import torch

from csd_exp.data import LoadedClip


class RampClip:
    def __init__(self, num_frames):
        self.num_frames = num_frames

    def load(self, frame_size):
        height, width = frame_size
        ramp = torch.linspace(0.2, 0.8, width).expand(3, height, width)
        frames = torch.stack([(ramp + 0.02 * i).clamp(0, 1) for i in range(self.num_frames)])
        return LoadedClip(frames, (height, width), 5.0, None)
'''


def test_a_new_data_source_is_one_class_named_by_data_target(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "ramp_clip.py").write_text(textwrap.dedent(CLIP_SOURCE))
    run_dir = tmp_path / "run"
    result = _run_cli(
        tmp_path,
        tmp_path / "code",
        "experiment=video_exact_cpu",
        "debug=smoke",
        "~data",
        "+data._target_=ramp_clip.RampClip",
        "+data.num_frames=3",
        f"paths.output_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["data"] == {"_target_": "ramp_clip.RampClip", "num_frames": 3}
    assert len(list((run_dir / "edited_frames").iterdir())) == 3


BASELINE_MODULE = '''
"""A user's guidance baseline: CSD-Edit's source branch that notes each step's timestep in a file."""
from pathlib import Path

from csd_exp.distill import SourceBranch


class NotedSourceBranch(SourceBranch):
    def __init__(self, notes):
        self.notes = notes

    def predict(self, prior, noisy_latents, noise, t, cond, source_latents):
        with Path(self.notes).open("a") as notes:
            notes.write(f"{t} {len(noisy_latents)}\\n")
        return super().predict(prior, noisy_latents, noise, t, cond, source_latents)
'''

GUIDANCE_YAML = """
# A user's guidance method: the RBF kernel with a baseline class of their own.
defaults:
  - override /kernel@_global_.kernel: rbf
  - _self_
_target_: csd_exp.distill.Guidance
baseline:
  _target_: noted_baseline.NotedSourceBranch
  notes: ???
kernel: ${kernel}
schedule: ${schedule}
guidance_scale: 1.5
image_guidance_scale: 1.5
"""


def test_a_new_guidance_baseline_is_one_class_and_one_yaml(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "noted_baseline.py").write_text(textwrap.dedent(BASELINE_MODULE))
    (tmp_path / "conf" / "guidance").mkdir(parents=True)
    (tmp_path / "conf" / "guidance" / "noted_csd_edit.yaml").write_text(textwrap.dedent(GUIDANCE_YAML))
    run_dir, notes = tmp_path / "run", tmp_path / "notes.txt"
    result = _run_cli(
        tmp_path,
        tmp_path / "code",
        f"--config-dir={tmp_path / 'conf'}",
        "experiment=video_exact_cpu",
        "debug=smoke",
        "trainer.max_steps=3",
        "guidance=noted_csd_edit",
        f"guidance.baseline.notes={notes}",
        f"paths.output_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["config"]["guidance"]["baseline"]["_target_"] == "noted_baseline.NotedSourceBranch"
    steps = [line.split() for line in notes.read_text().splitlines()]
    assert len(steps) == 3 and all(int(count) == summary["config"]["data"]["max_frames"] for _, count in steps)
