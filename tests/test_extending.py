"""Extending csd-exp from outside the package: a new task, a new data source, a new guidance baseline, a new
sampling task, a new view task and a new 3D editor.

A new task is first-class with its module, its task YAML and its experiment YAML, and nothing else: the
files are written into a temporary folder (as a user's would be) and run through the CLI with
``--config-dir``; no switch, schema entry, size table or evaluator edit is needed for the run to step,
snapshot, log ``val/`` curves, write its outputs and report metrics in ``summary.json``. A new data
source is one class named by ``data._target_``; a new guidance method is one ``Baseline`` subclass and one
``conf/guidance`` YAML naming it by ``guidance.baseline._target_``. The compose-time check knows none of these
classes by name: it reads their signatures and what they declare from their source (csd_exp.schema).
"""

from __future__ import annotations

import copy
import json
import os
import textwrap

import pytest
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
    def __init__(self, prior, guidance, optimizer, *, inputs, image, size):
        super().__init__(prior, guidance, optimizer, inputs=inputs)
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


# -------------------------------------------------------------- a sampling task, a view task, a 3D editor
# Each class says what the compose-time check needs to know about it (csd_exp.schema reads it from the source,
# never importing it): a sampling task takes no distillation guidance (``uses_guidance = False``, here through
# ReverseSamplingMixin), a view task passes its renders to the kernel (``passes_renders = True``), an editor
# that samples says so too; its settings are checked from its signature's annotations.
SAMPLING_MODULE = '''
"""A user's sampling baseline: every frame drawn from one shared initial noise (one reverse step per step)."""
from typing import Annotated

import torch
from pydantic import Field

from csd_exp.tasks.base import step_generator
from csd_exp.tasks.sampling import ReverseSamplingMixin
from csd_exp.tasks.video.frames import VideoTask


class SharedNoiseSampling(ReverseSamplingMixin, VideoTask):
    def __init__(self, prior, guidance=None, optimizer=None, lr_scheduler=None, *,
                 steps: Annotated[int, Field(ge=1)], scale: float, **kwargs):
        super().__init__(prior, guidance, optimizer, lr_scheduler, **kwargs)
        self.latents.requires_grad_(False)
        self.setup_reverse_process(steps, 0.0, scale, scale)

    @torch.no_grad()
    def training_step(self, batch, batch_idx):
        index = int(batch)
        if index == 0 or self.state is None:
            shared = torch.randn((1, *self.latents.shape[1:]), generator=step_generator(self.seed, 0, "shared"))
            self.state = shared.expand_as(self.latents).clone().to(self.latents.device)
        cond = self.conditioning(self.image_condition)
        eps = self.prior.predict_noise(self.state, self.timesteps[index], cond).target.float()
        if self.reverse_step(index, eps):
            self.latents.data.copy_(self.state)

    def show_estimate(self, clean):
        self.latents.data.copy_(clean)
'''

SAMPLING_YAML = """
# @package _global_
defaults:
  - override /guidance: null   # no distillation (guidance.guidance_scale / image_guidance_scale only)
  - override /kernel: none
  - override /schedule: none
task:
  _target_: shared_noise.SharedNoiseSampling
  data: ${data}
  frame_size: 8
  steps: 3
  scale: ${guidance.guidance_scale}
data:
  _target_: csd_exp.data.ClipSource
  path: null
  max_frames: 3
run_name: shared_noise
trainer:
  max_steps: -1
  max_epochs: 1
  val_check_interval: 1
"""


def _write(tmp_path, module_name, module, yamls):
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / f"{module_name}.py").write_text(textwrap.dedent(module))
    for group, text in yamls.items():
        (tmp_path / "conf" / group).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / group).write_text(textwrap.dedent(text))


def test_a_new_sampling_task_takes_no_guidance_and_runs(tmp_path):
    _write(tmp_path, "shared_noise", SAMPLING_MODULE, {"task/shared_noise.yaml": SAMPLING_YAML})
    common = [f"--config-dir={tmp_path / 'conf'}", "task=shared_noise", "model=exact", "~callbacks.progress"]
    refused = _run_cli(tmp_path, tmp_path / "code", *common, "task.steps=0", f"paths.output_dir={tmp_path / 'bad'}")
    assert refused.returncode != 0 and "task.steps=0 is not allowed" in refused.stderr, refused.stderr[-2000:]
    distils = _run_cli(tmp_path, tmp_path / "code", *common, "guidance=csd_edit", f"paths.output_dir={tmp_path / 'x'}")
    assert "this sampling baseline uses only the guidance scales" in distils.stderr, distils.stderr[-2000:]
    run_dir = tmp_path / "run"
    result = _run_cli(tmp_path, tmp_path / "code", *common, f"paths.output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert len(list((run_dir / "edited_frames").iterdir())) == 3


VIEW_TASK_MODULE = '''
"""A user's view task: side-by-side crops of an image are the particles, and their decoded images (the views
this task "renders") go to the kernel, so an image kernel (kernel=feature_rbf) compares them."""
import torch

from csd_exp.data.images import load_image, save_image
from csd_exp.data.resample import resize_frames
from csd_exp.distill import Particles
from csd_exp.tasks.base import DistillationTask
from csd_exp.tasks.results import TaskResult


class CropViewsTask(DistillationTask):
    passes_renders = True

    def __init__(self, prior, guidance, optimizer, *, inputs, image, size: int, views: int):
        super().__init__(prior, guidance, optimizer, inputs=inputs)
        full = resize_frames(load_image(image), size, size * views)
        self.source = torch.stack([full[:, :, i * size:(i + 1) * size] for i in range(views)])
        scale = prior.latent_scale_factor
        self.latents = torch.nn.Parameter(torch.zeros(views, prior.latent_channels, size // scale, size // scale))

    def configure_particles(self, device):
        self.source_latents, self.image_condition = self.encode_sources(self.source.to(device))
        self.latents.data.copy_(self.source_latents)

    def distillation_step(self, step):
        renders = self.prior.decode(self.latents)
        particles = Particles(self.latents, source_latents=self.source_latents, condition=self.image_condition,
                              kernel_inputs=renders)
        return self.guidance(self.prior, particles, prompt=self.prompt, step=step, seed=self.seed)

    def edited(self):
        with torch.no_grad():
            return self.prior.decode(self.latents.detach()).float().clamp(0, 1).cpu()

    def current_images(self):
        return {"edited": self.edited()}

    def current_pair(self):
        return self.edited(), self.source

    def final_result(self):
        return TaskResult(edited=self.edited(), source=self.source, media={"edited": self.edited()})

    def write_outputs(self, output_dir, result):
        for index, view in enumerate(result.edited):
            save_image(view, output_dir / f"view_{index}.png")
        return {}
'''

VIEW_TASK_YAML = """
# @package _global_
task:
  _target_: crop_views.CropViewsTask
  image: sample:rocket
  size: 16
  views: 3
  optimizer:
    _target_: torch.optim.SGD
    _partial_: true
    lr: 2.0
trainer:
  max_steps: 2
  val_check_interval: 1
"""


def test_a_new_view_task_passes_its_renders_to_an_image_kernel(tmp_path):
    _write(tmp_path, "crop_views", VIEW_TASK_MODULE, {"task/crop_views.yaml": VIEW_TASK_YAML})
    run_dir = tmp_path / "run"
    result = _run_cli(
        tmp_path,
        tmp_path / "code",
        f"--config-dir={tmp_path / 'conf'}",
        "task=crop_views",
        "model=exact",
        "guidance=csd_edit",
        "kernel=feature_rbf",
        "kernel.image_size=16",
        "~callbacks.progress",
        f"paths.output_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["config"]["guidance"]["kernel"]["_target_"] == "csd_exp.distill.FeatureRBFKernel"
    assert sorted(p.name for p in run_dir.glob("view_*.png")) == ["view_0.png", "view_1.png", "view_2.png"]


EDITOR_MODULE = '''
"""A user's 3D editor: every round replaces the chosen training views by their grey version (no prior)."""
from typing import Annotated

from pydantic import Field

from csd_exp.tasks.scene3d.editors import DatasetEditor


class DesaturateEditor(DatasetEditor):
    uses_guidance = False  # edits without the task's guidance: the run's guidance group holds no method

    def __init__(self, every: int, views: int, amount: Annotated[float, Field(ge=0, le=1)] = 1.0):
        super().__init__(every, views)
        self.amount = float(amount)

    def edit_round(self, scene, views, step, round_index):
        _, originals = scene.edit_inputs(views)
        grey = originals.mean(dim=1, keepdim=True).expand_as(originals)
        for view, image in zip(views, (1 - self.amount) * originals + self.amount * grey):
            scene.images.replace(view, image.cpu())
        return {"views": len(views)}
'''

EDITOR_YAML = """
# @package task.editor
_target_: desaturate_editor.DesaturateEditor
every: 1
views: 1
amount: 1.0
"""

EDITOR_EXPERIMENT_YAML = """
# @package _global_
defaults:
  - override /task: scene3d
  - override /editor: desaturate
  - override /model: exact
  - override /guidance: null   # no distillation (guidance.guidance_scale / image_guidance_scale only)
  - override /kernel: none
  - override /schedule: none
data:
  path: null
  image_size: 8
  max_views: 8
task:
  pretrain_steps: 1
  views_per_step: 2
  turntable_views: 2
  field:
    resolution: 16
    num_samples: 16
trainer:
  max_steps: 3
  val_check_interval: 1
"""


def test_a_new_3d_editor_is_one_class_and_one_yaml(tmp_path):
    _write(
        tmp_path,
        "desaturate_editor",
        EDITOR_MODULE,
        {"editor/desaturate.yaml": EDITOR_YAML, "experiment/desaturate_cpu.yaml": EDITOR_EXPERIMENT_YAML},
    )
    common = [f"--config-dir={tmp_path / 'conf'}", "experiment=desaturate_cpu", "~callbacks.progress"]
    refused = _run_cli(
        tmp_path, tmp_path / "code", *common, "task.editor.amount=2", f"paths.output_dir={tmp_path / 'x'}"
    )
    assert refused.returncode != 0 and "task.editor.amount=2 is not allowed" in refused.stderr, refused.stderr[-2000:]
    run_dir = tmp_path / "run"
    result = _run_cli(tmp_path, tmp_path / "code", *common, f"paths.output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["config"]["task"]["editor"]["_target_"] == "desaturate_editor.DesaturateEditor"


# ----------------------------------------------- what a class declares, not its name (issue 21)
# The method labels and the compose-time rules recognise a kernel, a baseline, a guidance, a data source and a
# region task by what the class declares (read from its source, never imported), so these classes, written
# outside the package, are labelled and checked exactly as ours are.
PARTS_MODULE = '''
"""A user's guidance parts and inputs: none subclasses ours, each declares what the checks need."""
from typing import ClassVar

import torch

from csd_exp.distill import Baseline, KernelOutput


class MirrorBranch(Baseline):
    name = "source_branch"  # Δ against a source branch noised with the same t and ε: CSD-Edit's residual
    uses_source = True

    def predict(self, prior, noisy_latents, noise, t, cond, source_latents):
        source = prior.add_noise(source_latents, noise, t)
        prediction = prior.predict_noise(noisy_latents, t, cond, source_noisy_latents=source)
        return prediction.target.float(), prediction.source.float()


class LonelyKernel:
    on_images = False
    kernel_family = "identity"  # K = I, R = 0

    def __init__(self, normalize_by_count: bool = False):
        self.normalize_by_count = normalize_by_count

    def __call__(self, x):
        count = x.shape[0]
        return KernelOutput(torch.eye(count), torch.zeros_like(x), torch.tensor(float("inf")), float(count), True)


class KernelGuidance:
    def __init__(self, kernel, baseline: str = "random_noise", guidance_scale: float = 7.5):
        self.kernel, self.baseline, self.guidance_scale = kernel, baseline, guidance_scale


class OptionalKernelGuidance:
    def __init__(self, kernel=None, baseline: str = "random_noise"):
        self.kernel, self.baseline = kernel, baseline


class PhotoSource:
    reads: ClassVar[str] = "image"  # data.path: an image file (or a bundled sample:<name>)

    def __init__(self, path: str | None = None, max_image_pixels: int | None = None):
        self.path = path


class StripesTask:
    def __init__(self, prior, guidance, optimizer, *, inputs, data, regions=None):
        self.regions = regions
'''


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """``user_parts``, importable from a folder on sys.path (as a user's PYTHONPATH puts it); the reader's caches
    cleared so it finds the module, and the module never imported."""
    import sys

    from csd_exp import ast_signatures as signatures
    from csd_exp import ast_source as source

    caches = (source.module_file, source.load, source.find, signatures.read_signature)
    (tmp_path / "user_parts.py").write_text(textwrap.dedent(PARTS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    for cache in caches:
        cache.cache_clear()
    yield "user_parts"
    assert "user_parts" not in sys.modules, "the checks must read the classes' source, never import it"
    for cache in caches:
        cache.cache_clear()


@pytest.fixture(scope="module")
def plain_config(tmp_path_factory):
    """The default composed config (panorama, csd_edit on the exact prior) as plain containers."""
    from framework_support import compose_config
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config([], tmp_path_factory.mktemp("run")), resolve=True)


def _with_parts(plain_config, baseline, kernel, official_scaling=False):
    cfg = copy.deepcopy(plain_config)
    cfg["kernel"] = cfg["guidance"]["kernel"] = kernel
    cfg["guidance"].update(baseline=baseline, official_scaling=official_scaling)
    return cfg


def _judged(cfg) -> tuple[str, str, str | None]:
    """(the method label, whether official_scaling is allowed, the kernel recorded beside the label)."""
    from csd_exp.methods import derive_label, kernel_name
    from csd_exp.schema import ConfigError, validate_config

    official = copy.deepcopy(cfg)
    official["guidance"]["official_scaling"] = True
    try:
        validate_config(official)
        allowed = "allowed"
    except ConfigError as error:
        assert "guidance.official_scaling=true" in str(error)
        allowed = "refused"
    validate_config(cfg)
    return derive_label(cfg), allowed, kernel_name(cfg["kernel"])


@pytest.mark.parametrize("baseline", ["source_branch", "random_noise"])
@pytest.mark.parametrize("normalize_by_count", [False, True])
def test_a_kernel_and_a_baseline_from_outside_are_labelled_and_checked_as_ours(
    parts, plain_config, baseline, normalize_by_count
):
    ours = {"source_branch": {"_target_": "csd_exp.distill.baselines.SourceBranch"}, "random_noise": "random_noise"}
    theirs = {"source_branch": {"_target_": f"{parts}.MirrorBranch"}, "random_noise": "random_noise"}
    our_kernel = {"_target_": "csd_exp.distill.IdentityKernel", "normalize_by_count": normalize_by_count}
    their_kernel = {"_target_": f"{parts}.LonelyKernel", "normalize_by_count": normalize_by_count}
    expected = {
        ("source_branch", False): ("dds", "refused", "identity"),
        ("source_branch", True): ("csd_edit_no_svgd", "allowed", "identity_mean"),
        ("random_noise", False): ("sds", "refused", "identity"),
        ("random_noise", True): ("sds", "refused", "identity_mean"),
    }[baseline, normalize_by_count]
    assert _judged(_with_parts(plain_config, ours[baseline], our_kernel)) == expected
    assert _judged(_with_parts(plain_config, theirs[baseline], their_kernel)) == expected
    assert _judged(_with_parts(plain_config, theirs[baseline], our_kernel)) == expected
    assert _judged(_with_parts(plain_config, ours[baseline], their_kernel)) == expected


def test_a_guidance_that_takes_a_kernel_needs_one_whatever_its_class(parts, plain_config):
    """The "a kernel is always chosen" rule reads the guidance's constructor (``kernel`` without a default)."""
    from csd_exp.schema import ConfigError, validate_config

    for target in ("csd_exp.distill.Guidance", f"{parts}.KernelGuidance"):
        cfg = copy.deepcopy(plain_config)
        cfg["guidance"] = {"_target_": target, "baseline": "random_noise", "guidance_scale": 7.5}
        with pytest.raises(ConfigError, match="couples its particles through a kernel but none is chosen"):
            validate_config(cfg)
    cfg = copy.deepcopy(plain_config)
    cfg["guidance"] = {"_target_": f"{parts}.OptionalKernelGuidance", "baseline": "random_noise"}
    validate_config(cfg)  # kernel=None is the class's own default: no kernel needed


def test_a_region_task_and_an_image_source_from_outside_get_their_inputs_checked(parts, tmp_path):
    """``task.regions`` is checked for any task whose constructor takes ``regions``, ``data.path`` for any
    source whose class declares ``reads = "image"``, before torch."""
    from csd_exp.schema import ConfigError
    from csd_exp.schema.inputs import check_inputs

    outside = {"regions": [{"box": [0, 0.6, 1, 0.5]}]}  # leaves the 200x640 px sample on the right
    for task in ("csd_exp.tasks.PanoramaRegionTask", f"{parts}.StripesTask"):
        for source in ("csd_exp.data.ImageSource", f"{parts}.PhotoSource"):
            cfg = {"data": {"_target_": source, "path": "sample:rocket"}, "task": {"_target_": task, **outside}}
            with pytest.raises(ConfigError, match=r"task\.regions\[0\]\.box .* outside the 200x640 px"):
                check_inputs(cfg)
            cfg["task"]["regions"] = [{"box": [0, 0, 1, 0.5]}]
            check_inputs(cfg)
    for source in ("csd_exp.data.ImageSource", f"{parts}.PhotoSource"):
        with pytest.raises(ConfigError, match="no such image file"):
            check_inputs({"data": {"_target_": source, "path": str(tmp_path / "nope.png")}})
    check_inputs({"data": {"_target_": f"{parts}.StripesTask", "path": str(tmp_path / "nope.png")}})  # reads nothing


def test_our_classes_declare_the_facts_the_labels_read():
    """The short names the presets use (``make_baseline``) are the names the classes declare to the labels."""
    from csd_exp.distill import IdentityKernel, RBFKernel, ReleasedCoupling
    from csd_exp.distill.baselines import BASELINES

    assert {name: cls.name for name, cls in BASELINES.items()} == {name: name for name in BASELINES}
    assert IdentityKernel.kernel_family == "identity" and ReleasedCoupling.kernel_family == "released_coupling"
    assert not hasattr(RBFKernel, "kernel_family")  # the default: a kernel that couples
