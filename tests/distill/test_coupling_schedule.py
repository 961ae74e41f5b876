"""ReleasedCoupling: at its ends it is the late / early kernel bit for bit, it switches at the release step, N = 1 is
SDS, two gloo ranks equal one process, and the opt-in presets and experiments compose."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distill_fakes import FakePrior
from framework_support import compose_config

from csd_exp.distill import (
    ConsensusKernel,
    Guidance,
    IdentityKernel,
    LowPassCoupling,
    MajorityCoupling,
    RBFKernel,
    ReleasedCoupling,
    TimestepSchedule,
    csd_gradient,
)

STEPS = 10
SEED = 3


def guidance(kernel) -> Guidance:
    return Guidance(
        "source_branch",
        kernel,
        schedule=TimestepSchedule(max_steps=STEPS),
        guidance_scale=1.5,
        image_guidance_scale=1.5,
    )


def particles(count: int = 5, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    latents, sources = (torch.randn(count, 3, 8, 8, generator=generator) for _ in range(2))
    from csd_exp.distill import Particles

    return {"particles": Particles(latents, source_latents=sources, condition=sources)}


def run(kernel, step: int, count: int = 5):
    out = guidance(kernel)(FakePrior(), **particles(count), prompt="p", step=step, seed=SEED)
    return out.gradients, out.diagnostics


def no_svgd() -> IdentityKernel:
    return IdentityKernel(normalize_by_count=True)


@pytest.mark.parametrize("late", [no_svgd, RBFKernel], ids=["no_coupling", "median_rule"])
def test_release_at_zero_is_the_late_kernel_bit_for_bit(late):
    schedule = ReleasedCoupling(ConsensusKernel(8.0), late(), release_fraction=0.0)
    for step in range(STEPS):
        released, released_diagnostics = run(schedule, step)
        plain, plain_diagnostics = run(late(), step)
        assert torch.equal(released, plain)
        assert released_diagnostics == plain_diagnostics


def test_release_at_one_is_the_early_kernel_bit_for_bit():
    schedule = ReleasedCoupling(ConsensusKernel(3.0), no_svgd(), release_fraction=1.0)
    for step in range(STEPS):
        assert torch.equal(run(schedule, step)[0], run(ConsensusKernel(3.0), step)[0])


def test_the_kernel_switches_at_the_release_step():
    schedule = ReleasedCoupling(ConsensusKernel(3.0), no_svgd(), release_fraction=0.3)
    assert schedule.release_step(STEPS) == 3
    for step in range(STEPS):
        expected = ConsensusKernel(3.0) if step < 3 else no_svgd()
        gradients, diagnostics = run(schedule, step)
        assert torch.equal(gradients, run(expected, step)[0])
        # the logged coupling S shows the phase: the target while coupled, 0 once released
        assert diagnostics["kernel_self_weight_ratio"] == (pytest.approx(3.0, rel=1e-6) if step < 3 else 0.0)
    # the phases really differ (the test above would also pass if both kernels were equal)
    assert not torch.equal(run(ConsensusKernel(3.0), 0)[0], run(no_svgd(), 0)[0])


def test_one_particle_is_sds_in_both_phases():
    schedule = ReleasedCoupling(ConsensusKernel(8.0), no_svgd(), release_fraction=0.5)
    with pytest.warns(UserWarning, match="single particle"):
        for step in (0, STEPS - 1):
            assert torch.equal(run(schedule, step, count=1)[0], run(IdentityKernel(), step, count=1)[0])


def test_bad_arguments_are_refused_early():
    with pytest.raises(ValueError, match=r"release_fraction=1.5 is not allowed"):
        ReleasedCoupling(ConsensusKernel(), no_svgd(), release_fraction=1.5)
    with pytest.raises(ValueError, match="early must be a kernel object"):
        ReleasedCoupling("consensus", no_svgd())
    with pytest.raises(ValueError, match="nest kernels, not schedules"):
        ReleasedCoupling(ReleasedCoupling(ConsensusKernel(), no_svgd()), no_svgd())
    schedule = ReleasedCoupling(ConsensusKernel(), no_svgd(), release_fraction=0.5)
    with pytest.raises(TypeError, match=r"at_step\(step, horizon\)"):
        schedule(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs the run's number of steps"):
        schedule.at_step(0, None)


# ----------------------------------------------------------------------------- coupling only the coarse part
def coarse(x: torch.Tensor, grid: int) -> torch.Tensor:
    """P x written out independently: the mean of every grid cell, by average pooling and nearest upsampling."""
    pooled = torch.nn.functional.avg_pool2d(x, (x.shape[2] // grid, x.shape[3] // grid))
    return torch.nn.functional.interpolate(pooled, size=x.shape[2:], mode="nearest")


def random_pair(count: int = 5, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(count, 3, size, size, generator=generator) for _ in range(2))


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_low_pass_coupling_mixes_only_the_coarse_part(grid):
    residuals, noisy = random_pair()
    weight, count = 1.0 - 0.35, residuals.shape[0]
    gradients = csd_gradient(residuals, noisy, LowPassCoupling(ConsensusKernel(3.0), grid=grid), 0.35)
    # the detail, (I - P) g, is the no-SVGD step's: each particle keeps its own
    detail = gradients - coarse(gradients, grid)
    expected_detail = (weight / count) * (residuals - coarse(residuals, grid))
    scale = float(residuals.abs().max()) * weight / count
    torch.testing.assert_close(detail, expected_detail, rtol=0, atol=1e-5 * scale)
    # the coarse part, P g, is the consensus kernel evaluated on, and mixing, the coarse parts alone
    kernel = ConsensusKernel(3.0)(coarse(noisy, grid))
    mixed = (kernel.matrix @ coarse(residuals, grid).reshape(count, -1)).reshape(residuals.shape)
    expected_coarse = (weight / count) * (mixed + kernel.repulsion)
    torch.testing.assert_close(coarse(gradients, grid), expected_coarse, rtol=0, atol=1e-5 * scale)
    # and it is coupled: the coarse part differs from the uncoupled one by more than rounding
    assert float((expected_coarse - (weight / count) * coarse(residuals, grid)).abs().max()) > 1e-2 * scale


def test_low_pass_coupling_on_the_finest_grid_is_the_wrapped_kernel():
    residuals, noisy = random_pair(size=4)
    full = csd_gradient(residuals, noisy, ConsensusKernel(3.0), 0.35)
    finest = csd_gradient(residuals, noisy, LowPassCoupling(ConsensusKernel(3.0), grid=4), 0.35)
    torch.testing.assert_close(finest, full, rtol=0, atol=1e-6 * float(full.abs().max()))


def test_low_pass_release_ends_and_one_particle():
    early = LowPassCoupling(ConsensusKernel(3.0))
    released = ReleasedCoupling(early, no_svgd(), release_fraction=0.0)
    coupled = ReleasedCoupling(early, no_svgd(), release_fraction=1.0)
    for step in (0, STEPS - 1):
        assert torch.equal(run(released, step)[0], run(no_svgd(), step)[0])
        assert torch.equal(run(coupled, step)[0], run(early, step)[0])
    with pytest.warns(UserWarning, match="single particle"):
        assert torch.equal(run(early, 0, count=1)[0], run(IdentityKernel(), 0, count=1)[0])


def test_low_pass_coupling_refuses_bad_arguments():
    with pytest.raises(ValueError, match="grid=0 is not allowed"):
        LowPassCoupling(ConsensusKernel(), grid=0)
    with pytest.raises(ValueError, match="wraps a plain latent kernel"):
        LowPassCoupling(ReleasedCoupling(ConsensusKernel(), no_svgd()))
    residuals, noisy = random_pair(size=6)
    with pytest.raises(ValueError, match="must divide the latents' height and width"):
        csd_gradient(residuals, noisy, LowPassCoupling(ConsensusKernel(), grid=4), 0.35)


# ------------------------------------------------------------------- turning only the particles that disagree
def split_residuals(signs, size: int = 8):
    """Residuals whose coarse (channel-mean) parts point along +v or −v as ``signs`` says, plus zero-mean detail."""
    generator = torch.Generator().manual_seed(2)
    detail = torch.randn(len(signs), 3, size, size, generator=generator)
    detail = detail - detail.mean(dim=(2, 3), keepdim=True)
    direction = torch.tensor([1.0, -0.5, 0.25]).reshape(1, 3, 1, 1)
    scale = torch.tensor(signs, dtype=torch.float32) * (1.0 + 0.1 * torch.arange(len(signs)))
    noisy = torch.randn(len(signs), 3, size, size, generator=generator)
    return detail + scale.reshape(-1, 1, 1, 1) * direction, noisy


def test_majority_coupling_is_no_coupling_once_the_particles_agree():
    residuals, noisy = split_residuals([1, 1, 1, 1, 1])
    coupled, coupled_diagnostics = csd_gradient(residuals, noisy, MajorityCoupling(), 0.35, return_diagnostics=True)
    plain, plain_diagnostics = csd_gradient(residuals, noisy, no_svgd(), 0.35, return_diagnostics=True)
    assert torch.equal(coupled, plain)
    assert coupled_diagnostics == plain_diagnostics


@pytest.mark.parametrize("replace", ["whole", "coarse"])
def test_majority_coupling_turns_only_the_minority(replace):
    signs = [1, -1, 1, -1, 1]  # majority {0, 2, 4}; 1 and 3 point the other way
    residuals, noisy = split_residuals(signs)
    weight, count = 1.0 - 0.35, len(signs)
    coupling = MajorityCoupling(replace=replace, donor="mean")
    assert coupling.majority(residuals).tolist() == [True, False, True, False, True]
    gradients = csd_gradient(residuals, noisy, coupling, 0.35)
    plain = csd_gradient(residuals, noisy, no_svgd(), 0.35)
    for row in (0, 2, 4):  # the majority keeps its own step, bit for bit
        assert torch.equal(gradients[row], plain[row])
    scale = float(residuals.abs().max()) * weight / count
    for row in (1, 3):
        members = [0, 2, 4, row]
        if replace == "whole":
            expected = (weight / count) * residuals[members].mean(dim=0)
        else:  # its own detail, the mean coarse part of the majority and itself
            own = residuals[row : row + 1]
            expected = (weight / count) * (own - coarse(own, 1) + coarse(residuals[members], 1).mean(dim=0))[0]
        torch.testing.assert_close(gradients[row], expected, rtol=0, atol=1e-5 * scale)
        # the coarse part now points with the majority (it pointed against it)
        assert float((coarse(gradients[row : row + 1], 1) * coarse(plain[0:1], 1)).sum()) > 0


def test_majority_coupling_can_take_the_nearest_majority_particle():
    signs = [1, -1, 1, -1, 1, 1]
    residuals, noisy = split_residuals(signs)
    gradients = csd_gradient(residuals, noisy, MajorityCoupling(), 0.35)  # donor="nearest" by default
    plain = csd_gradient(residuals, noisy, no_svgd(), 0.35)
    majority = [0, 2, 4, 5]
    distances = torch.cdist(noisy.reshape(6, -1).double(), noisy[majority].reshape(4, -1).double())
    for row in range(6):
        donor = row if row in majority else majority[int(distances[row].argmin())]
        assert torch.equal(gradients[row], plain[donor])  # a copy of one residual: exact
    # a turned row has no weight on itself: the logged S counts it as N - 1 (finite), the others as 0
    _, diagnostics = csd_gradient(residuals, noisy, MajorityCoupling(), 0.35, return_diagnostics=True)
    assert diagnostics["kernel_self_weight_ratio"] == pytest.approx(2 * (6 - 1) / 6)
    assert {majority[int(distances[row].argmin())] for row in (1, 3)} != {0}  # not simply the first member


def test_majority_ties_take_the_lowest_index_and_one_particle_is_sds():
    residuals, _ = split_residuals([-1, 1, -1, 1])
    assert MajorityCoupling().majority(residuals).tolist() == [True, False, True, False]
    with pytest.warns(UserWarning, match="single particle"):
        assert torch.equal(run(MajorityCoupling(), 0, count=1)[0], run(IdentityKernel(), 0, count=1)[0])


def test_majority_coupling_refuses_bad_arguments():
    with pytest.raises(ValueError, match="agreement=1.0 is not allowed"):
        MajorityCoupling(agreement=1.0)
    with pytest.raises(ValueError, match="replace='detail' is not allowed"):
        MajorityCoupling(replace="detail")
    with pytest.raises(ValueError, match="donor='first' is not allowed"):
        MajorityCoupling(donor="first")
    with pytest.raises(TypeError, match="reads the residuals"):
        MajorityCoupling()(torch.zeros(2, 3, 4, 4))


# ------------------------------------------------------------------------------ across ranks (gloo)
SHARDS = (3, 2)


EARLY = {
    "consensus": lambda: ConsensusKernel(3.0),
    "low_pass": lambda: LowPassCoupling(ConsensusKernel(3.0), grid=2),
    "majority_nearest": lambda: MajorityCoupling(agreement=0.0, grid=2),
}


def _shard_gradients(start: int, stop: int, step: int, process_group=None, early: str = "consensus"):
    generator = torch.Generator().manual_seed(0)
    residuals, noisy = (torch.randn(sum(SHARDS), 3, 8, 8, generator=generator) for _ in range(2))
    kernel = ReleasedCoupling(EARLY[early](), no_svgd(), release_fraction=0.5).at_step(step, STEPS)
    return csd_gradient(residuals[start:stop], noisy[start:stop], kernel, 0.35, process_group=process_group)


def _rank_worker(rank: int, world_size: int, init_file: str, out_dir: str, early: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        start = sum(SHARDS[:rank])
        rows = [_shard_gradients(start, start + SHARDS[rank], step, dist.group.WORLD, early) for step in (0, STEPS - 1)]
        torch.save(rows, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("early", sorted(EARLY))
def test_two_gloo_ranks_equal_one_process(early, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same BLAS partitioning as the workers: bit-identical results
    try:
        args = (len(SHARDS), str(tmp_path / "store"), str(tmp_path), early)
        mp.spawn(_rank_worker, args=args, nprocs=len(SHARDS))
        reference = [_shard_gradients(0, sum(SHARDS), step, early=early) for step in (0, STEPS - 1)]
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(len(SHARDS))]
    for phase in range(2):
        assert torch.equal(torch.cat([rows[phase] for rows in ranks]), reference[phase])


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("experiment", "path", "steps"),
    [("video_coupled_exact_cpu", "sample:zoom", 100), ("panorama_coupled_exact_cpu", "sample:coffee", 200)],
)
def test_coupled_experiments_select_the_released_coupling(experiment, path, steps, tmp_path):
    from hydra.utils import instantiate

    from csd_exp.schema import validate_composed

    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    validate_composed(cfg)
    assert cfg.data.path == path and cfg.trainer.max_steps == steps and cfg.prompt == "turn it into a pop-art painting"
    kernel = instantiate(cfg.guidance.kernel)
    assert isinstance(kernel, ReleasedCoupling) and kernel.release_fraction == 0.1
    assert isinstance(kernel.early, MajorityCoupling) and kernel.early.agreement == 0.9 and kernel.early.grid == 1
    assert kernel.early.replace == "whole" and kernel.early.donor == "nearest"
    assert isinstance(kernel.late, IdentityKernel) and kernel.late.normalize_by_count
    # the earlier released consensus and the low-pass variant stay presets
    for preset, early in (("consensus_release", ConsensusKernel), ("lowpass_release", LowPassCoupling)):
        other = compose_config([f"experiment={experiment}", f"kernel={preset}"], tmp_path)
        validate_composed(other)
        assert isinstance(instantiate(other.guidance.kernel).early, early)
    # the paired rows: the same experiment with the paper's kernel and with the no-SVGD ablation
    paired = compose_config([f"experiment={experiment}", "guidance=csd_edit_no_svgd", "kernel=identity_mean"], tmp_path)
    validate_composed(paired)
    assert paired.data == cfg.data and paired.trainer == cfg.trainer and paired.task == cfg.task
