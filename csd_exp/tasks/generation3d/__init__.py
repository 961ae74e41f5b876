"""Text-to-3D generation: CSD / SDS over rendered views (``generation``), their cameras, metrics and optimiser."""

from csd_exp.tasks.generation3d.generation import Generation3DTask

__all__ = ["Generation3DTask"]
