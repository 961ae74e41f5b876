"""The OpenCLIP encoder behind the CLIP metrics, and ``load_clip``, which builds it without downloading.

``load_clip`` is the one loader: ``clip_weights.py`` resolves where the weights come from (a tag in the
local cache, a local checkpoint, a saved model folder), ``open_clip_encoder`` loads them.

The paper evaluates everything with OpenCLIP ViT-bigG-14 (App. D); the pretrained tag is not stated,
``laion2b_s39b_b160k`` is the usual one and our default. ``load_clip`` never downloads when the
Hugging Face hub is offline: it looks in the local cache first and otherwise returns ``None`` after one
warning, and the CLIP metrics are then *absent* from results (never reported as 0). The metrics
themselves (``clip.py``) only need an ``ImageTextEncoder``; tests pass stubs with known embeddings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.metrics._validation import check_images
from csd_exp.metrics.clip_weights import ClipWeights, resolve_clip_weights, skip_note

if TYPE_CHECKING:
    from csd_exp.schema.fields import PositiveInt

logger = logging.getLogger(__name__)


@runtime_checkable
class ImageTextEncoder(Protocol):
    """What the CLIP metrics need: unit-norm embeddings of images in [0, 1] and of strings."""

    def encode_images(self, images: Tensor) -> Tensor: ...  # (B, 3, H, W) in [0, 1] -> (B, E), unit norm

    def encode_text(self, texts: Sequence[str]) -> Tensor: ...  # B strings -> (B, E), unit norm


class ClipEncoder:
    """A frozen OpenCLIP model plus its own eval preprocessing, done in torch on the model's device.

    Preprocessing follows open_clip's eval transform for the model's ``preprocess_cfg``:
    ``resize_mode="shortest"`` (the default for ViT-bigG-14) resizes the shorter side to the model's
    image size and centre-crops, so for a wide panorama only the central square is seen (as with any
    open_clip user calling ``preprocess``); ``"squash"`` resizes both sides; ``"longest"`` resizes the
    longer side and pads with ``fill_color``. Resampling is bicubic with antialiasing on float tensors
    (not PIL's uint8 path, so values differ from open_clip's PIL transform by resampling round-off
    only). Then ``(x − mean) / std``.

    This is deliberately not an ``nn.Module``: metrics keep it as a plain attribute so the (2.5 B
    parameter) CLIP weights never enter a task's ``state_dict`` or checkpoint.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        image_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        fill_color: float = 0.0,
        batch_size: int = 16,
        description: str = "",
    ) -> None:
        if resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest', 'longest' or 'squash', got {resize_mode!r}")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.fill_color = float(fill_color)
        self.batch_size = int(batch_size)
        self.description = description

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str) -> ClipEncoder:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"ClipEncoder({self.description or type(self.model).__name__}, image_size={self.image_size})"

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised (B, 3, *image_size) float32 on the model's device."""
        images = check_images(images, "images").to(self.device)
        target_h, target_w = self.image_size
        height, width = images.shape[-2:]
        if self.resize_mode == "squash":
            resized = self._resize(images, (target_h, target_w))
        elif self.resize_mode == "shortest":
            scale = max(target_h / height, target_w / width)
            new_size = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
            resized = self._resize(images, new_size)
            top = int(round((new_size[0] - target_h) / 2.0))
            left = int(round((new_size[1] - target_w) / 2.0))
            resized = resized[..., top : top + target_h, left : left + target_w]
        else:  # longest
            scale = min(target_h / height, target_w / width)
            new_size = (min(target_h, max(1, round(height * scale))), min(target_w, max(1, round(width * scale))))
            resized = self._resize(images, new_size)
            pad_h, pad_w = target_h - new_size[0], target_w - new_size[1]
            resized = F.pad(
                resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=self.fill_color
            )
        mean, std = self.mean.to(resized.device), self.std.to(resized.device)
        return (resized - mean) / std

    def _resize(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        resized = F.interpolate(images, size=size, mode=self.interpolation, align_corners=False, antialias=True)
        return resized.clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> unit-norm (B, E) float32 embeddings, computed in chunks of ``batch_size``."""
        chunks = []
        for start in range(0, images.shape[0], self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(self.dtype)
            chunks.append(self.model.encode_image(pixels).float())
        return F.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """List of strings -> unit-norm (B, E) float32 embeddings (open_clip's tokenizer, truncated to its context)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got a single str")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


def load_clip(
    model_name: str,
    pretrained: str | None,
    device: torch.device | str | None = None,
    *,
    precision: Literal["fp32", "fp16", "bf16"] = "fp32",
    batch_size: PositiveInt,
    cache_dir: str | None = None,
    allow_download: bool,
) -> ClipEncoder | None:
    """A frozen OpenCLIP encoder, or None (after one skip note) without weights: the ``_target_`` of
    ``metrics.clip`` (conf/metrics/default.yaml holds the defaults).

    ``pretrained`` is an open_clip tag (used from the local cache; downloaded only with ``allow_download``
    and the hub online), a local checkpoint file or saved-model folder, or None (CLIP metrics skipped); where
    the weights come from is decided by ``clip_weights.resolve_clip_weights``. A path that does not exist
    gives None with the note; a file that exists but does not load raises; an unknown ``model_name`` or tag
    raises ``ValueError``. ``batch_size``: images per CLIP forward.
    """
    weights = resolve_clip_weights(model_name, pretrained, cache_dir=cache_dir, allow_download=allow_download)
    if weights is None:
        return None
    return open_clip_encoder(weights, device, precision=precision, batch_size=batch_size, cache_dir=cache_dir)


def open_clip_encoder(
    weights: ClipWeights, device: torch.device | str | None, *, precision: str, batch_size: int, cache_dir: str | None
) -> ClipEncoder | None:
    """Load resolved ``weights`` into a ``ClipEncoder`` with the model's own eval preprocessing.

    A local file or folder that does not load raises ``RuntimeError``; a failed download gives None with the note.
    """
    import open_clip

    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        model = open_clip.create_model(
            weights.model_name,
            pretrained=weights.pretrained,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            **weights.create_kwargs,
        )
    except (RuntimeError, OSError, ValueError) as error:
        is_local = weights.pretrained is not None and os.path.isfile(str(weights.pretrained))
        if is_local or weights.model_name.startswith("local-dir:"):
            raise RuntimeError(
                f"could not load CLIP checkpoint {weights.pretrained or weights.model_name}: {error}"
            ) from error
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        skip_note(f"downloading {weights.description} failed ({reason})")
        return None
    tokenizer = open_clip.get_tokenizer(weights.model_name, cache_dir=cache_dir)
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    image_size = preprocess_cfg.get("size", model.visual.image_size)
    logger.info("Loaded OpenCLIP %s for metrics on %s", weights.description, device)
    return ClipEncoder(
        model,
        tokenizer,
        image_size=image_size,
        mean=preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
        std=preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        fill_color=preprocess_cfg.get("fill_color", 0),
        batch_size=batch_size,
        description=weights.description,
    )
