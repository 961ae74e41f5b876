"""``clip/text_similarity`` and the evaluator's no-source path (generation results: ``source=None``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from metrics_test_support import (
    TINY_CLIP_NAME,
    StubEncoder,
    constant_frames,
    mean_abs_distance,
    write_fake_lpips_backbone,
)

from csd_exp.metrics import ClipTextSimilarity, EditEvaluator, keys, load_clip

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
DIAGONAL = (1.0, 1.0, 0.0)
SOURCELESS_SEQUENCE_KEYS = {
    keys.CLIP_TEXT_SIMILARITY,
    keys.CLIP_CONSISTENCY,
    keys.LPIPS_CONSECUTIVE,
    keys.MODE_AGREEMENT,
}


def test_clip_text_similarity_matches_hand_computation():
    # stub image embeddings are unit mean colours: cos(RED, RED) = 1, cos(DIAGONAL, RED) = 1/√2, cos(BLUE, RED) = 0
    metric = ClipTextSimilarity(StubEncoder({"make it red": RED}))
    metric.update(constant_frames([RED, DIAGONAL]), "make it red")
    assert metric.compute().item() == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2, abs=1e-6)
    metric.update(constant_frames([BLUE]), "make it red")  # pairs accumulate over updates
    assert metric.compute().item() == pytest.approx((1.0 + 1 / math.sqrt(2) + 0.0) / 3, abs=1e-6)


def test_clip_text_similarity_takes_embeddings_and_checks_their_size():
    metric = ClipTextSimilarity()  # no encoder: embeddings only
    images = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    metric.update(images, torch.tensor([0.0, 1.0, 0.0]))
    assert metric.compute().item() == pytest.approx((0.8 + 0.0) / 2, abs=1e-7)
    with pytest.raises(ValueError, match="same CLIP model"):
        metric.update(images, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(RuntimeError, match="has no encoder"):
        metric.update(images, "a text")


def test_evaluator_without_source_returns_exactly_the_sourceless_keys():
    evaluator = EditEvaluator(StubEncoder({"make it red": RED}), None, lpips=mean_abs_distance)
    edited = constant_frames([RED, DIAGONAL, GREEN], height=16, width=16)
    report = evaluator.evaluate(
        None, edited, target_text="make it red", sequence=True, mode_responsibilities=torch.eye(3)[[0, 0, 2]]
    )
    assert set(report) == SOURCELESS_SEQUENCE_KEYS
    assert report[keys.CLIP_TEXT_SIMILARITY] == pytest.approx((1.0 + 1 / math.sqrt(2) + 0.0) / 3, abs=1e-6)
    assert report[keys.CLIP_CONSISTENCY] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    # consecutive constant frames differ by 1 in one channel of three
    assert report[keys.LPIPS_CONSECUTIVE] == pytest.approx(1 / 3, abs=1e-6)
    assert report[keys.MODE_AGREEMENT] == pytest.approx(2 / 3)

    # not a sequence: only the per-frame text similarity; no CLIP either: nothing at all
    assert set(evaluator.evaluate(None, edited, target_text="make it red")) == {keys.CLIP_TEXT_SIMILARITY}
    assert EditEvaluator(None, None).evaluate(None, edited) == {}


def test_text_similarity_is_reported_with_a_source_too_and_does_not_use_it():
    encoder = StubEncoder({"": (1.0, 1.0, 1.0), "make it red": RED})
    evaluator = EditEvaluator(encoder, None, target_text="make it red")
    edited = constant_frames([RED, DIAGONAL], height=16, width=16)
    without_source = evaluator.evaluate(None, edited)
    for source_colours in ([GREEN, GREEN], [BLUE, RED]):
        with_source = evaluator.evaluate(constant_frames(source_colours, height=16, width=16), edited)
        assert {keys.CLIP_TEXT_SIMILARITY, keys.CLIP_DIRECTIONAL, keys.FIDELITY_PSNR} <= set(with_source)
        assert with_source[keys.CLIP_TEXT_SIMILARITY] == without_source[keys.CLIP_TEXT_SIMILARITY]


def test_evaluator_without_source_refuses_what_needs_one():
    evaluator = EditEvaluator(StubEncoder({"make it red": RED}), None)
    edited = constant_frames([RED, GREEN], height=16, width=16)
    with pytest.raises(ValueError, match=r"windows given with source=None"):
        evaluator.evaluate(None, edited, target_text="make it red", windows=[(0, 0, 16, 8), (0, 8, 16, 8)])
    with pytest.raises(ValueError, match=r"motion given with source=None"):
        evaluator.evaluate(None, edited, target_text="make it red", motion=torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="clip/text_similarity needs target_text"):
        evaluator.evaluate(None, edited)
    with pytest.raises(ValueError, match="sequence=True needs at least 2 frames"):
        evaluator.evaluate(None, edited[:1], target_text="make it red", sequence=True)
    with pytest.raises(ValueError, match=r"edited: values must lie in \[0, 1\]"):
        evaluator.evaluate(None, edited * 2, target_text="make it red")


def test_tiny_clip_and_lpips_without_source(tiny_clip_checkpoint, tmp_path, monkeypatch):
    """The real encoder and LPIPS code paths (random tiny weights, offline) give exactly the sourceless keys."""
    checkpoint, _ = tiny_clip_checkpoint
    write_fake_lpips_backbone(tmp_path / "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    encoder = load_clip(TINY_CLIP_NAME, str(checkpoint), batch_size=2, allow_download=False)
    evaluator = EditEvaluator(encoder, "squeeze")
    assert evaluator.lpips is not None
    generator = torch.Generator().manual_seed(5)
    edited = torch.rand(3, 3, 24, 40, generator=generator)
    report = evaluator.evaluate(
        None, edited, target_text="a painting", sequence=True, mode_responsibilities=torch.eye(2)[[0, 1, 1]]
    )
    assert set(report) == SOURCELESS_SEQUENCE_KEYS
    assert all(math.isfinite(value) for value in report.values())
    # the key is the mean cosine of the encoder's own embeddings (float32: agreement to ~1e-7)
    image_embeddings = encoder.encode_images(edited)
    text_embedding = encoder.encode_text(["a painting"])[0]
    expected = F.cosine_similarity(image_embeddings, text_embedding[None], dim=-1).mean().item()
    assert report[keys.CLIP_TEXT_SIMILARITY] == pytest.approx(expected, abs=1e-6)
    assert report[keys.MODE_AGREEMENT] == pytest.approx(2 / 3)
