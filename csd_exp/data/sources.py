"""What a task edits, as ``data._target_`` objects: a still image (:class:`ImageSource`), a clip
(:class:`ClipSource`) or a multi-view scene (:class:`SceneSource`).

Each is a typed config (its fields are the ``data.*`` keys, checked by :mod:`csd_exp.schema` before
anything heavy is imported) with a ``load`` method the task calls once. Another source (a dataset
layout, a remote store) is one class with the same ``load`` and one ``data._target_`` naming it: the
tasks never look at the path to decide what to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import torch

from csd_exp.arguments import checked
from csd_exp.data.images import image_file_size, load_image, parse_background, set_max_image_pixels
from csd_exp.data.resample import resize_frames
from csd_exp.data.sample_clip import sample_clip
from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.scene import SceneDataset, SceneError, resize_scene
from csd_exp.data.scene_formats import load_scene
from csd_exp.data.video import read_video

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.schema.fields import NonNegativeInt, PositiveInt


#: Pillow's own decompression-bomb limit, kept as the default.
PILLOW_MAX_IMAGE_PIXELS = 178956970


@checked
@dataclass
class ImageSource:
    """A still image to edit (panorama / high-resolution editing).

    Attributes:
        path: an image file, ``sample:<name>`` (a bundled photo) or None (``sample:rocket``).
        resize_policy: ``auto`` (the prior's own), ``official`` (upscale only up to ``short_side``,
            never shrink, sides floored to the window stride) or ``short_side`` (short side exactly
            ``short_side``); the task applies it (``PanoramaTask.canvas_pixels``).
        short_side: in latent px (× the prior's VAE factor = pixels); None = one window.
        max_image_pixels: images with more pixels are refused before decoding (Pillow's guard; None = no limit).
        alpha_background: ``white``, ``black`` or ``#rrggbb``: an image with transparent pixels is composited
            on it; None drops the alpha channel (the colours beneath are edited as they are) with a warning.
    """

    #: what ``data.path`` names, checked at compose time (csd_exp.schema.inputs): an image file or ``sample:<name>``
    reads: ClassVar[str] = "image"

    path: str | None = None
    resize_policy: Literal["auto", "official", "short_side"] = "auto"
    short_side: PositiveInt | None = None
    max_image_pixels: PositiveInt | None = PILLOW_MAX_IMAGE_PIXELS
    alpha_background: (
        Annotated[str, Field(pattern=r"^(?i:white|black|#[0-9a-f]{6})$", description="white, black or '#rrggbb'")]
        | None
    ) = None

    def __post_init__(self) -> None:
        set_max_image_pixels(self.max_image_pixels)
        self._background = parse_background(self.alpha_background)

    def size(self) -> tuple[int, int]:
        """(height, width) of the image in pixels, from the file header."""
        return image_file_size(self.path)

    def load(self, min_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The image (3, H, W) in [0, 1], decoded at a reduced size no smaller than ``min_size`` if given."""
        return load_image(self.path, min_size=min_size, background=self._background, alpha_key="data.alpha_background")


@dataclass
class LoadedClip:
    """A clip ready for a task: frames at the processing size and what is needed to write it back."""

    frames: torch.Tensor  # (F, 3, H, W) in [0, 1] at the requested frame size
    original_size: tuple[int, int]  # (height, width) of the source frames
    fps: float
    flow: torch.Tensor | None  # (F-1, 2, H, W) exact motion at the frame size (synthetic clips), else None


@checked
@dataclass
class ClipSource:
    """A clip to edit (video editing): a video file, a folder of frames, or a bundled synthetic clip.

    Attributes:
        path: a video file (mp4 / gif / webm / mov), a folder of frames, ``sample:<pan|zoom>`` or None
            (``sample:pan``, whose exact motion gives the warp error without an optical-flow network).
        start: first frame read (files and folders).
        stride: read every ``stride``-th frame from ``start`` (fps is divided accordingly).
        max_frames: at most this many frames (None = all; the synthetic clips default to 12).
    """

    #: what ``data.path`` names, checked at compose time: a video file, a folder of frames or ``sample:<name>``
    reads: ClassVar[str] = "clip"

    path: str | None = None
    start: NonNegativeInt = 0
    stride: PositiveInt = 1
    max_frames: Annotated[int, Field(ge=2)] | None = 12

    def load(self, frame_size: tuple[int, int]) -> LoadedClip:
        """The frames resized to ``frame_size`` (height, width)."""
        path = self.path
        if path is None or str(path).startswith("sample:"):
            name = "pan" if path is None else str(path).split(":", 1)[1]
            clip, motion = sample_clip(name, num_frames=int(self.max_frames or 12), frame_size=frame_size)
            return LoadedClip(clip.frames, clip.size, clip.fps, motion.flow)
        clip = read_video(
            path, start=int(self.start), stride=int(self.stride), max_frames=self.max_frames, min_frames=2
        )
        return LoadedClip(resize_frames(clip.frames, *frame_size), clip.size, clip.fps, None)


@checked
@dataclass
class SceneSource:
    """A multi-view scene to edit (3D editing). Every check of the user's scene happens in :meth:`load`,
    which the task calls in its constructor, so a bad folder (no cameras, missing or mixed-size images,
    degenerate poses) fails before the prior is moved or any training starts, naming the file.

    Attributes:
        path: a nerfstudio (``transforms.json``) or Blender (``transforms_train.json``) folder or json, or
            None / ``"sample"`` for the bundled ray-traced sample scene.
        downscale: integer image downscale (file scenes; the sample scene divides its size).
        max_views: an evenly spaced subset of views (the sample scene's total; default 30).
        image_size: short side after resizing, in latent px (× the prior's VAE factor = pixels); None keeps
            the files' size (the sample scene: 32).
        num_val: held-out views of the sample scene (default one in five); file scenes use their own split.
    """

    #: what ``data.path`` names, checked at compose time: a scene folder or transforms json, or ``sample``
    reads: ClassVar[str] = "scene"

    path: str | None = None
    downscale: PositiveInt = 1
    max_views: Annotated[int, Field(ge=2)] | None = None
    image_size: PositiveInt | None = None
    num_val: NonNegativeInt | None = None

    SAMPLE_VIEWS = 30
    SAMPLE_SIZE = 32

    def load(self, multiple: int = 1) -> SceneDataset:
        """The scene, its short side ``image_size * multiple`` px (``multiple``: the prior's VAE factor)."""
        if self.path is None or str(self.path) == "sample":
            num_views = int(self.max_views or self.SAMPLE_VIEWS)
            size = int(self.image_size or self.SAMPLE_SIZE) * multiple
            if self.downscale not in (None, 1):
                size = max(1, size // int(self.downscale))
            num_val = max(1, round(num_views / 5)) if self.num_val is None else int(self.num_val)
            scene = make_sample_scene(num_views=num_views, num_val=num_val, size=(size, size), seed=0)
        else:
            if self.num_val is not None:
                raise ValueError(
                    "data.num_val only applies to the bundled sample scene; file scenes use their "
                    "own split (train_filenames / val_filenames, or nerfstudio's 90 % rule)"
                )
            scene = load_scene(
                self.path,
                downscale=int(self.downscale or 1),
                max_views=None if self.max_views is None else int(self.max_views),
            )
            if self.image_size is not None:
                scene = resize_scene(scene, int(self.image_size) * multiple, multiple)
        if len(scene.train_indices) < 2:
            raise SceneError(
                f"{scene.source or 'scene'}: 3D editing needs at least 2 training views, "
                f"got {len(scene.train_indices)} (raise data.max_views)"
            )
        return scene
