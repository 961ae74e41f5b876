"""Metric formulas against hand-computed values (stub encoder with known embeddings)."""

from __future__ import annotations

import math

import pytest
import torch
from metrics_test_support import StubEncoder, constant_frames, mean_abs_distance

from csd_exp.metrics import (
    ClipConsistency,
    ClipDirectionalSimilarity,
    ClipImageSimilarity,
    ConsecutiveFrameLPIPS,
    EditEvaluator,
    ModeAgreement,
    SeamError,
    WarpError,
    directional_similarity,
    keys,
    window_border_lines,
)

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def test_directional_similarity_matches_hand_computation():
    # E_I(src) = (1,0,0), E_I(edit) = (0,1,0): dI = (-1,1,0); E_T(src) = (1,0,0), E_T(tgt) = (0,0,1): dT = (-1,0,1)
    # cos = 1 / (sqrt2 * sqrt2) = 0.5
    encoder = StubEncoder({"a red thing": RED, "a blue thing": BLUE})
    metric = ClipDirectionalSimilarity(encoder)
    metric.update(constant_frames([RED]), constant_frames([GREEN]), "a red thing", "a blue thing")
    assert metric.compute().item() == pytest.approx(0.5, abs=1e-6)


def test_directional_similarity_averages_frames_and_updates():
    encoder = StubEncoder({"src": RED, "tgt": GREEN})
    metric = ClipDirectionalSimilarity(encoder)
    # frame 1: dI = (-1,1,0) parallel to dT = (-1,1,0) -> 1; frame 2: edit == source -> dI = 0 -> 0
    metric.update(constant_frames([RED, BLUE]), constant_frames([GREEN, BLUE]), "src", "tgt")
    # second update: dI = (1,-1,0) anti-parallel -> -1
    metric.update(constant_frames([GREEN]), constant_frames([RED]), "src", "tgt")
    assert metric.compute().item() == pytest.approx((1.0 + 0.0 - 1.0) / 3, abs=1e-6)


def test_directional_similarity_function_on_raw_embeddings():
    source = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    edited = torch.tensor([[0.6, 0.8, 0.0, 0.0]])
    text_source = torch.tensor([0.0, 0.0, 1.0, 0.0])
    text_target = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # dI = (-0.4, 0.8, 0, 0), dT = (0, 0, -1, 1): orthogonal
    assert directional_similarity(source, edited, text_source, text_target).item() == pytest.approx(0.0, abs=1e-7)
    text_target = torch.tensor([-0.4, 0.8, 0.0, 0.0]) + text_source
    assert directional_similarity(source, edited, text_source, text_target).item() == pytest.approx(1.0, abs=1e-6)


def test_clip_image_similarity_and_consistency():
    encoder = StubEncoder()
    diagonal = (1.0, 1.0, 0.0)
    similarity = ClipImageSimilarity(encoder)
    similarity.update(constant_frames([RED, RED]), constant_frames([RED, diagonal]))
    assert similarity.compute().item() == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2, abs=1e-6)

    consistency = ClipConsistency(encoder)
    consistency.update(constant_frames([RED, diagonal, GREEN, GREEN]))
    expected = (1 / math.sqrt(2) + 1 / math.sqrt(2) + 1.0) / 3
    assert consistency.compute().item() == pytest.approx(expected, abs=1e-6)


def test_consistency_of_a_single_frame_is_undefined_not_zero():
    consistency = ClipConsistency(StubEncoder())
    consistency.update(constant_frames([RED]))
    assert math.isnan(consistency.compute().item())


def test_consecutive_lpips_uses_consecutive_pairs_in_chunks():
    frames = constant_frames([(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)])
    metric = ConsecutiveFrameLPIPS(mean_abs_distance, pair_batch_size=2)
    metric.update(frames)
    assert metric.compute().item() == pytest.approx((0.5 + 0.0 + 0.5) / 3, abs=1e-6)


def test_seam_error_counts_only_added_discontinuities():
    source = torch.full((1, 3, 4, 8), 0.5)
    edited = source.clone()
    edited[..., 4:] = 0.7  # a 0.2 jump at column 4
    windows = [(0, 0, 4, 4), (0, 4, 4, 4)]  # interior border line: column 4 only
    assert window_border_lines(windows, 4, 8) == ([4], [])
    metric = SeamError()
    metric.update(source, edited, windows)
    assert metric.compute().item() == pytest.approx(0.2, abs=1e-6)

    # the same jump already in the source: no added seam
    metric = SeamError()
    metric.update(edited, edited, windows)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-7)

    # an edit that removes a source edge is clamped at 0, not rewarded
    metric = SeamError()
    metric.update(edited, source, windows)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-7)


def test_seam_error_averages_rows_and_columns():
    source = torch.zeros(1, 3, 6, 6)
    edited = source.clone()
    edited[:, :, 3:, :] = 0.3  # jump 0.3 across row 3
    windows = [(0, 0, 3, 3), (3, 3, 3, 3)]  # column lines 3; row lines 3
    assert window_border_lines(windows, 6, 6) == ([3], [3])
    metric = SeamError()
    metric.update(source, edited, windows)
    # column 3: edited has no horizontal jump (rows are constant) -> 0; row 3: 0.3
    assert metric.compute().item() == pytest.approx(0.15, abs=1e-6)


def test_seam_error_rejects_windows_outside_the_image():
    with pytest.raises(ValueError, match="outside the 4x8 image"):
        SeamError().update(torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 4, 8), [(0, 4, 4, 8)])


def _ramp_frames(shift: float, frames: int = 3, height: int = 5, width: int = 9) -> torch.Tensor:
    """Horizontal ramps moving right by ``shift`` px per frame: frame_f(x) = (x - f*shift) / 16 + 0.2."""
    xs = torch.arange(width, dtype=torch.float32)
    rows = [((xs - f * shift) / 16.0 + 0.2).expand(height, width) for f in range(frames)]
    return torch.stack(rows)[:, None].expand(-1, 3, -1, -1).contiguous()


def test_warp_error_is_zero_for_the_true_flow_and_masks_out_of_bounds():
    frames = _ramp_frames(shift=1.5)
    # content moves right by 1.5 px: pixel x of frame i+1 shows x - 1.5 of frame i -> dx = -1.5
    flow = torch.zeros(2, 2, 5, 9)
    flow[:, 0] = -1.5
    metric = WarpError()
    metric.update(frames, flow)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-10)


def test_warp_error_with_zero_flow_matches_hand_computation():
    frames = _ramp_frames(shift=1.0)
    metric = WarpError()
    metric.update(frames, torch.zeros(2, 2, 5, 9))
    # every pixel differs by 1/16 between consecutive frames: squared error 1/256
    assert metric.compute().item() == pytest.approx(1 / 256, rel=1e-5)


def test_warp_error_sign_convention_is_checked():
    frames = _ramp_frames(shift=1.0)
    wrong_sign = torch.ones(2, 2, 5, 9)
    wrong_sign[:, 1] = 0.0
    metric = WarpError()
    metric.update(frames, wrong_sign)
    assert metric.compute().item() == pytest.approx((2 / 16) ** 2, rel=1e-5)


def test_warp_error_drops_fully_occluded_pairs():
    frames = _ramp_frames(shift=1.0)
    valid = torch.ones(2, 1, 5, 9, dtype=torch.bool)
    valid[0] = False
    metric = WarpError()
    metric.update(frames, torch.zeros(2, 2, 5, 9), valid)
    assert metric.pair_count.item() == 1
    with pytest.raises(ValueError, match="flow must have shape"):
        WarpError().update(frames, torch.zeros(3, 2, 5, 9))


def test_mode_agreement_is_the_majority_fraction():
    responsibilities = torch.tensor(
        [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.6, 0.4], [0.2, 0.2, 0.6], [0.3, 0.7, 0.0]]
    )
    metric = ModeAgreement()
    metric.update(responsibilities)
    assert metric.compute().item() == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        metric.update(torch.ones(4))


def test_metric_states_stay_out_of_the_way_of_encoder_weights():
    metric = ClipDirectionalSimilarity(StubEncoder())
    assert set(metric.state_dict()) <= {"value_sum", "pair_count"}
    assert not list(metric.parameters())


@pytest.mark.parametrize(
    ("source", "edited", "message"),
    [
        (torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8), "source has 2 frames but edited has 3"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), r"resize one of them"),
        (torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8), r"expected shape \(F, 3, H, W\)"),
        (torch.rand(1, 3, 8, 8) * 255, torch.rand(1, 3, 8, 8), r"values must lie in \[0, 1\]"),
        (torch.zeros(0, 3, 8, 8), torch.zeros(0, 3, 8, 8), "no frames"),
    ],
)
def test_bad_inputs_raise_clear_errors(source, edited, message):
    with pytest.raises(ValueError, match=message):
        EditEvaluator(None, None).evaluate(source, edited)


def test_evaluator_returns_only_computable_metrics():
    torch.manual_seed(0)
    source = torch.rand(3, 3, 16, 24)
    edited = (source + 0.05 * torch.randn_like(source)).clamp(0, 1)
    weight_free = EditEvaluator(None, None).evaluate(source, edited, source_text="", target_text="x", sequence=True)
    assert set(weight_free) == {keys.FIDELITY_PSNR, keys.FIDELITY_SSIM}

    encoder = StubEncoder({"": (1.0, 1.0, 1.0), "make it red": RED})
    evaluator = EditEvaluator(encoder, None, lpips=mean_abs_distance, target_text="make it red")
    report = evaluator.evaluate(
        source,
        edited,
        sequence=True,
        motion=lambda previous, following: torch.zeros(previous.shape[0], 2, *previous.shape[-2:]),
        mode_responsibilities=torch.eye(3)[[0, 0, 2]],
        windows=[(0, 0, 16, 12), (0, 6, 16, 12), (0, 12, 16, 12)],
    )
    assert set(report) == set(keys.ALL_METRIC_KEYS)
    assert report[keys.MODE_AGREEMENT] == pytest.approx(2 / 3)
    assert report[keys.LPIPS_CONSECUTIVE] == pytest.approx(
        mean_abs_distance(edited[:-1], edited[1:]).mean().item(), rel=1e-5
    )
    assert all(math.isfinite(value) for value in report.values())
    # without sequence=True the consecutive-frame metrics are absent, not zero
    single = evaluator.evaluate(source[:1], edited[:1])
    assert keys.CLIP_CONSISTENCY not in single and keys.LPIPS_CONSECUTIVE not in single
    assert keys.CLIP_DIRECTIONAL in single


def test_evaluator_requires_a_target_text_when_clip_is_available():
    evaluator = EditEvaluator(StubEncoder({"": RED}), None)
    with pytest.raises(ValueError, match="needs source_text and target_text"):
        evaluator.evaluate(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
