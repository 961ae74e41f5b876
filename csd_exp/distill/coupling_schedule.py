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
"""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from csd_exp.distill.arguments import checked
from csd_exp.distill.kernels import Kernel, KernelOutput


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
