"""Data layer, one module per job.

``images`` (still-image files), ``resample`` (resizing, canvas sizes), ``samples`` (bundled photos),
``video`` / ``video_write`` (clips), ``sample_clip`` (synthetic clip with exact motion), ``cameras``,
``scene`` / ``scene_formats`` (multi-view scenes), ``sample_scene`` (ray-traced sample) and
``editable`` (the IN2N edit buffer), ``sources`` (the ``data._target_`` objects a task edits). The names
below are the video API and the sources, re-exported for convenience.
"""

from csd_exp.data.resample import resize_frames, restore_size
from csd_exp.data.sample_clip import SAMPLE_CLIPS, ClipMotion, make_pan_clip, sample_clip, warp_frame
from csd_exp.data.samples import BUNDLED_PHOTOS, load_photo
from csd_exp.data.sources import ClipSource, ImageSource, LoadedClip, SceneSource
from csd_exp.data.video import (
    FRAME_EXTENSIONS,
    READ_VIDEO_EXTENSIONS,
    VideoClip,
    check_fits_in_memory,
    default_memory_budget,
    read_video,
)
from csd_exp.data.video_write import WRITE_VIDEO_EXTENSIONS, frame_grid, save_frame_grid, write_frames, write_video

__all__ = [
    "BUNDLED_PHOTOS",
    "FRAME_EXTENSIONS",
    "READ_VIDEO_EXTENSIONS",
    "SAMPLE_CLIPS",
    "WRITE_VIDEO_EXTENSIONS",
    "ClipMotion",
    "ClipSource",
    "ImageSource",
    "LoadedClip",
    "SceneSource",
    "VideoClip",
    "check_fits_in_memory",
    "default_memory_budget",
    "frame_grid",
    "load_photo",
    "make_pan_clip",
    "read_video",
    "resize_frames",
    "restore_size",
    "sample_clip",
    "save_frame_grid",
    "warp_frame",
    "write_frames",
    "write_video",
]
