"""3D representations and differentiable renderers.

* cameras and rays live in :mod:`csd_exp.data.cameras` (scene data; this package builds on them).
* :mod:`~csd_exp.render.base`: the :class:`RadianceField` interface (backends are chosen by ``_target_``).
* :mod:`~csd_exp.render.voxel`: the CPU-capable default backend (dense trilinear voxel grid).
* :mod:`~csd_exp.render.reprojection`: depth-based warping and the weight-free consistency metric.
* :mod:`~csd_exp.render.fit`: photometric fitting (NeRF pre-training / fine-tuning on edited views).
"""

from csd_exp.render.base import RadianceField, RenderOutput
from csd_exp.render.fit import evaluate_psnr, fit_field, psnr
from csd_exp.render.reprojection import reprojection_error, warp_to_view
from csd_exp.render.voxel import VoxelRadianceField

__all__ = [
    "RadianceField",
    "RenderOutput",
    "VoxelRadianceField",
    "reprojection_error",
    "warp_to_view",
    "fit_field",
    "evaluate_psnr",
    "psnr",
]
