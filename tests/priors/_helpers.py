"""Seeded inputs shared by the prior tests."""

import torch


def seeded_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in [0, 1] from an explicit generator."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def seeded_normal(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


FLOAT32_EPS = torch.finfo(torch.float32).eps


def branch_rounding_tolerance(branches, coefficients, formula_operations: int = 0) -> float:
    """Largest |a - b| between two float32 evaluations of Σ_k c_k ε_k whose branches ε_k come from the same
    float64 network evaluated in different batches.

    In float64, batching changes a branch by ~1e-15 relative, so after the cast to float32 a branch may
    still land on the neighbouring float32 (one ulp, ≤ eps32·max|ε|); the combination then carries that
    difference times Σ|c_k|. When the two sides also evaluate the formula in a different order, each of
    their ``formula_operations`` float32 operations rounds once (½ ulp of an intermediate no larger than
    (1 + Σ|c_k|)·max|ε|) on each side. No constant of one CPU enters: only float32's epsilon and the
    magnitudes of this computation.
    """
    magnitude = max(float(branch.abs().max()) for branch in branches)
    spread = sum(abs(c) for c in coefficients)
    return FLOAT32_EPS * magnitude * (spread + formula_operations * (1.0 + spread))


def ip2p_coefficients(omega_y: float, omega_s: float) -> tuple[float, float, float]:
    """Weights of ε(x̃,y), ε(x̃,∅), ε(∅,∅) in InstructPix2Pix's 3-way guidance."""
    return omega_y, omega_s - omega_y, 1.0 - omega_s
