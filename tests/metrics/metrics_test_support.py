"""Shared helpers for tests/metrics: a stub encoder with known outputs, a tiny offline OpenCLIP, fake LPIPS weights.

Kept importable by name (no fixtures inside) so spawned DDP workers can use it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

TINY_CLIP_NAME = "csd-exp-test-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class StubEncoder:
    """Known embeddings: an image's embedding is its mean colour (R, G, B) normalised to unit length;
    a text's embedding is looked up in ``text_table`` (then normalised)."""

    def __init__(self, text_table: dict[str, Sequence[float]] | None = None) -> None:
        self.text_table = {key: torch.tensor(value, dtype=torch.float32) for key, value in (text_table or {}).items()}
        self.image_calls = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return F.normalize(images.float().mean(dim=(2, 3)), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(torch.stack([self.text_table[text] for text in texts]), dim=-1)


def constant_frames(colours: Sequence[Sequence[float]], height: int = 8, width: int = 8) -> torch.Tensor:
    """(F, 3, H, W) frames, frame f filled with colours[f]."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, height, width).contiguous()


def mean_abs_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """A pair distance with a known value, standing in for LPIPS: mean |a − b| per pair."""
    return (first - second).abs().mean(dim=(1, 2, 3))


def register_tiny_clip(folder: Path) -> None:
    """Register the tiny architecture with open_clip (idempotent)."""
    import open_clip

    if open_clip.get_model_config(TINY_CLIP_NAME) is not None:
        return
    config_path = Path(folder) / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)


def build_tiny_clip_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Random-weight tiny OpenCLIP saved as a ``state_dict`` file; returns (path, the model)."""
    import open_clip

    register_tiny_clip(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    checkpoint = Path(folder) / "tiny_open_clip_model.bin"
    torch.save(model.state_dict(), checkpoint)
    return checkpoint, model


def write_fake_lpips_backbone(torch_home: Path, seed: int = 0) -> Path:
    """Random SqueezeNet 1.1 weights where torchvision's cache would hold the ImageNet ones (5 MB, offline)."""
    import torchvision

    from csd_exp.metrics.lpips import lpips_backbone_cache_path

    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        target = Path(lpips_backbone_cache_path("squeeze"))
    finally:
        if previous is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = previous
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), target)
    return target
