"""The text-to-3D task's own final metrics (paper Table 3 and the exact prior's Janus measure).

* ``consistency/view_agreement`` (exact generation prior; higher is better, 1 = one object from every side):
  the turntable views' most responsible reference objects (argmax of
  :meth:`ExactGenerationPrior.mode_responsibilities`, each view scored against the references seen from
  its own camera); the fraction of views whose reference is the majority one. All views showing one
  object give 1.0; a field that is one object from the front and another from the back (the Janus
  failure) gives the share of the larger side. ``consistency/mode_fraction/<name>`` gives each object's share.
* ``fidelity/reference_psnr`` (exact generation prior): mean PSNR of each turntable view against its most
  responsible reference rendered from the same camera: whether the views look like an object at all
  (an argmax exists for any image, so agreement alone cannot tell a blob from an object).
* ``clip/depth_text_similarity``: ``clip/text_similarity`` (the evaluator's, of the colour renders: Table 3's
  "CLIP Similarity Color") computed on the depth renders of :func:`depth_images` (Table 3's "Geo"), with
  the metrics' CLIP encoder; absent without CLIP weights (``load_clip`` logs why).
* ``fid/rgb``: torchmetrics' Fréchet Inception Distance of the turntable colour renders against the images
  of ``task.fid_reference_dir`` (the paper: ImageNet val), Inception weights from
  ``task.fid_inception_weights`` (torch-fidelity's ``pt_inception-2015-12-05`` file; never downloaded).
  Absent, with one log line saying why, when no folder is given, torch-fidelity is not installed or the
  weights file is missing. With 12 views FID is very noisy: compare runs over many prompts, as the paper does.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from csd_exp.metrics import ClipTextSimilarity, ModeAgreement

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def view_agreement(responsibilities: Tensor) -> float:
    """Fraction of views whose most responsible reference is the majority reference."""
    metric = ModeAgreement(sync_on_compute=False)  # final metrics run on rank zero alone
    metric.update(responsibilities)
    return float(metric.compute())


def reference_psnr(views: Tensor, references: Tensor, responsibilities: Tensor) -> float:
    """Mean PSNR (data range 1) of ``views`` (V, 3, H, W) against their most responsible reference among
    ``references`` (V, K, 3, H, W) of the same cameras."""
    chosen = references[torch.arange(views.shape[0]), responsibilities.argmax(dim=1).to(references.device)]
    mse = (views.float() - chosen.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return float((-10.0 * torch.log10(mse)).mean())


def depth_images(depth: Tensor, opacity: Tensor) -> Tensor:
    """(V, 3, H, W) grey depth renders in [0, 1]: near is bright, far dark, per view normalised over its
    foreground (opacity > 0.5), composited over black by opacity (textureless geometry, for CLIP and videos)."""
    images = []
    for d, a in zip(depth.float(), opacity.float()):
        foreground = a > 0.5
        if bool(foreground.any()):
            near, far = d[foreground].min(), d[foreground].max()
            shade = 1.0 - (d - near) / (far - near).clamp_min(1e-6)
            shade = 0.2 + 0.8 * shade.clamp(0.0, 1.0)  # the farthest surface stays visible against black
        else:
            shade = torch.zeros_like(d)
        images.append((shade * a).expand(3, -1, -1))
    return torch.stack(images).clamp(0.0, 1.0)


def depth_text_similarity(clip, depth_views: Tensor, prompt: str) -> float | None:
    """``clip/depth_text_similarity``, or None without a CLIP encoder."""
    if clip is None:
        return None
    metric = ClipTextSimilarity(clip, sync_on_compute=False)
    metric.update(depth_views, prompt)
    value = float(metric.compute())
    return value if math.isfinite(value) else None


def _read_folder(folder: Path) -> list[Tensor]:
    from csd_exp.data.images import load_image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"task.fid_reference_dir={folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [load_image(p) for p in files]


def fid_against_folder(views: Tensor, reference_dir: str | None, inception_weights: str | None) -> float | None:
    """``fid/rgb`` of ``views`` (V, 3, H, W) in [0, 1] against the images in ``reference_dir``, or None (with
    one log line) when it cannot be computed here (see the module docstring)."""
    if not reference_dir:
        return None
    folder = Path(reference_dir).expanduser()
    if not folder.is_dir():
        raise ValueError(f"task.fid_reference_dir={reference_dir} is not a folder")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        log.warning("fid/rgb skipped: torchmetrics' FID needs the torch-fidelity package (pip install torch-fidelity)")
        return None
    if not inception_weights or not Path(inception_weights).expanduser().is_file():
        log.warning(
            "fid/rgb skipped: set task.fid_inception_weights to a local copy of torch-fidelity's "
            "pt_inception-2015-12-05 weights (given: %s); they are never downloaded",
            inception_weights,
        )
        return None
    from torchmetrics.image.fid import FrechetInceptionDistance

    from csd_exp.data.resample import resize_frames

    metric = FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(Path(inception_weights).expanduser())
    )
    for image in _read_folder(folder):
        metric.update(resize_frames(image[None].float(), 299, 299), real=True)
    metric.update(resize_frames(views.float(), 299, 299), real=False)
    return float(metric.compute())
