"""The task constructors and data sources state their constraints once, on their signatures: ``@checked`` refuses
a Python caller's bad argument from the annotation the compose-time check reads (before torch loads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from framework_support import compose_check_verdicts

from csd_exp.ast_signatures import read_signature
from csd_exp.data.sources import ClipSource, ImageSource, SceneSource
from csd_exp.schema import ConfigError, check_value
from csd_exp.tasks.panorama.region import PanoramaRegionTask
from csd_exp.tasks.panorama.windows import PanoramaTask, WindowGrid
from csd_exp.tasks.scene3d.editing import Scene3DTask
from csd_exp.tasks.scene3d.editors import IN2NEditor
from csd_exp.tasks.video.frames import VideoTask
from csd_exp.tasks.video.pix2video import VideoPix2VideoTask

REPO_ROOT = Path(__file__).resolve().parents[1]
PIX2VIDEO = "csd_exp.tasks.video.pix2video.VideoPix2VideoTask"
# The arguments a task needs besides the one under test: the check runs before the constructor's body, so a bad
# value is refused before any of these is used.
TASK = {"prior": None, "guidance": None, "optimizer": None, "inputs": None, "data": None}
IN2N = {
    "every": 1,
    "views": 1,
    "diffusion_steps": 2,
    "noise_lower": 0.5,
    "noise_upper": 0.9,
    "sampler_eta": 0.0,
    "guidance_scale": 7.5,
    "image_guidance_scale": 1.5,
}

# (constructor, its _target_, parameter, a value to refuse, extra arguments)
CASES = [
    (PanoramaTask, "csd_exp.tasks.PanoramaTask", "window_stride", 0, TASK),
    (PanoramaTask, "csd_exp.tasks.PanoramaTask", "window_sampler", "corners", TASK),
    (PanoramaRegionTask, "csd_exp.tasks.PanoramaRegionTask", "window_size", 0, TASK),
    (PanoramaRegionTask, "csd_exp.tasks.PanoramaRegionTask", "canvas_size", [512, 0], TASK),
    (PanoramaRegionTask, "csd_exp.tasks.PanoramaRegionTask", "canvas_size", [512], TASK),
    (VideoTask, "csd_exp.tasks.VideoTask", "frames_per_step", 0, TASK),
    (VideoPix2VideoTask, PIX2VIDEO, "temporal_attention_frames", ["middle"], TASK),
    (VideoPix2VideoTask, PIX2VIDEO, "temporal_attention_frames", [], TASK),
    (Scene3DTask, "csd_exp.tasks.Scene3DTask", "views_per_step", 0, {**TASK, "editor": None, "field": None}),
    (Scene3DTask, "csd_exp.tasks.Scene3DTask", "turntable_views", 0, {**TASK, "editor": None, "field": None}),
    (IN2NEditor, "csd_exp.tasks.scene3d.editors.IN2NEditor", "noise_lower", 0.0, IN2N),
    (IN2NEditor, "csd_exp.tasks.scene3d.editors.IN2NEditor", "noise_upper", 1.5, IN2N),
    (ImageSource, "csd_exp.data.ImageSource", "max_image_pixels", 0, {}),
    (ImageSource, "csd_exp.data.ImageSource", "alpha_background", "pink", {}),
    (ClipSource, "csd_exp.data.ClipSource", "stride", 0, {}),
    (ClipSource, "csd_exp.data.ClipSource", "max_frames", 1, {}),
    (SceneSource, "csd_exp.data.SceneSource", "downscale", 0, {}),
]


@pytest.mark.parametrize("cls, target, parameter, bad, extra", CASES)
def test_python_callers_and_configs_get_the_same_verdict(cls, target, parameter, bad, extra):
    annotation = read_signature(target).parameters[parameter]  # what the compose-time check reads
    with pytest.raises(ConfigError, match=parameter):
        check_value(parameter, bad, annotation)
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: {parameter}=.* is not allowed"):
        cls(**{**extra, parameter: bad})


def test_the_rules_between_parameters_and_the_data_stay_code():
    with pytest.raises(ValueError, match="noise_lower <= task.editor.noise_upper"):
        IN2NEditor(**{**IN2N, "noise_lower": 0.9, "noise_upper": 0.5})
    with pytest.raises(ValueError, match=r"^WindowGrid: stride=0 is not allowed"):
        WindowGrid(8, 20, 8, 0)
    with pytest.raises(ValueError, match="do not tile"):
        WindowGrid(8, 20, 8, 5)
    assert len(WindowGrid(8, 20, 8, 4)) == 4
    assert ClipSource(path="sample:pan", max_frames=None).max_frames is None


# Values the task constructors used to refuse by hand (or not at all, where the signature said plain ``int``):
# the compose-time check now refuses them too, before torch is imported.
REFUSED = {
    "task.canvas_size=[512,0]": "task.canvas_size=[512, 0] is not allowed",
    "task.canvas_size=[512]": "task.canvas_size=[512] is not allowed",
    "task.window_size=0": "task.window_size=0 is not allowed",
    "task.windows_per_step=0": "task.windows_per_step=0 is not allowed",
    "task.temporal_attention_frames=[middle]": "anchor and earlier frames only",
    "task.views_per_step=0": "task.views_per_step=0 is not allowed",
}


def test_the_compose_check_refuses_what_the_task_constructors_refused_by_hand_before_torch_loads():
    region, pix2video = ["experiment=panorama_region_exact_cpu"], ["experiment=video_pix2video_tiny_cpu"]
    runs = [
        [*region, "task.canvas_size=[512,0]"],
        [*region, "task.canvas_size=[512]"],
        [*region, "task.window_size=0"],
        [*region, "task.windows_per_step=0"],
        [*pix2video, "task.temporal_attention_frames=[middle]"],
        ["experiment=scene3d_exact_cpu", "task.views_per_step=0"],
        [*region, "task.canvas_size=[64,192]"],  # accepted (whether it tiles needs the prior: the constructor's)
    ]
    messages, torch_loaded = compose_check_verdicts(runs)
    for key, expected in REFUSED.items():
        assert messages[key] is not None and expected in messages[key], (key, messages[key])
    assert messages["task.canvas_size=[64,192]"] is None
    assert torch_loaded is False


def test_the_clip_reader_and_the_clip_check_their_arguments_from_their_annotations(tmp_path):
    import torch

    from csd_exp.data.video import VideoClip, read_video

    for parameter, bad in (("start", -1), ("stride", 0), ("max_frames", 0), ("min_frames", 0), ("fps", 0.0)):
        with pytest.raises(ValueError, match=rf"^read_video: {parameter}=.* is not allowed"):
            read_video(tmp_path / "missing.mp4", **{parameter: bad})  # refused before the file is looked for
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4", start=0, stride=2, max_frames=None, fps=24)
    with pytest.raises(ValueError, match=r"^VideoClip: fps=0 is not allowed"):
        VideoClip(torch.zeros(2, 3, 4, 4), 0, "test")
    assert VideoClip(torch.zeros(2, 3, 4, 4), 12.5, "test").frame_names == ["frame_00000", "frame_00001"]
