"""3D scene editing (Instruct-NeRF2NeRF style): the task (``editing``), its dataset editors, CSD-Edit and the
IN2N baseline (``editors``), the view of the scene they read (``view``), its data (``data``) and diagnostics."""

from csd_exp.tasks.scene3d.editing import Scene3DTask

__all__ = ["Scene3DTask"]
