"""``EditEvaluator``: every metric of one source/edit pair in one call; the ``_target_`` of ``metrics``.

Used by the tasks for ``summary.json`` and by ``csd-exp-eval`` for external baselines, so both land in
the same table with the same keys (``csd_exp.metrics.keys``). Only metrics that could be computed are
returned: CLIP / LPIPS keys are absent when their weights are missing, consecutive-frame keys when
``sequence`` is False, seam / warp / mode keys when their extra input is not given, source-relative
keys when there is no source (generation, ``source=None``), and any metric whose value is undefined
(NaN) is dropped rather than reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from csd_exp.metrics import keys
from csd_exp.metrics._validation import check_images, check_pair
from csd_exp.metrics.clip import (
    ClipConsistency,
    ClipDirectionalSimilarity,
    ClipImageSimilarity,
    ClipTextSimilarity,
    ImageTextEncoder,
)
from csd_exp.metrics.consistency import FlowSource, ModeAgreement, SeamError, WarpError, resolve_flow
from csd_exp.metrics.fidelity import SSIM_MIN_SIZE, SourcePSNR, SourceSSIM
from csd_exp.metrics.lpips import ConsecutiveFrameLPIPS, LpipsNet, load_lpips

logger = logging.getLogger(__name__)


class EditEvaluator:
    """Scores an edit against its source. Built from the ``metrics`` config group (conf/metrics/default.yaml,
    whose values are the defaults) by ``csd_exp.run`` and ``csd-exp eval``; ``metrics=none`` builds it without
    CLIP and LPIPS.

    Metric states are never synchronised across processes: rank zero scores the whole gathered result alone.

    Args:
        clip: a ``ClipEncoder`` (``load_clip``, the ``_target_`` of ``metrics.clip``) or any object with
            ``encode_images`` / ``encode_text``; None skips the CLIP metrics.
        lpips_net: ``"alex" | "vgg" | "squeeze"`` to load torchmetrics' LPIPS (``load_lpips``; None
            with one warning when the backbone weights are not cached), or None for no LPIPS.
        lpips: an already built LPIPS metric or pair-distance callable; overrides ``lpips_net``.
        source_text, target_text: defaults for ``evaluate``'s texts (``csd-exp eval --source-text / --target-text``).
        device: where LPIPS and the metric states live (null: cpu; CLIP is loaded on ``metrics.clip.device``,
            which the YAML sets to this value).
    """

    #: objects and texts for Python callers and csd-exp eval: not config settings (a run passes its own texts)
    python_only_parameters = ("lpips", "source_text", "target_text")

    def __init__(
        self,
        clip: ImageTextEncoder | None,
        lpips_net: LpipsNet | None,
        *,
        lpips=None,
        source_text: str | None = "",
        target_text: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.clip = clip
        self.lpips_net = lpips_net
        if lpips is None and lpips_net is not None:
            lpips = load_lpips(lpips_net, self.device)
        self.lpips = lpips
        self.source_text = source_text
        self.target_text = target_text
        self.unavailable: dict[str, str] = {}
        if self.clip is None:
            for key in keys.CLIP_KEYS:
                self.unavailable[key] = "no CLIP weights (see the warning from load_clip)"
        if self.lpips is None:
            reason = "lpips_net is None" if lpips_net is None else f"no LPIPS {lpips_net} backbone weights"
            self.unavailable[keys.LPIPS_CONSECUTIVE] = reason

    def _new(self, metric_class, *args):
        # rank zero evaluates alone: a synchronising compute() would wait for ranks that never call it
        return metric_class(*args, sync_on_compute=False).to(self.device)

    @torch.no_grad()
    def evaluate(
        self,
        source: Tensor | None,
        edited: Tensor,
        *,
        source_text: str | None = None,
        target_text: str | None = None,
        sequence: bool = False,
        motion: FlowSource | None = None,
        mode_responsibilities: Tensor | None = None,
        windows: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, float]:
        """All computable metrics of ``edited`` against ``source`` (both (F, 3, H, W) in [0, 1]).

        ``source_text`` / ``target_text`` default to the constructor's (a run passes its
        ``source_prompt`` and ``prompt``); with CLIP available the target text is required, and adds
        ``clip/text_similarity``. ``sequence=True`` (frames or views in order, F >= 2) adds
        ``clip/consistency``, ``lpips/consecutive``. ``motion``: flow (F−1, 2, H, W) in pixels mapping
        frame i+1 to frame i, or a callable ``(source[:-1], source[1:]) -> flow | (flow, valid_mask)``;
        adds ``consistency/warp_error`` of the edited frames. ``mode_responsibilities`` (N, K) adds
        ``consistency/mode_agreement``; ``windows`` [(top, left, height, width)] in image pixels adds
        ``consistency/seam_error``.

        ``source=None`` (a generation result: nothing was edited) returns only what needs no source:
        ``clip/text_similarity``, with ``sequence=True`` ``clip/consistency`` and ``lpips/consecutive``,
        and ``consistency/mode_agreement``; ``source_text`` is then unused. ``motion`` and ``windows``
        are refused (``ValueError``): seam error measures jumps *added* to the source's, and warp
        error's flow is estimated on or checked against the source frames.
        """
        if source is None:
            if motion is not None or windows is not None:
                given = " and ".join(
                    name for name, value in (("motion", motion), ("windows", windows)) if value is not None
                )
                raise ValueError(
                    f"{given} given with source=None: consistency/warp_error and consistency/seam_error are "
                    "measured against the source frames; pass the source, or leave them out"
                )
            edited = check_images(edited, "edited")
        else:
            source, edited = check_pair(source, edited)
        frames = edited.shape[0]
        if sequence and frames < 2:
            raise ValueError(f"sequence=True needs at least 2 frames, got {frames}")
        if motion is not None and frames < 2:
            raise ValueError(f"warp error (motion=...) needs at least 2 frames, got {frames}")
        results: dict[str, Tensor] = {}

        if source is not None:
            for key, metric_class in ((keys.FIDELITY_PSNR, SourcePSNR), (keys.FIDELITY_SSIM, SourceSSIM)):
                if key == keys.FIDELITY_SSIM and min(source.shape[-2:]) < SSIM_MIN_SIZE:
                    logger.info(
                        "fidelity/ssim skipped: frames %s are smaller than its %dx%d window",
                        tuple(source.shape[-2:]),
                        SSIM_MIN_SIZE,
                        SSIM_MIN_SIZE,
                    )
                    continue
                metric = self._new(metric_class)
                metric.update(source, edited)
                results[key] = metric.compute()

        if self.clip is not None:
            results.update(self._clip_metrics(source, edited, source_text, target_text, sequence))

        if sequence and self.lpips is not None:
            lpips_metric = self._new(ConsecutiveFrameLPIPS, self.lpips)
            lpips_metric.update(edited)
            results[keys.LPIPS_CONSECUTIVE] = lpips_metric.compute()

        if motion is not None:
            flow, valid_mask = resolve_flow(motion, source)
            warp = self._new(WarpError)
            warp.update(edited, flow, valid_mask)
            results[keys.WARP_ERROR] = warp.compute()

        if mode_responsibilities is not None:
            agreement = self._new(ModeAgreement)
            agreement.update(mode_responsibilities)
            results[keys.MODE_AGREEMENT] = agreement.compute()

        if windows is not None:
            seam = self._new(SeamError)
            seam.update(source, edited, windows)
            results[keys.SEAM_ERROR] = seam.compute()

        report: dict[str, float] = {}
        for key, value in results.items():
            number = float(value)
            if math.isnan(number):
                logger.info("%s is undefined for this input (no pairs or border lines) and is left out", key)
                continue
            report[key] = number
        return report

    def _clip_metrics(
        self, source: Tensor | None, edited: Tensor, source_text: str | None, target_text: str | None, sequence: bool
    ) -> dict[str, Tensor]:
        """The CLIP keys for this input; each image stack is encoded once and shared by the metrics."""
        source_text = self.source_text if source_text is None else source_text
        target_text = self.target_text if target_text is None else target_text
        if source is None and target_text is None:
            raise ValueError("clip/text_similarity needs target_text (pass it to evaluate; a run passes its prompt)")
        if source is not None and (source_text is None or target_text is None):
            raise ValueError(
                "clip/directional needs source_text and target_text (pass them to evaluate; a run "
                "passes source_prompt and prompt)"
            )
        edited_embeddings = self.clip.encode_images(edited).float()
        texts = [target_text] if source is None else [source_text, target_text]
        text_embeddings = self.clip.encode_text(texts).float()
        results: dict[str, Tensor] = {}
        if source is not None:
            source_embeddings = self.clip.encode_images(source).float()
            directional = self._new(ClipDirectionalSimilarity)
            directional.update(source_embeddings, edited_embeddings, text_embeddings[0], text_embeddings[1])
            results[keys.CLIP_DIRECTIONAL] = directional.compute()
            image_similarity = self._new(ClipImageSimilarity)
            image_similarity.update(source_embeddings, edited_embeddings)
            results[keys.CLIP_IMAGE_SIMILARITY] = image_similarity.compute()
        text_similarity = self._new(ClipTextSimilarity)
        text_similarity.update(edited_embeddings, text_embeddings[-1])
        results[keys.CLIP_TEXT_SIMILARITY] = text_similarity.compute()
        if sequence:
            consistency = self._new(ClipConsistency)
            consistency.update(edited_embeddings)
            results[keys.CLIP_CONSISTENCY] = consistency.compute()
        return results
