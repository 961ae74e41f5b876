"""Kernels that couple the particles of one distillation step (the k(·,·) of Eq. 8 and Eq. 9).

A kernel takes the particles ``x`` of any shape ``(N, ...)`` (noisy latents x_t, flattened to N × D
inside) and returns a :class:`KernelOutput`:

* ``matrix``    K, (N, N), ``K[i, j] = k(x_j, x_i)``; the combiner forms Σ_j K_ij Δ_j (symmetric for the RBF
  kernel, not for :class:`ConsensusKernel`'s row-normalised one);
* ``repulsion`` R, the shape of ``x``: ``R_i = Σ_j ∇_{x_j} k(x_j, x_i)`` with the sign that is *added* to the
  descent gradient (the official code's ``dK_dX``); for the RBF kernel ``R_i = Σ_j −2γ K_ij (x_i − x_j)``, so
  the descent step ``x_i ← x_i − η (… + R_i)`` pushes x_i away from its neighbours (SVGD's repulsion, Eq. 7
  with the printed sign slip corrected);
* ``gamma``     the scalar in ``K = exp(−γ d²)``;
* ``normalizer`` what the combiner divides by: N for a kernel (SVGD's empirical mean over particles, Eq. 8),
  1 for the identity (so that CSD with ``IdentityKernel()`` is SDS, Eq. 5, for any N).

These kernels have ``on_images = False``. Kernels on rendered images (text-to-3D, ``on_images = True``, whose R is
a gradient of the images) are in :mod:`csd_exp.distill.view_kernels`.

Distances go through the Gram matrix of the centred particles (d²_ij = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩), so no
N × N × D tensor is ever built: memory is O(N·D + N²), fine for D = 4·128·128 and N = 256. Centring first
removes the common offset, which keeps the float32 cancellation error of the Gram form small.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from csd_exp.distill.arguments import checked

BANDWIDTH_RULES = ("median", "median_log_n", "fixed")
#: ``kernel.bandwidth``: the median heuristic h = med² (SVGD's), med² / log N, or h = 1 / ``gamma``.
BandwidthRule = Literal[BANDWIDTH_RULES]
#: A number > 0. Bounds are written as the keywords of pydantic's ``Field`` in a dict (this package imports
#: torch only): the compose-time check (csd_exp.schema) reads them from the source.
PositiveFloat = Annotated[float, {"gt": 0}]
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


def bandwidth_gamma(distances: Tensor, bandwidth: str, gamma: float | None, bandwidth_multiplier: float) -> Tensor:
    """γ of k = exp(−γ d²) from (N, N) squared distances (zero diagonal) by one of :data:`BANDWIDTH_RULES`.

    The rules are those of :class:`RBFKernel` (see its docstring): ``"median"`` γ = log(N + 1) / median(d²) over all
    N² entries, ``"median_log_n"`` γ = log N / median(d²_{i<j}) (h = med² / log N), ``"fixed"`` γ = ``gamma``; each
    divided by ``bandwidth_multiplier``, with the zero-median fallbacks described there. Shared by the latent
    kernels and the image kernels of :mod:`csd_exp.distill.view_kernels`.
    """
    count = distances.shape[0]
    if bandwidth == "fixed":
        return distances.new_tensor(gamma / bandwidth_multiplier)
    if bandwidth == "median":
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
    return numerator / median / bandwidth_multiplier


def check_bandwidth(bandwidth: str, gamma: float | None) -> None:
    """Raise ``ValueError`` unless ``gamma`` is given with, and only with, ``bandwidth="fixed"`` (each value's own
    constraint is its annotation's, checked by :func:`~csd_exp.arguments.checked`)."""
    if bandwidth == "fixed" and gamma is None:
        raise ValueError("bandwidth='fixed' needs gamma (a finite number > 0): k = exp(-gamma d^2)")
    if bandwidth != "fixed" and gamma is not None:
        raise ValueError(f"gamma={gamma!r} is only used with bandwidth='fixed' (got bandwidth={bandwidth!r})")


def check_compute_dtype(compute_dtype: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``compute_dtype`` is one of :data:`COMPUTE_DTYPES` (a dtype is a Python
    caller's object, which no config sets, so it has no annotation marker)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype}")


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

    on_images = False  # compares the noisy latents (image kernels: csd_exp.distill.view_kernels)

    @checked
    def __init__(
        self,
        bandwidth: BandwidthRule = "median",
        gamma: PositiveFloat | None = None,
        bandwidth_multiplier: PositiveFloat = 1.0,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        check_bandwidth(bandwidth, gamma)
        check_compute_dtype(compute_dtype)
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
        return bandwidth_gamma(distances, self.bandwidth, self.gamma, self.bandwidth_multiplier)

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

    on_images = False  # compares the noisy latents (image kernels: csd_exp.distill.view_kernels)
    kernel_family = "identity"  # the method labels: sds / dds, or identity_mean with normalize_by_count (no SVGD)

    @checked
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


COUPLING_BISECTION_STEPS = 60  # halvings of the log γ bracket: far below float64 resolution for any d² spread


def _off_diagonal(distances: Tensor) -> Tensor:
    count = distances.shape[0]
    return distances[~torch.eye(count, dtype=torch.bool, device=distances.device)]


def coupling(distances: Tensor, gamma: float) -> float:
    """S(γ) = (1/N) Σ_i Σ_{j≠i} exp(−γ d²_ij) for (N, N) squared distances: the arithmetic mean over particles i
    of the others' total RBF weight relative to the particle's own (K_ii = 1), which is what the combiner's
    ``kernel_self_weight_ratio`` reports (row scaling cancels in that ratio)."""
    return float(torch.exp(-gamma * _off_diagonal(distances.to(torch.float64))).sum()) / distances.shape[0]


def coupling_gamma(distances: Tensor, target: float) -> float:
    """The γ ≥ 0 with S(γ) = ``target`` (see :func:`coupling`), by bisection on log γ, in float64.

    S falls monotonically from N − 1 (γ = 0) to z = (number of ordered pairs i ≠ j at distance 0) / N (γ → ∞).
    Returns 0 for ``target ≥ N − 1`` or when all particles coincide, +inf for ``target ≤ z`` (only coincident
    pairs keep weight). Otherwise, with P/N the positive pairs' share of S, m and M the smallest and largest
    positive d² and c = log((P/N) / (target − z)) > 0, S(c/M) ≥ target ≥ S(c/m) bracket the root.
    """
    count = distances.shape[0]
    pairs = _off_diagonal(distances.detach().to(torch.float64))
    positive = pairs[pairs > 0]
    floor = (pairs.numel() - positive.numel()) / count
    if positive.numel() == 0 or target >= count - 1:
        return 0.0
    if target <= floor:
        return math.inf
    scale = math.log(positive.numel() / count / (target - floor))
    low, high = math.log(scale / float(positive.max())), math.log(scale / float(positive.min()))
    for _ in range(COUPLING_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if float(torch.exp(-math.exp(middle) * positive).sum()) / count + floor > target:
            low = middle  # still coupled too strongly: narrow the kernel
        else:
            high = middle
    return math.exp(0.5 * (low + high))


class ConsensusKernel:
    """An RBF kernel whose bandwidth sets the coupling, with row-normalised weights (beyond the paper, opt-in).

    The median rule fixes the coupling by N alone: in 4·64·64 dimensions all pairwise distances of the noisy
    latents are nearly equal, so K_ij ≈ 1/(N+1) and the others' weight relative to a particle's own is
    S ≈ (N−1)/(N+1) < 1 (docs/coupling.md). This kernel picks, at every step, the γ of k = exp(−γ d²) for which

        S(γ) = (1/N) Σ_i Σ_{j≠i} exp(−γ d²_ij) = ``target_coupling``

    (the arithmetic mean over particles, exactly what the combiner's ``kernel_self_weight_ratio`` reports), by
    bisection on log γ over this step's pairwise squared distances in float64 (:func:`coupling_gamma`). S is at
    most N − 1 (γ → 0, every particle gets the mean residual): a larger target is clamped to N − 1 (γ = 0) with
    a warning naming the bound, once per particle count, rather than an error, since N is known only per step
    (4 windows per panorama step, 12 video frames, every rank's particles under DDP).

    Row normalisation keeps the step size of the uncoupled method. With Z_i = Σ_l exp(−γ d²_il), the returned
    matrix is K̃_ij = exp(−γ d²_ij) / Z_i, so every row sums to 1, the row sum of K = I; with the combiner's 1/N
    (``normalizer`` N), identical residuals give exactly the step of ``kernel=identity_mean``
    (``guidance=csd_edit_no_svgd``). The repulsion is normalised by the same Z_i:

        R̃_i = −Σ_j ∇_y k̃(y, x_i)|_{y=x_j} = −2γ Σ_j K̃_ij (x_i − x_j) = R_i / Z_i,   k̃(y, x_i) = exp(−γ‖y − x_i‖²) / Z_i

    with γ and Z_i statistics of the step's particles, held fixed within the step (as SVGD and the official code
    hold the median rule's γ fixed). The minus sign is the descent-gradient convention of every kernel here
    (Δ ∝ −∇ log p, the official ``dK_dX``). So g_i = (w(t)/N) Σ_j [k̃(x_j, x_i) Δ_j − ∇_{x_j} k̃(x_j, x_i)] is still
    the descent form of SVGD's φ(x_i) (Eq. 7, Eq. 8 / 9) with k̃(·, x_i) in place of k; K̃ is not symmetric.

    N = 1: K̃ = [[1]], R̃ = 0, normaliser 1: SDS exactly (Eq. 5). ``gamma`` reports the solved γ (0 when clamped
    or when all particles coincide, +inf when only coincident pairs keep weight, then R̃ = 0, its limit).
    """

    on_images = False  # compares the noisy latents (image kernels: csd_exp.distill.view_kernels)

    @checked
    def __init__(self, target_coupling: PositiveFloat = 8.0, compute_dtype: torch.dtype = torch.float32) -> None:
        check_compute_dtype(compute_dtype)
        self.target_coupling = float(target_coupling)
        self.compute_dtype = compute_dtype
        self._clamp_warned: set[int] = set()

    def __repr__(self) -> str:
        return f"ConsensusKernel(target_coupling={self.target_coupling}, compute_dtype={self.compute_dtype})"

    def _target(self, count: int) -> float:
        bound = float(count - 1)
        # N = 1 has no others to couple (and is SDS): nothing to warn about.
        if self.target_coupling > bound and count > 1 and count not in self._clamp_warned:
            self._clamp_warned.add(count)
            warnings.warn(
                f"ConsensusKernel: target_coupling={self.target_coupling:g} exceeds the bound S <= N - 1 = "
                f"{bound:g} for N = {count} particles; using S = {bound:g} (gamma = 0: every particle gets the "
                "mean residual). Lower kernel.target_coupling or use more particles per step.",
                RuntimeWarning,
                stacklevel=3,
            )
        return min(self.target_coupling, bound)

    def __call__(self, x: Tensor) -> KernelOutput:
        check_particles(x, "x")
        count = x.shape[0]
        flat = x.detach().reshape(count, -1).to(self.compute_dtype)
        centred = flat - flat.mean(dim=0, keepdim=True)
        distances = squared_distances(centred).to(torch.float64)
        gamma = coupling_gamma(distances, self._target(count)) if count > 1 else 0.0
        if math.isinf(gamma):  # the limit γ → ∞: weight only on coincident particles, no repulsion
            weights = (distances == 0).to(torch.float64)
        else:
            weights = torch.exp(-gamma * distances)
        matrix = (weights / weights.sum(dim=1, keepdim=True)).to(self.compute_dtype)
        if math.isinf(gamma):
            repulsion = torch.zeros_like(centred)
        else:
            # R̃_i = −2γ Σ_j K̃_ij (x_i − x_j), the RBF form with the normalised rows (shift-free: centred).
            repulsion = -2.0 * gamma * (matrix.sum(dim=1, keepdim=True) * centred - matrix @ centred)
        return KernelOutput(
            matrix=matrix,
            repulsion=repulsion.reshape(x.shape),
            gamma=torch.tensor(gamma, dtype=self.compute_dtype, device=x.device),
            normalizer=float(count),
        )


KERNEL_NAMES = {
    "rbf": RBFKernel,
    "consensus": ConsensusKernel,
    "identity": IdentityKernel,
    "identity_normalized": lambda: IdentityKernel(normalize_by_count=True),
}


def make_kernel(spec: str | Kernel) -> Kernel:
    """A kernel from a name (``"rbf"``: official median rule, ``"consensus"``: :class:`ConsensusKernel` with S = 8,
    ``"identity"``: SDS, ``"identity_normalized"``: the without-SVGD ablation) or a kernel object (anything
    callable as ``kernel(x) -> KernelOutput``)."""
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
