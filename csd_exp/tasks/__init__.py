"""Tasks: one LightningModule per kind of particle (panorama windows, video frames, rendered views)."""

from csd_exp.tasks.base import DistillationTask, RunInputs, StepTickets, step_generator
from csd_exp.tasks.panorama.region import PanoramaRegionTask
from csd_exp.tasks.panorama.windows import PanoramaTask, WindowGrid
from csd_exp.tasks.scene3d.editing import Scene3DTask
from csd_exp.tasks.video.frames import VideoTask

__all__ = [
    "DistillationTask",
    "PanoramaRegionTask",
    "PanoramaTask",
    "RunInputs",
    "Scene3DTask",
    "StepTickets",
    "VideoTask",
    "WindowGrid",
    "step_generator",
]
