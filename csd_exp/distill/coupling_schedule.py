"""A coupling schedule: strong consensus while the particles choose their mode, then released (beyond the paper).

On the exact-score prior a particle commits to one edit within its first updates and the chosen mode is an
attractor afterwards (docs/coupling.md §2). Coupling decides *which* mode the particles take only at the
start; kept on, it also mixes the others' residuals into every particle's update for the whole run, which pulls
each particle off its own ideal edit (consensus, S = 8: 27.9 dB from the ideal edit on video against 47.8 dB
without coupling). :class:`ReleasedCoupling` therefore uses one kernel (``early``, e.g. :class:`ConsensusKernel`)
for the first ``release_fraction`` of the run's steps and another (``late``, e.g. the no-SVGD identity with the
same 1/N, or the paper's median-rule RBF) afterwards:

    K(step) = early   if step < round(release_fraction · horizon)
              late    otherwise,

``horizon`` the number of distillation steps (the timestep schedule's ``max_steps``, which the task sets).
Nothing else differs between the phases: t, ε and the step size come from the same stream, so a run with the
schedule is paired with runs of either kernel alone.

Ends: ``release_fraction = 0`` *is* ``late`` at every step (``kernel=identity_mean``: no coupling, or
``kernel=rbf``: the median rule, bit for bit), ``release_fraction = 1`` *is* ``early``. With one particle any
kernel here gives K = [[1]], R = 0 (SDS).

The schedule needs the step, which a bare kernel call ``kernel(x)`` does not carry: :class:`~csd_exp.distill.Guidance`
asks :meth:`ReleasedCoupling.at_step` for the step's kernel (any kernel with an ``at_step(step, horizon)`` method
is scheduled this way), so the phase depends only on the global step and survives a resume. Calling the schedule
directly is an error that says so.

Two early kernels that cost less than consensus (docs/coupling.md §7):

* :class:`MajorityCoupling` (``kernel=majority_release``, the kernel of ``method=csd_edit_coupled``) reads the
  step's residuals, leaves the particles whose coarse residual points with the majority's alone, gives the others
  the majority's mean residual, and is K = I (no coupling, bit for bit) at every step where all coarse residuals
  agree: it releases on a measured condition, not only at the fixed fraction, which is then a cap.
* :class:`LowPassCoupling` (``kernel=lowpass_release``) evaluates a kernel on, and mixes, only the coarse part of
  the particles (each channel's mean over a grid), leaving each particle's detail its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor

from csd_exp.distill.arguments import checked
from csd_exp.distill.kernels import IdentityKernel, Kernel, KernelOutput, check_particles, squared_distances


class ReleasedCoupling:
    """``early`` for the first ``release_fraction`` of the steps, then ``late`` (see the module docstring).

    Args:
        early: the kernel while particles choose their mode (e.g. ``ConsensusKernel(target_coupling=8)``).
        late: the kernel afterwards (e.g. ``IdentityKernel(normalize_by_count=True)``: no coupling, or
            ``RBFKernel()``: the paper's median rule).
        release_fraction: in [0, 1], the fraction of the run's steps that use ``early``.
    """

    @checked
    def __init__(
        self, early: Kernel, late: Kernel, release_fraction: Annotated[float, {"ge": 0, "le": 1}] = 0.05
    ) -> None:
        for name, kernel in (("early", early), ("late", late)):
            if not callable(kernel) or isinstance(kernel, str):
                raise ValueError(
                    f"{name} must be a kernel object (callable as kernel(x) -> KernelOutput), got {kernel!r}"
                )
            if getattr(kernel, "on_images", False):
                raise ValueError(
                    f"{name}={kernel!r} compares rendered images; ReleasedCoupling schedules latent kernels"
                )
            if hasattr(kernel, "at_step"):
                raise ValueError(f"{name}={kernel!r} is itself a schedule; nest kernels, not schedules")
        self.early = early
        self.late = late
        self.release_fraction = float(release_fraction)

    on_images = False  # compares the noisy latents (image kernels: csd_exp.distill.view_kernels)
    kernel_family = "released_coupling"  # the method labels: csd_edit_coupled (csd_exp/guidance_names.py)

    def __repr__(self) -> str:
        return f"ReleasedCoupling(early={self.early!r}, late={self.late!r}, release_fraction={self.release_fraction})"

    def release_step(self, horizon: int) -> int:
        """The first step that uses ``late``: round(release_fraction · horizon)."""
        return round(self.release_fraction * int(horizon))

    def at_step(self, step: int, horizon: int | None) -> Kernel:
        """The kernel of distillation step ``step`` (0-based) of a run of ``horizon`` steps."""
        if self.release_fraction == 0.0:
            return self.late
        if self.release_fraction == 1.0:
            return self.early
        if horizon is None or int(horizon) <= 0:
            raise ValueError(
                f"{self!r} needs the run's number of steps to place its release: the task sets it on the timestep "
                "schedule (schedule.max_steps); set schedule.max_steps when calling Guidance directly"
            )
        return self.early if int(step) < self.release_step(horizon) else self.late

    def __call__(self, x: Tensor) -> KernelOutput:
        raise TypeError(
            f"{self!r} depends on the step: call kernel.at_step(step, horizon)(x) (Guidance does this), not kernel(x)"
        )


@dataclass
class ProjectedKernelOutput(KernelOutput):
    """A :class:`KernelOutput` whose K mixes only ``projection(Δ)``: the combiner forms Δ + (K PΔ − PΔ)."""

    projection: Callable[[Tensor], Tensor] | None = None


#: Cells per side of the coarse partition (1: each channel's mean).
GridCells = Annotated[int, {"ge": 1}]
#: A cosine threshold strictly inside (-1, 1).
Cosine = Annotated[float, {"gt": -1, "lt": 1}]


def coarse_part(x: Tensor, grid: int, owner: str = "coarse_part") -> Tensor:
    """P x for particles (N, C, H, W): every channel replaced by its mean over each cell of a ``grid`` × ``grid``
    partition (the orthogonal projection onto images constant on the cells; ``grid = 1``: the channel mean)."""
    if x.ndim != 4:
        raise ValueError(f"{owner} needs image-shaped particles (N, C, H, W), got {tuple(x.shape)}")
    count, channels, height, width = x.shape
    if height % grid or width % grid:
        raise ValueError(
            f"{owner} grid={grid} must divide the latents' height and width, got {height} x {width}: "
            "choose kernel.early.grid among their common divisors (1: the per-channel mean)"
        )
    cells = x.reshape(count, channels, grid, height // grid, grid, width // grid)
    means = cells.mean(dim=(3, 5), keepdim=True)
    return means.expand_as(cells).reshape(x.shape)


class LowPassCoupling:
    """Couple only the coarse, mode-deciding part of the particles; leave each particle's detail its own (beyond
    the paper, opt-in).

    A colour edit's mode (pop-art's hue, night's tint) shows in every pixel, so it shows in the particles' coarse
    means; the detail (edges, texture) is each particle's own content, which full consensus mixes across frames
    and which each particle must then undo (docs/coupling.md §5, §7). With P the orthogonal projection onto
    images constant on the cells of a ``grid`` × ``grid`` partition (``grid = 1``: the per-channel spatial mean),

        K = kernel(P x_t),    g_i = (w(t)/n) (Δ_i + Σ_j K_ij PΔ_j − PΔ_i + R_i),

    i.e. the wrapped kernel (e.g. :class:`ConsensusKernel`) is evaluated on the coarse part of the noisy
    latents, mixes only the coarse part of the residuals, and its repulsion, −2γ Σ_j K_ij (Px_i − Px_j), lies in
    the coarse part too (P is symmetric, so this is the gradient of k(Py, Px_i) in y). (I − P)Δ_i passes
    unchanged, with the wrapped kernel's normaliser (N for consensus: the step of ``kernel=identity_mean``).
    ``grid`` equal to the latent size makes P = I: the wrapped kernel on the full particles. N = 1: K = [[1]],
    so KPΔ − PΔ = 0 exactly and the step is the wrapped kernel's, SDS for consensus.

    Args:
        kernel: a latent kernel (``on_images`` false, not a schedule), e.g. ``ConsensusKernel(8)``.
        grid: cells per side of the coarse partition; must divide the latents' height and width.
    """

    on_images = False  # compares the (projected) noisy latents

    @checked
    def __init__(self, kernel: Kernel, grid: GridCells = 1) -> None:
        if not callable(kernel) or isinstance(kernel, str):
            raise ValueError(f"kernel must be a kernel object (callable as kernel(x) -> KernelOutput), got {kernel!r}")
        if getattr(kernel, "on_images", False) or hasattr(kernel, "at_step") or isinstance(kernel, LowPassCoupling):
            raise ValueError(f"LowPassCoupling wraps a plain latent kernel, got {kernel!r}")
        self.kernel = kernel
        self.grid = int(grid)

    def __repr__(self) -> str:
        return f"LowPassCoupling(kernel={self.kernel!r}, grid={self.grid})"

    def project(self, x: Tensor) -> Tensor:
        """P x: every channel replaced by its mean over each cell of the grid × grid partition (same shape)."""
        return coarse_part(x, self.grid, type(self).__name__)

    def __call__(self, x: Tensor) -> ProjectedKernelOutput:
        output = self.kernel(self.project(x))
        return ProjectedKernelOutput(
            matrix=output.matrix,
            repulsion=output.repulsion,
            gamma=output.gamma,
            normalizer=output.normalizer,
            is_identity=output.is_identity,
            projection=self.project,
        )


MajorityReplace = Literal["whole", "coarse"]
MajorityDonor = Literal["mean", "nearest"]


class MajorityCoupling:
    """Turn the particles that disagree towards the majority, leave the majority alone, and stop once they agree
    (beyond the paper, opt-in; docs/coupling.md §7).

    Mixing everyone's residuals (consensus, :class:`LowPassCoupling`) moves *every* particle off its own path
    while it lasts, the majority too, and the exact prior shows what that costs: a particle's position after
    100 steps is sensitive to any early detour (docs/coupling.md §7). This coupling reads the step's residuals
    and changes only those of the particles that disagree:

    1. u_i = PΔ_i, the coarse part of particle i's residual (:func:`coarse_part`, ``grid`` cells per side): where a
       colour edit's mode shows. c_ij = cos(u_i, u_j), computed in float64.
    2. If every c_ij ≥ ``agreement`` the particles agree: K = I (``is_identity``), the step of
       ``kernel=identity_mean`` bit for bit. Any prior can compute this; it needs no mode oracle.
    3. Otherwise the majority M is the set {j : c_lj ≥ ``agreement``} of the particle l with the most such
       neighbours (ties: the lowest index). A particle in M keeps its residual (K_ii = 1). A particle i outside
       M takes a donor residual D_i: the mean over M ∪ {i} (``donor="mean"``, K_ij = 1/|M ∪ {i}| on row i) or
       that of the particle of M nearest to it in x_t (``donor="nearest"``, K_ij = 1 there; ties: the lowest
       index). ``replace="whole"``: g_i = (w(t)/N) D_i; ``replace="coarse"``: only the coarse part is taken,
       g_i = (w(t)/N) (Δ_i − PΔ_i + P D_i), the combiner's Δ + (K PΔ − PΔ).
       No repulsion; normaliser N (the step of the no-SVGD ablation); ``gamma`` is reported as 0 (not an RBF).

    Deterministic, and under DDP the combiner gathers every rank's residuals first, so every rank takes the same
    decision. N = 1: K = [[1]] (SDS with normaliser 1). Use it as the early kernel of :class:`ReleasedCoupling`
    (``kernel=majority_release``), whose ``release_fraction`` caps the steps it may act on.

    Args:
        agreement: the cosine in (−1, 1) above which two coarse residuals point the same way.
        grid: cells per side of the coarse partition; must divide the latents' height and width.
        replace: ``"whole"`` (the donor's residual) or ``"coarse"`` (only its coarse part; the particle keeps
            its detail).
        donor: ``"mean"`` (of the majority and the particle) or ``"nearest"`` (the nearest majority particle).
    """

    on_images = False  # reads the residuals and the (unused) noisy latents, not images

    @checked
    def __init__(
        self,
        agreement: Cosine = 0.9,
        grid: GridCells = 1,
        replace: MajorityReplace = "whole",
        donor: MajorityDonor = "nearest",
    ) -> None:
        self.replace = replace
        self.donor = donor
        self.agreement = float(agreement)
        self.grid = int(grid)

    def __repr__(self) -> str:
        return (
            f"MajorityCoupling(agreement={self.agreement}, grid={self.grid}, replace={self.replace!r}, "
            f"donor={self.donor!r})"
        )

    def project(self, x: Tensor) -> Tensor:
        return coarse_part(x, self.grid, type(self).__name__)

    def __call__(self, x: Tensor) -> KernelOutput:
        raise TypeError(
            f"{self!r} reads the residuals: call kernel.couple(noisy_latents, residuals) (csd_gradient does)"
        )

    def majority(self, residuals: Tensor) -> Tensor | None:
        """The (N,) bool mask of the majority, or None when all coarse residuals agree (then K = I)."""
        count = residuals.shape[0]
        coarse = self.project(residuals.detach()).reshape(count, -1).to(torch.float64)
        norms = coarse.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        unit = coarse / norms[:, None]
        agrees = (unit @ unit.T) >= self.agreement
        agrees.fill_diagonal_(True)
        if bool(agrees.all()):
            return None
        leader = int(agrees.sum(dim=1).argmax())  # argmax returns the first maximum: ties take the lowest index
        return agrees[leader]

    def couple(self, noisy_latents: Tensor, residuals: Tensor) -> KernelOutput:
        check_particles(residuals, "residuals")
        count = residuals.shape[0]
        dtype = torch.promote_types(residuals.dtype, torch.float32)
        majority = self.majority(residuals) if count > 1 else None
        if majority is None:
            return IdentityKernel(normalize_by_count=True)(residuals)
        matrix = torch.eye(count, dtype=torch.float64, device=residuals.device)
        if self.donor == "nearest":
            flat = noisy_latents.detach().reshape(count, -1).to(torch.float64)
            distances = squared_distances(flat - flat.mean(dim=0, keepdim=True))
            distances[:, ~majority] = math.inf
        for row in torch.nonzero(~majority).flatten().tolist():
            if self.donor == "nearest":  # the majority particle nearest in x_t (ties: the lowest index)
                matrix[row, row] = 0.0
                matrix[row, int(distances[row].argmin())] = 1.0
                continue
            members = majority.clone()
            members[row] = True
            matrix[row] = members.to(torch.float64) / float(members.sum())
        return ProjectedKernelOutput(
            matrix=matrix.to(dtype),
            repulsion=torch.zeros(residuals.shape, dtype=dtype, device=residuals.device),
            gamma=torch.tensor(0.0, dtype=dtype, device=residuals.device),
            normalizer=float(count),
            projection=self.project if self.replace == "coarse" else None,
        )
