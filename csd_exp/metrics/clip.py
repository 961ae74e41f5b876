"""The CLIP metrics of the paper's tables, plus a text-only one, as torchmetrics ``Metric``s.

Encoders come from ``clip_encoder.py`` (``load_clip``: OpenCLIP ViT-bigG-14 / laion2b_s39b_b160k by
default, None without weights, and then these keys are absent, never 0); its public names are
re-exported here, where they were defined before the split.

Formulas (``E_I`` / ``E_T``: CLIP image / text embeddings, each L2-normalised to unit length first,
``cos(a, b) = a·b / (‖a‖‖b‖)``; frames ``f = 1..F``):

- ``clip/directional`` (StyleGAN-NADA; paper §4.1):
  ``mean_f cos(E_I(edited_f) − E_I(source_f), E_T(y_target) − E_T(y_source))``.
- ``clip/image_similarity`` (source–edit consistency, §4.1): ``mean_f cos(E_I(source_f), E_I(edited_f))``.
- ``clip/text_similarity`` (image–text agreement; needs no source): ``mean_f cos(E_I(edited_f), E_T(y_target))``.
  This is the cosine inside CLIPScore (Hessel et al. 2021), reported raw in [−1, 1]: not rescaled
  (CLIPScore's ``2.5·max(cos, 0)``, torchmetrics' ``max(100·cos, 0)``) and not clipped at 0.
- ``clip/consistency`` (temporal / multi-view, §4.2–4.3): ``mean_{f<F} cos(E_I(edited_f), E_I(edited_{f+1}))``.

All are averaged over *pairs* (frame pairs across every ``update`` and, under DDP, every process);
the paper does not say how it aggregated over frames and clips (UNCONFIRMED, csd-paper-notes §3.1), and a
pair-weighted mean is what Instruct-NeRF2NeRF's ``metrics/clip_metrics.py`` does per scene.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from csd_exp.metrics._base import MeanOverPairs
from csd_exp.metrics._validation import check_images, check_pair
from csd_exp.metrics.clip_encoder import (
    ClipEncoder,
    ImageTextEncoder,
    load_clip,
)

__all__ = [
    "ClipConsistency",
    "ClipDirectionalSimilarity",
    "ClipEncoder",
    "ClipImageSimilarity",
    "ClipTextSimilarity",
    "ImageTextEncoder",
    "consecutive_cosine",
    "directional_similarity",
    "load_clip",
    "paired_cosine",
    "text_similarity",
]

# ----------------------------------------------------------------------------------------------
# formulas on embeddings (pure torch; what the tests check against hand-computed values)


def directional_similarity(
    source_image_embeddings: Tensor,
    edited_image_embeddings: Tensor,
    source_text_embedding: Tensor,
    target_text_embedding: Tensor,
) -> Tensor:
    """Per-frame ``cos(E_I(edited) − E_I(source), E_T(y_target) − E_T(y_source))``, shape (F,).

    Image embeddings are (F, E); text embeddings (E,) or (1, E). Inputs are used as given (the
    encoders return unit-norm embeddings). A zero difference on either side (no visible edit, or
    identical texts) gives 0, through ``F.cosine_similarity``'s epsilon.
    """
    image_direction = edited_image_embeddings - source_image_embeddings
    text_direction = (target_text_embedding - source_text_embedding).reshape(1, -1)
    return F.cosine_similarity(image_direction, text_direction.expand_as(image_direction), dim=-1)


def paired_cosine(first: Tensor, second: Tensor) -> Tensor:
    """Row-wise cosine similarity of two (F, E) embedding stacks, shape (F,)."""
    return F.cosine_similarity(first, second, dim=-1)


def consecutive_cosine(embeddings: Tensor) -> Tensor:
    """``cos(e_f, e_{f+1})`` for f = 1..F−1, shape (F−1,); empty for a single frame."""
    return F.cosine_similarity(embeddings[:-1], embeddings[1:], dim=-1)


def text_similarity(image_embeddings: Tensor, text_embedding: Tensor) -> Tensor:
    """Per-frame ``cos(E_I(image_f), E_T(y))``, shape (F,): (F, E) image embeddings against one (E,) or (1, E) text."""
    text = text_embedding.reshape(1, -1)
    return F.cosine_similarity(image_embeddings, text.expand_as(image_embeddings), dim=-1)


# ----------------------------------------------------------------------------------------------
# torchmetrics Metrics (sum / count states reduced with "sum": exact under DDP; see _base.py)


class _ClipMetric(MeanOverPairs):
    def __init__(self, encoder: ImageTextEncoder | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        # a plain attribute (not a registered module): CLIP weights stay out of state_dict
        self.encoder = encoder

    def _require_encoder(self) -> ImageTextEncoder:
        if self.encoder is None:
            raise RuntimeError(f"{type(self).__name__} has no encoder; pass one, or update with embeddings")
        return self.encoder

    def _paired_embeddings(self, source: Tensor, edited: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings of a source / edited pair (images or precomputed), checked to match frame for frame."""
        if source.ndim == 4 or edited.ndim == 4:
            source, edited = check_pair(source, edited)
        source_embeddings = self._image_embeddings(source, "source")
        edited_embeddings = self._image_embeddings(edited, "edited")
        if source_embeddings.shape != edited_embeddings.shape:
            raise ValueError(
                f"source embeddings {tuple(source_embeddings.shape)} and edited embeddings "
                f"{tuple(edited_embeddings.shape)} differ in shape"
            )
        return source_embeddings, edited_embeddings

    def _image_embeddings(self, images_or_embeddings: Tensor, name: str) -> Tensor:
        """(F, 3, H, W) images are encoded; (F, E) tensors are taken as precomputed embeddings."""
        if images_or_embeddings.ndim == 2:
            return images_or_embeddings.detach().float()
        images = check_images(images_or_embeddings, name)
        return self._require_encoder().encode_images(images).float()

    def _text_embedding(self, text_or_embedding: str | Tensor) -> Tensor:
        if isinstance(text_or_embedding, Tensor):
            return text_or_embedding.detach().float().reshape(-1)
        return self._require_encoder().encode_text([text_or_embedding]).float()[0]


class ClipDirectionalSimilarity(_ClipMetric):
    """``clip/directional``: mean over frames of ``cos(E_I(edited_f) − E_I(source_f), E_T(y_target) − E_T(y_source))``.

    Which texts are ``y_source`` / ``y_target`` is the paper's open question (csd-paper-notes §3.1 and
    §7 item 10): StyleGAN-NADA and Instruct-NeRF2NeRF's ``clip_metrics.py`` use two *captions* (one
    describing the source, one the wanted result); CSD-Edit is driven by an *instruction* ("turn into
    Van Gogh style painting") and the paper never says which texts it scored. Both are supported:
    pass two captions, or ``source_text=""`` (or a neutral caption) and ``target_text=instruction``;
    a run scores its ``source_prompt`` against its ``prompt`` (both in its config), and ``summary.json`` stores
    the texts used. Numbers from the two choices are not comparable.

    ``update(source, edited, source_text, target_text)``: images (F, 3, H, W) in [0, 1] or
    precomputed unit-norm image embeddings (F, E); texts as strings or embeddings (E,).
    """

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor, source_text: str | Tensor, target_text: str | Tensor) -> None:
        source_embeddings, edited_embeddings = self._paired_embeddings(source, edited)
        self._accumulate(
            directional_similarity(
                source_embeddings,
                edited_embeddings,
                self._text_embedding(source_text),
                self._text_embedding(target_text),
            )
        )


class ClipImageSimilarity(_ClipMetric):
    """``clip/image_similarity``: mean over frames of ``cos(E_I(source_f), E_I(edited_f))`` (how much of the
    source survives).

    ``update(source, edited)``: images (F, 3, H, W) in [0, 1] or precomputed embeddings (F, E).
    """

    higher_is_better = True

    def update(self, source: Tensor, edited: Tensor) -> None:
        source_embeddings, edited_embeddings = self._paired_embeddings(source, edited)
        self._accumulate(paired_cosine(source_embeddings, edited_embeddings))


class ClipTextSimilarity(_ClipMetric):
    """``clip/text_similarity``: mean over frames of ``cos(E_I(edited_f), E_T(y_target))``.

    How well each frame matches the target text, with no source involved: the CLIP number a
    generation (text-to-3D) result can have, and a cheap companion of ``clip/directional`` for an edit.
    The raw cosine, not CLIPScore's rescaled and clipped value (module docstring). Which text to pass is
    the run's ``prompt``; for an instruction-driven edit that is an instruction, not a caption, so the
    number reads differently from a caption-scored one (same caveat as ``ClipDirectionalSimilarity``).

    ``update(edited, target_text)``: images (F, 3, H, W) in [0, 1] or precomputed unit-norm image
    embeddings (F, E); the text as a string or an embedding (E,).
    """

    higher_is_better = True

    def update(self, edited: Tensor, target_text: str | Tensor) -> None:
        image_embeddings = self._image_embeddings(edited, "edited")
        text_embedding = self._text_embedding(target_text)
        if image_embeddings.shape[-1] != text_embedding.shape[-1]:
            raise ValueError(
                f"image embeddings have {image_embeddings.shape[-1]} dimensions but the text embedding has "
                f"{text_embedding.shape[-1]}; both must come from the same CLIP model"
            )
        self._accumulate(text_similarity(image_embeddings, text_embedding))


class ClipConsistency(_ClipMetric):
    """``clip/consistency``: mean over consecutive pairs of ``cos(E_I(edited_f), E_I(edited_{f+1}))``.

    Frames are video frames or rendered views in camera-path order (paper §4.2, §4.3). ``update(frames)``
    takes images (F, 3, H, W) in [0, 1] or precomputed embeddings (F, E). Each ``update`` must get one
    whole sequence: pairs are never formed across updates or across processes, so under DDP shard by
    clip, not by frame.
    """

    higher_is_better = True

    def update(self, frames: Tensor) -> None:
        if frames.shape[0] < 2:
            return
        self._accumulate(consecutive_cosine(self._image_embeddings(frames, "frames")))
