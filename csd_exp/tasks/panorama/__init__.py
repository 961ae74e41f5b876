"""Panorama and region editing: CSD over windows of one canvas (``windows``), several prompts on regions
(``region``), and the sampling baselines per window, MultiDiffusion and downscaled (``sampling_baselines``)."""

from csd_exp.tasks.panorama.region import PanoramaRegionTask
from csd_exp.tasks.panorama.windows import PanoramaTask, WindowGrid

__all__ = ["PanoramaRegionTask", "PanoramaTask", "WindowGrid"]
