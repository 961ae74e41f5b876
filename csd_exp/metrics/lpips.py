"""LPIPS between consecutive frames (``lpips/consecutive``), on torchmetrics' LPIPS.

``lpips/consecutive = mean_{f<F} LPIPS(edited_f, edited_{f+1})`` over consecutive frames or rendered
views (paper §4.2, §4.3; lower is more consistent). The paper does not name the LPIPS backbone
(UNCONFIRMED, csd-paper-notes §3.1); ``alex`` is LPIPS' own recommended default and ours.

torchmetrics ships the LPIPS linear heads, but the backbone (AlexNet / VGG16 / SqueezeNet 1.1
ImageNet weights) comes from torchvision's download cache (``$TORCH_HOME/hub/checkpoints``).
``load_lpips`` looks there first and returns None with one warning when the file is missing, so an
offline machine never tries (and waits on) a download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import Tensor

from csd_exp.metrics._base import MeanOverPairs
from csd_exp.metrics._validation import check_images
from csd_exp.metrics.notes import DOCS, note_skipped

logger = logging.getLogger(__name__)

LPIPS_NETS = ("alex", "vgg", "squeeze")
#: The LPIPS backbones (``metrics.lpips_net``).
LpipsNet = Literal[LPIPS_NETS]


def _backbone_weights(net: str):
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    return {"alex": AlexNet_Weights, "vgg": VGG16_Weights, "squeeze": SqueezeNet1_1_Weights}[net].DEFAULT


def lpips_backbone_cache_path(net: str) -> str:
    """Where torchvision keeps (and torchmetrics' LPIPS loads) the backbone weights for ``net``."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips net must be one of {LPIPS_NETS}, got {net!r}")
    filename = os.path.basename(urlparse(_backbone_weights(net).url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_lpips(net: LpipsNet = "alex", device: torch.device | str | None = None):
    """torchmetrics ``LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)`` or None.

    None (after one ``logging.warning`` naming the missing file and how to provide it) when the
    ImageNet backbone weights are not in torchvision's cache. Inputs of the returned metric are
    images in [0, 1] (``normalize=True``).
    """
    cache_path = lpips_backbone_cache_path(net)
    if not os.path.isfile(cache_path):
        note_skipped(logger, f"LPIPS metric skipped: no {net} backbone weights at {cache_path}; see {DOCS}")
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True, reduction="mean")
    if device is not None:
        metric = metric.to(device)
    return metric


class ConsecutiveFrameLPIPS(MeanOverPairs):
    """``lpips/consecutive``: mean over consecutive pairs of ``LPIPS(frames_f, frames_{f+1})``; lower is better.

    ``distance`` is a torchmetrics ``LearnedPerceptualImagePatchSimilarity`` (as returned by
    ``load_lpips``; its network is used per pair, on inputs in [0, 1]) or any callable
    ``(a, b) -> (B,)`` distances for image batches in [0, 1]. The network is held as a plain
    attribute, so its weights stay out of ``state_dict``; it runs on its own device.

    Each ``update`` gets one whole sequence (pairs are never formed across updates or processes);
    ``pair_batch_size`` bounds how many pairs go through the network at once.
    """

    higher_is_better = False

    def __init__(self, distance, pair_batch_size: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self._distance = _as_pair_distance(distance)
        self.pair_batch_size = int(pair_batch_size)

    def update(self, frames: Tensor) -> None:
        frames = check_images(frames, "frames")
        if frames.shape[0] < 2:
            return
        distances = []
        for start in range(0, frames.shape[0] - 1, self.pair_batch_size):
            stop = min(start + self.pair_batch_size, frames.shape[0] - 1)
            distances.append(self._distance(frames[start:stop], frames[start + 1 : stop + 1]).reshape(-1).float())
        self._accumulate(torch.cat(distances))


def _as_pair_distance(distance) -> Callable[[Tensor, Tensor], Tensor]:
    network = getattr(distance, "net", None)
    if network is not None and callable(network):
        # torchmetrics LPIPS: call its network per pair (the metric itself would average the batch)
        def lpips_pairs(first: Tensor, second: Tensor) -> Tensor:
            device = next(network.parameters()).device
            with torch.no_grad():
                return network(first.to(device), second.to(device), normalize=True).reshape(-1)

        return lpips_pairs
    if callable(distance):
        return distance
    raise TypeError(f"distance must be a torchmetrics LPIPS metric or a callable, got {type(distance).__name__}")


__all__ = ["ConsecutiveFrameLPIPS", "LPIPS_NETS", "load_lpips", "lpips_backbone_cache_path"]
