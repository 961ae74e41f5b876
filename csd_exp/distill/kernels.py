"""Kernels that couple the particles of one distillation step (the k(·,·) of Eq. 8 and Eq. 9).

A kernel takes the particles ``x`` of any shape ``(N, ...)`` (noisy latents x_t, flattened to N × D
inside) and returns a :class:`KernelOutput`:

* ``matrix``    K, (N, N), ``K[i, j] = k(x_j, x_i)`` (symmetric);
* ``repulsion`` R, the shape of ``x``: ``R_i = Σ_j ∇_{x_j} k(x_j, x_i)`` with the sign that is *added* to the
  descent gradient (the official code's ``dK_dX``); for the RBF kernel ``R_i = Σ_j −2γ K_ij (x_i − x_j)``, so
  the descent step ``x_i ← x_i − η (… + R_i)`` pushes x_i away from its neighbours (SVGD's repulsion, Eq. 7
  with the printed sign slip corrected);
* ``gamma``     the scalar in ``K = exp(−γ d²)``;
* ``normalizer`` what the combiner divides by: N for a kernel (SVGD's empirical mean over particles, Eq. 8),
  1 for the identity (so that CSD with ``IdentityKernel()`` is SDS, Eq. 5, for any N).

Distances go through the Gram matrix of the centred particles (d²_ij = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩), so no
N × N × D tensor is ever built: memory is O(N·D + N²), fine for D = 4·128·128 and N = 256. Centring first
removes the common offset, which keeps the float32 cancellation error of the Gram form small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

BANDWIDTH_RULES = ("median", "median_log_n", "fixed")
COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass
class KernelOutput:
    """K, R, γ and the normaliser of one kernel evaluation (see the module docstring for conventions)."""

    matrix: Tensor
    repulsion: Tensor
    gamma: Tensor
    normalizer: float
    is_identity: bool = False  # K is exactly I and R exactly 0: the combiner skips the products


@runtime_checkable
class Kernel(Protocol):
    def __call__(self, x: Tensor) -> KernelOutput: ...


def check_particles(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and its shape unless ``x`` is a finite (N ≥ 1, ...) float tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with at least one feature dimension, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no particles (N = 0), shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} has an empty feature dimension, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype} with shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values, shape {tuple(x.shape)}")


def lower_median(values: Tensor) -> Tensor:
    """The lower median of all entries (``torch.median``'s convention, as in the official code)."""
    return values.flatten().median()


def squared_distances(centred: Tensor) -> Tensor:
    """(N, N) squared Euclidean distances of the rows of ``centred`` via their Gram matrix.

    Distances do not depend on a common shift; pass rows with their mean removed to keep the float32
    cancellation in ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩ small. The result is exactly symmetric with an exactly zero
    diagonal and no negative entries.
    """
    gram = centred @ centred.T
    gram = 0.5 * (gram + gram.T)
    squared_norms = gram.diagonal()
    distances = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram).clamp_min(0.0)
    distances.fill_diagonal_(0.0)
    return distances


class RBFKernel:
    """k(x, x') = exp(−γ ‖x − x'‖²), the SVGD kernel of Eq. 8 / 9, with a choice of bandwidth rule.

    ``bandwidth``:

    * ``"median"`` (default, the official CSD code, a port of DartML's ``svgd_kernel``):
      γ = log(N + 1) / median(d²), the median over all N² squared distances *with* the zero diagonal (lower
      median). Equivalently h = sqrt(0.5 · med / log(N + 1)) and K = exp(−d² / (2h²)).
    * ``"median_log_n"`` (the paper's text-to-3D rule, App. B.2): k = exp(−d² / h) with h = med² / log N, med the
      median pairwise distance over the N(N−1)/2 distinct pairs, i.e. γ = log N / median(d²_{i<j}).
    * ``"fixed"``: γ = ``gamma`` as given.

    ``bandwidth_multiplier`` m scales the bandwidth h of k = exp(−d²/h): γ ← γ / m (m > 1 couples particles
    more strongly). When the median rule meets a zero median (more than half the pairs coincide) it falls back
    to the median of the non-zero squared distances; if all particles coincide, γ = 0 (K = 1, R = 0, which is the
    exact kernel for coincident particles under any bandwidth). The official code would return NaN there; in
    particular N = 1 gives K = [[1]], R = 0, so CSD reduces to SDS exactly (Eq. 8 with N = 1).
    """

    def __init__(
        self,
        bandwidth: str = "median",
        gamma: float | None = None,
        bandwidth_multiplier: float = 1.0,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        if bandwidth not in BANDWIDTH_RULES:
            raise ValueError(f"bandwidth must be one of {BANDWIDTH_RULES}, got {bandwidth!r}")
        if bandwidth == "fixed":
            if gamma is None or not math.isfinite(gamma) or gamma <= 0:
                raise ValueError(f"bandwidth='fixed' needs a finite gamma > 0, got gamma={gamma!r}")
        elif gamma is not None:
            raise ValueError(f"gamma={gamma!r} is only used with bandwidth='fixed' (got bandwidth={bandwidth!r})")
        if not math.isfinite(bandwidth_multiplier) or bandwidth_multiplier <= 0:
            raise ValueError(f"bandwidth_multiplier must be finite and > 0, got {bandwidth_multiplier!r}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype}")
        self.bandwidth = bandwidth
        self.gamma = gamma
        self.bandwidth_multiplier = float(bandwidth_multiplier)
        self.compute_dtype = compute_dtype

    def __repr__(self) -> str:
        return (
            f"RBFKernel(bandwidth={self.bandwidth!r}, gamma={self.gamma!r}, "
            f"bandwidth_multiplier={self.bandwidth_multiplier}, compute_dtype={self.compute_dtype})"
        )

    def _gamma(self, distances: Tensor) -> Tensor:
        count = distances.shape[0]
        if self.bandwidth == "fixed":
            return distances.new_tensor(self.gamma / self.bandwidth_multiplier)
        if self.bandwidth == "median":
            numerator = math.log(count + 1)
            median = lower_median(distances)
        else:  # "median_log_n": distinct pairs only, log N without the +1
            numerator = math.log(count)
            rows, cols = torch.triu_indices(count, count, offset=1, device=distances.device)
            pairs = distances[rows, cols]
            median = lower_median(pairs) if pairs.numel() else distances.new_zeros(())
        if median <= 0:
            positive = distances[distances > 0]
            if positive.numel() == 0:  # all particles coincide (or N = 1): K = 1 for any γ
                return distances.new_zeros(())
            median = lower_median(positive)
        return numerator / median / self.bandwidth_multiplier

    def __call__(self, x: Tensor) -> KernelOutput:
        check_particles(x, "x")
        count = x.shape[0]
        flat = x.detach().reshape(count, -1).to(self.compute_dtype)
        centred = flat - flat.mean(dim=0, keepdim=True)
        distances = squared_distances(centred)
        gamma = self._gamma(distances)
        matrix = torch.exp(-gamma * distances)
        # R_i = Σ_j −2γ K_ij (x_i − x_j) = −2γ (x_i Σ_j K_ij − (K x)_i); a shift of x cancels, so centred is used.
        repulsion = -2.0 * gamma * (matrix.sum(dim=1, keepdim=True) * centred - matrix @ centred)
        return KernelOutput(matrix=matrix, repulsion=repulsion.reshape(x.shape), gamma=gamma, normalizer=float(count))


class IdentityKernel:
    """K = I, R = 0: particles do not interact, and CSD (Eq. 8) becomes SDS (Eq. 5).

    ``normalize_by_count=False`` (default): normaliser 1, so the combiner returns w(t)Δ_i, SDS exactly, for any N.
    ``normalize_by_count=True``: normaliser N, i.e. (w(t)/N)Δ_i, the without-SVGD ablation of the paper's
    Figs. 7–8 with the same 1/N (hence the same step size) as the full method, for paired comparisons.
    ``gamma`` is reported as +inf (the RBF kernel's limit K → I).
    """

    def __init__(self, normalize_by_count: bool = False) -> None:
        self.normalize_by_count = bool(normalize_by_count)

    def __repr__(self) -> str:
        return f"IdentityKernel(normalize_by_count={self.normalize_by_count})"

    def __call__(self, x: Tensor) -> KernelOutput:
        check_particles(x, "x")
        count = x.shape[0]
        dtype = torch.promote_types(x.dtype, torch.float32)
        return KernelOutput(
            matrix=torch.eye(count, dtype=dtype, device=x.device),
            repulsion=torch.zeros(x.shape, dtype=dtype, device=x.device),
            gamma=torch.tensor(math.inf, dtype=dtype, device=x.device),
            normalizer=float(count) if self.normalize_by_count else 1.0,
            is_identity=True,
        )


KERNEL_NAMES = {
    "rbf": RBFKernel,
    "identity": IdentityKernel,
    "identity_normalized": lambda: IdentityKernel(normalize_by_count=True),
}


def make_kernel(spec: str | Kernel) -> Kernel:
    """A kernel from a name (``"rbf"``: official median rule, ``"identity"``: SDS, ``"identity_normalized"``:
    the without-SVGD ablation) or a kernel object (anything callable as ``kernel(x) -> KernelOutput``)."""
    if isinstance(spec, str):
        if spec not in KERNEL_NAMES:
            raise ValueError(f"unknown kernel {spec!r}; choose one of {sorted(KERNEL_NAMES)} or pass a kernel object")
        return KERNEL_NAMES[spec]()
    if callable(spec):
        return spec
    raise ValueError(f"kernel must be a name in {sorted(KERNEL_NAMES)} or a kernel object, got {type(spec).__name__}")


def rbf_kernel(x: Tensor) -> tuple[Tensor, Tensor]:
    """(K, R) of the official RBF kernel (median rule, float32): K (N, N), R of ``x``'s shape."""
    output = RBFKernel()(x)
    return output.matrix, output.repulsion
