"""Video editing: CSD over frames (``frames``) and the baselines, per-frame InstructPix2Pix (``per_frame``),
FateZero (``fatezero``, its release's switches in ``fatezero_release``) and Pix2Video (``pix2video``)."""

from csd_exp.tasks.video.frames import VideoTask

__all__ = ["VideoTask"]
