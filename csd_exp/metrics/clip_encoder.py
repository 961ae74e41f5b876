"""The OpenCLIP encoder behind the CLIP metrics, and ``load_clip``, which builds it without downloading.

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
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from csd_exp.metrics._validation import check_images
from csd_exp.metrics.notes import DOCS, note_skipped

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-bigG-14"
DEFAULT_CLIP_PRETRAINED = "laion2b_s39b_b160k"
_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


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


def _hub_offline(allow_download: bool = True) -> bool:
    if not allow_download:
        return True
    from huggingface_hub import constants

    env_value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.is_offline_mode() or env_value in ("1", "true", "yes", "on")


def _cached_weights_for_tag(tag_config: dict, cache_dir: str | None) -> str | None:
    """Path of the tag's weights in the local cache, or None; never touches the network."""
    if tag_config.get("file"):
        return tag_config["file"] if os.path.isfile(tag_config["file"]) else None
    hf_hub = tag_config.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hf_hub)
        candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth", ".pt")):
            candidates.insert(0, os.path.splitext(filename)[0] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_config.get("url", "")
    if url:
        clip_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        candidate = os.path.join(clip_cache, os.path.basename(url))
        if os.path.isfile(candidate):
            return candidate
    return None


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.startswith(("~", ".")) or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _missing_weights_warning(what: str) -> None:
    """One line: which CLIP weights are missing and the key that provides them; the rest is in the docs."""
    note_skipped(
        logger,
        f"CLIP metrics skipped: {what}; give metrics.clip.pretrained=PATH (csd-exp eval: --clip-pretrained), "
        f"see {DOCS}",
    )


def load_clip(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    device: torch.device | str | None = None,
    *,
    precision: str = "fp32",
    batch_size: int = 16,
    cache_dir: str | None = None,
    allow_download: bool = True,
) -> ClipEncoder | None:
    """Build a frozen OpenCLIP encoder, or return None (after one ``logging.warning``) without weights.

    ``pretrained`` is one of:

    - an open_clip tag (``"laion2b_s39b_b160k"``): the weights are used when already in the local
      cache (Hugging Face hub cache, or ``~/.cache/clip`` for URL tags). When missing and the hub is
      offline (``HF_HUB_OFFLINE=1``, which the framework sets), return None at once; when online,
      let open_clip download them, and return None if that fails;
    - a local checkpoint file (``open_clip_pytorch_model.bin`` / ``.safetensors`` / a ``state_dict``
      saved with ``torch.save``) for the architecture ``model_name``; a folder with
      ``open_clip_config.json`` is loaded through open_clip's ``local-dir:`` schema. A path that does
      not exist gives None with the warning; a file that exists but does not load raises;
    - ``allow_download=False`` treats the hub as offline: a tag is used only from the local cache
      (the framework's default, so a run never starts a multi-GB download at its end);
    - ``None``: no CLIP weights configured, CLIP metrics skipped (random weights would give numbers
      that look real and mean nothing).

    An unknown ``model_name`` or tag is a configuration error and raises ``ValueError``.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    device = torch.device(device) if device is not None else torch.device("cpu")
    if pretrained is None and not model_name.startswith(("local-dir:", "hf-hub:")):
        _missing_weights_warning(f"no CLIP weights configured for {model_name} (pretrained=None)")
        return None

    create_kwargs: dict = {"precision": precision, "device": device, "cache_dir": cache_dir}
    description = f"{model_name}/{pretrained}"
    if model_name.startswith("hf-hub:"):
        if _hub_offline(allow_download):
            _missing_weights_warning(f"{model_name} cannot be fetched with HF_HUB_OFFLINE=1")
            return None
        source_name, source_pretrained = model_name, None
        description = model_name
    elif model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            _missing_weights_warning(f"no open_clip_config.json in {folder}")
            return None
        source_name, source_pretrained = f"local-dir:{folder}", None
        description = model_name
    else:
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(
                f"unknown OpenCLIP architecture {model_name!r}; known ones include "
                f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-'))[:300]}..."
            )
        tag_config = get_pretrained_cfg(model_name, pretrained)
        if tag_config:
            cached = _cached_weights_for_tag(tag_config, cache_dir)
            if cached is None and _hub_offline(allow_download):
                _missing_weights_warning(
                    f"weights {model_name}/{pretrained} are not cached and downloads are off",
                )
                return None
            source_name, source_pretrained = model_name, cached or pretrained
            # a file path loses the tag's preprocessing and activation settings; pass them on explicitly
            preprocess_override = {
                key: tag_config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_config
            }
            if preprocess_override:
                create_kwargs["force_preprocess_cfg"] = preprocess_override
            if tag_config.get("quick_gelu", False):
                create_kwargs["force_quick_gelu"] = True
        elif _looks_like_path(pretrained):
            path = Path(pretrained).expanduser()
            if path.is_dir():
                if not (path / "open_clip_config.json").is_file():
                    _missing_weights_warning(f"no open_clip_config.json in checkpoint folder {path}")
                    return None
                source_name, source_pretrained = f"local-dir:{path}", None
            elif path.is_file():
                source_name, source_pretrained = model_name, str(path)
            else:
                _missing_weights_warning(f"CLIP checkpoint {path} does not exist")
                return None
        else:
            tags = list_pretrained_tags_by_model(model_name)
            raise ValueError(
                f"pretrained={pretrained!r} is neither a known tag of {model_name} ({', '.join(tags) or 'none'}) "
                "nor a path to a checkpoint"
            )

    try:
        model = open_clip.create_model(source_name, pretrained=source_pretrained, **create_kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        is_local = source_pretrained is not None and os.path.isfile(str(source_pretrained))
        if is_local or source_name.startswith("local-dir:"):
            raise RuntimeError(f"could not load CLIP checkpoint {source_pretrained or source_name}: {error}") from error
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        _missing_weights_warning(f"downloading {description} failed ({reason})")
        return None
    tokenizer = open_clip.get_tokenizer(source_name, cache_dir=cache_dir)
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    image_size = preprocess_cfg.get("size", model.visual.image_size)
    logger.info("Loaded OpenCLIP %s for metrics on %s", description, device)
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
        description=description,
    )
