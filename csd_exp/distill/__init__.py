"""The distillation core (torch only): kernels, SDS / CSD / CSD-Edit gradient combiners, timestep schedules.

See ``docs/interfaces.md`` for the contract and the paper's Eq. 5 (SDS), Eq. 8 (CSD) and Eq. 9 (CSD-Edit).
"""

from csd_exp.distill.baselines import Baseline, RandomNoise, SourceBranch, make_baseline
from csd_exp.distill.combine import (
    csd_gradient,
    csd_gradient_with_image_kernel,
    distillation_weight,
    sds_gradient,
    surrogate_loss,
)
from csd_exp.distill.coupling_schedule import LowPassCoupling, MajorityCoupling, ReleasedCoupling
from csd_exp.distill.distributed import gather_particles
from csd_exp.distill.guidance import Guidance, GuidanceOutput
from csd_exp.distill.kernels import (
    ConsensusKernel,
    IdentityKernel,
    Kernel,
    KernelOutput,
    RBFKernel,
    coupling,
    coupling_gamma,
    make_kernel,
    rbf_kernel,
    squared_distances,
)
from csd_exp.distill.particles import Particles, Shard
from csd_exp.distill.schedule import TimestepSchedule, draw_step_randomness, step_seed
from csd_exp.distill.view_kernels import FeatureRBFKernel, ImageRBFKernel, LPIPSRBFKernel

__all__ = [
    "Baseline",
    "ConsensusKernel",
    "FeatureRBFKernel",
    "Guidance",
    "GuidanceOutput",
    "IdentityKernel",
    "ImageRBFKernel",
    "Kernel",
    "KernelOutput",
    "LPIPSRBFKernel",
    "LowPassCoupling",
    "MajorityCoupling",
    "Particles",
    "RBFKernel",
    "RandomNoise",
    "ReleasedCoupling",
    "Shard",
    "SourceBranch",
    "TimestepSchedule",
    "coupling",
    "coupling_gamma",
    "csd_gradient",
    "csd_gradient_with_image_kernel",
    "distillation_weight",
    "draw_step_randomness",
    "gather_particles",
    "make_baseline",
    "make_kernel",
    "rbf_kernel",
    "sds_gradient",
    "squared_distances",
    "step_seed",
    "surrogate_loss",
]
