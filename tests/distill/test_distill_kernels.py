"""Kernels: K and R against an independent float64 re-derivation of DartML's SVGD formulas; edge cases; bad input."""

import math

import pytest
import torch

from csd_exp.distill import IdentityKernel, RBFKernel, make_kernel, rbf_kernel


def dartml_reference(x: torch.Tensor, median_of=None):
    """DartML ``svgd_kernel`` in float64 by explicit pairwise differences, with the official code's lower median.

    h = sqrt(0.5 · med / log(N + 1)), K = exp(−d² / (2h²)), dxkxy_i = Σ_j K_ij (x_i − x_j) / h²; the official torch
    port returns dK_dX = −dxkxy, the term added to the descent gradient.
    """
    flat = x.double().reshape(x.shape[0], -1)
    count = flat.shape[0]
    differences = flat[:, None, :] - flat[None, :, :]
    distances = (differences**2).sum(-1)
    values = distances.flatten() if median_of is None else median_of(distances)
    median = values.sort().values[(values.numel() - 1) // 2]  # lower median
    bandwidth = math.sqrt(0.5 * median.item() / math.log(count + 1))
    matrix = torch.exp(-distances / bandwidth**2 / 2)
    dxkxy = (matrix[:, :, None] * differences).sum(1) / bandwidth**2
    return matrix, (-dxkxy).reshape(x.shape), 1.0 / (2 * bandwidth**2)


@pytest.mark.parametrize("count", [3, 5, 7, 8])
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float64])
def test_rbf_matches_dartml_float64(count, compute_dtype):
    generator = torch.Generator().manual_seed(count)
    x = torch.randn(count, 4, 16, 16, generator=generator) + 2.0
    output = RBFKernel(compute_dtype=compute_dtype)(x)
    matrix, repulsion, gamma = dartml_reference(x)
    assert output.matrix.shape == (count, count) and output.repulsion.shape == x.shape
    assert output.normalizer == count
    torch.testing.assert_close(output.matrix.double(), matrix, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.repulsion.double(), repulsion, atol=1e-6, rtol=1e-6)
    assert float(output.gamma) == pytest.approx(gamma, rel=1e-6)


def test_rbf_kernel_function_is_the_official_default():
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    matrix, repulsion = rbf_kernel(x)
    reference_matrix, reference_repulsion, _ = dartml_reference(x)
    torch.testing.assert_close(matrix.double(), reference_matrix, atol=1e-6, rtol=0)
    torch.testing.assert_close(repulsion.double(), reference_repulsion, atol=1e-6, rtol=1e-6)


def test_median_includes_zero_diagonal_and_is_lower_median():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    output = RBFKernel(compute_dtype=torch.float64)(x)
    distances = torch.cdist(x, x) ** 2
    values = distances.flatten().sort().values  # 16 entries, 4 of them the zero diagonal
    lower_median = values[7]
    assert float(output.gamma) == pytest.approx(math.log(5) / lower_median.item(), rel=1e-12)
    assert float(output.gamma) != pytest.approx(math.log(5) / values[8].item(), rel=1e-6)


def test_repulsion_pushes_particles_apart():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    output = RBFKernel(bandwidth="fixed", gamma=0.5)(x)
    # descent step x ← x − η R: particle 0 moves to −x, particle 1 to +x
    assert output.repulsion[0, 0] > 0 and output.repulsion[1, 0] < 0
    expected = -2 * 0.5 * math.exp(-0.5) * (0.0 - 1.0)
    assert output.repulsion[0, 0].item() == pytest.approx(expected, rel=1e-6)


def test_paper_text_to_3d_rule_and_multiplier():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    distances = torch.cdist(x, x) ** 2
    rows, cols = torch.triu_indices(5, 5, offset=1)
    pairs = distances[rows, cols].sort().values  # 10 distinct pairs, lower median is index 4
    output = RBFKernel(bandwidth="median_log_n", compute_dtype=torch.float64)(x)
    assert float(output.gamma) == pytest.approx(math.log(5) / pairs[4].item(), rel=1e-12)
    widened = RBFKernel(bandwidth="median_log_n", bandwidth_multiplier=10.0, compute_dtype=torch.float64)(x)
    assert float(widened.gamma) == pytest.approx(float(output.gamma) / 10, rel=1e-12)
    fixed = RBFKernel(bandwidth="fixed", gamma=0.25, compute_dtype=torch.float64)(x)
    torch.testing.assert_close(fixed.matrix, torch.exp(-0.25 * distances), atol=1e-12, rtol=0)


def test_single_and_coincident_particles_give_ones_and_no_repulsion():
    single = RBFKernel()(torch.randn(1, 4, 8, 8))
    assert torch.equal(single.matrix, torch.ones(1, 1)) and not single.repulsion.any()
    same = RBFKernel()(torch.ones(3, 5))
    assert torch.equal(same.matrix, torch.ones(3, 3)) and not same.repulsion.any()
    # 3 of 4 particles coincide: the median of d² is 0; the rule falls back to the non-zero distances
    mostly_same = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    output = RBFKernel()(mostly_same)
    assert torch.isfinite(output.matrix).all() and torch.isfinite(output.repulsion).all()
    assert float(output.gamma) == pytest.approx(math.log(5) / 4.0)
    # N = 2: two of the four entries of d² are the zero diagonal, so the official lower median is 0 (its γ
    # would be inf and K NaN); the fallback uses the pair's distance
    pair = RBFKernel()(torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert float(pair.gamma) == pytest.approx(math.log(3) / 9.0)
    assert pair.matrix[0, 1].item() == pytest.approx(1.0 / 3.0, rel=1e-6)


def test_large_particles_without_pairwise_tensor():
    """D = 4·128·128 and N = 256: spot-check rows against direct float64 differences."""
    count, shape = 256, (4, 128, 128)
    x = torch.randn(count, *shape, generator=torch.Generator().manual_seed(4)) * 0.5 + 1.0
    output = RBFKernel()(x)
    flat = x.double().reshape(count, -1)
    gamma = float(output.gamma)
    for row in (0, 101, 255):
        differences = flat[row] - flat
        distances = (differences**2).sum(-1)
        matrix_row = torch.exp(-gamma * distances)
        repulsion_row = (-2 * gamma * matrix_row[:, None] * differences).sum(0)
        torch.testing.assert_close(output.matrix[row].double(), matrix_row, atol=1e-6, rtol=0)
        torch.testing.assert_close(output.repulsion[row].double().flatten(), repulsion_row, atol=1e-6, rtol=1e-4)
    gram = flat @ flat.T  # float64: exact enough for the median
    values = (gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram).flatten().sort().values
    assert gamma == pytest.approx(math.log(count + 1) / values[(values.numel() - 1) // 2].item(), rel=1e-4)


def test_identity_kernel():
    x = torch.randn(4, 3, 2)
    plain, ablation = IdentityKernel()(x), IdentityKernel(normalize_by_count=True)(x)
    assert torch.equal(plain.matrix, torch.eye(4)) and not plain.repulsion.any()
    assert plain.normalizer == 1.0 and ablation.normalizer == 4.0 and plain.is_identity


def test_make_kernel():
    assert isinstance(make_kernel("rbf"), RBFKernel)
    assert make_kernel("identity_normalized").normalize_by_count
    kernel = RBFKernel(bandwidth_multiplier=2.0)
    assert make_kernel(kernel) is kernel
    with pytest.raises(ValueError, match="unknown kernel 'gauss'"):
        make_kernel("gauss")


@pytest.mark.parametrize("kernel", [RBFKernel(), IdentityKernel()])
def test_bad_particles_name_argument_and_shape(kernel):
    with pytest.raises(ValueError, match=r"x holds no particles.*\(0, 4\)"):
        kernel(torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"x must have shape.*\(4,\)"):
        kernel(torch.zeros(4))
    bad = torch.zeros(3, 2)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or inf.*\(3, 2\)"):
        kernel(bad)


def test_bad_kernel_options():
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(bandwidth="silverman")
    with pytest.raises(ValueError, match="gamma"):
        RBFKernel(bandwidth="fixed")
    with pytest.raises(ValueError, match="gamma"):
        RBFKernel(gamma=1.0)
    with pytest.raises(ValueError, match="bandwidth_multiplier"):
        RBFKernel(bandwidth_multiplier=0.0)
    with pytest.raises(ValueError, match="compute_dtype"):
        RBFKernel(compute_dtype=torch.float16)
