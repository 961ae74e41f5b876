"""3D representations and differentiable renderers.

* :mod:`~csd_exp.data.cameras`: pinhole :class:`Cameras` (OpenGL c2w, z-up world), rays, turntables.
* :mod:`~csd_exp.render.base`: the :class:`RadianceField` interface and the backend registry.
* :mod:`~csd_exp.render.voxel`: the CPU-capable default backend (dense trilinear voxel grid).
* :mod:`~csd_exp.render.reprojection`: depth-based warping and the weight-free consistency metric.
* :mod:`~csd_exp.render.fit`: photometric fitting (NeRF pre-training / fine-tuning on edited views).
"""

from csd_exp.render.base import (
    RadianceField,
    RenderOutput,
    available_fields,
    build_field,
    register_field,
    register_field_path,
)
from csd_exp.data.cameras import Cameras, CameraError, generate_rays, look_at, turntable_cameras
from csd_exp.render.fit import evaluate_psnr, fit_field, psnr
from csd_exp.render.reprojection import reprojection_error, warp_to_view
from csd_exp.render.voxel import VoxelRadianceField

__all__ = [
    "Cameras",
    "CameraError",
    "generate_rays",
    "look_at",
    "turntable_cameras",
    "RadianceField",
    "RenderOutput",
    "available_fields",
    "build_field",
    "register_field",
    "register_field_path",
    "VoxelRadianceField",
    "reprojection_error",
    "warp_to_view",
    "fit_field",
    "evaluate_psnr",
    "psnr",
]
