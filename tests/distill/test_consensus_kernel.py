"""ConsensusKernel: the coupling S it is asked for, the step size of the uncoupled method, SDS at N = 1, the
SVGD repulsion of the normalised kernel, the cross-rank path, and the config rules around ``kernel=consensus``."""

import math
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from framework_support import CONFIG_DIR, compose_config

from csd_exp.distill import (
    ConsensusKernel,
    IdentityKernel,
    RBFKernel,
    coupling,
    coupling_gamma,
    csd_gradient,
    make_kernel,
    sds_gradient,
    squared_distances,
)

SHAPE = (4, 64, 64)  # one SD latent, as the kernel sees it in the paper's 2D tasks
ALPHAS_CUMPROD_T = 0.35


def noisy_particles(count: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """x_t = α_t x + σ_t ε for similar clean latents x: the kernel's input in Eq. 8 / 9."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=generator)
    clean = base + 0.3 * torch.randn(count, *SHAPE, generator=generator)
    noise = torch.randn(count, *SHAPE, generator=generator)
    return (math.sqrt(ALPHAS_CUMPROD_T) * clean + math.sqrt(1 - ALPHAS_CUMPROD_T) * noise).to(dtype)


def measured_coupling(matrix: torch.Tensor) -> float:
    """mean_i Σ_{j≠i} K_ij / K_ii, as the combiner's ``kernel_self_weight_ratio``."""
    self_weights = matrix.diagonal()
    return float(((matrix.sum(dim=1) - self_weights) / self_weights).mean())


@pytest.mark.parametrize(("count", "target"), [(4, 2.0), (8, 5.0), (12, 8.0)])
def test_measured_coupling_is_the_target(count, target):
    x = noisy_particles(count, seed=count)
    residuals = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + count))
    kernel = ConsensusKernel(target_coupling=target)
    output = kernel(x)
    _, diagnostics = csd_gradient(residuals, x, kernel, ALPHAS_CUMPROD_T, return_diagnostics=True)
    for measured in (measured_coupling(output.matrix), diagnostics["kernel_self_weight_ratio"]):
        assert measured == pytest.approx(target, rel=0.10)
        assert measured == pytest.approx(target, rel=1e-4)  # the bisection itself is exact to float32 rounding
    # the contrast: the median rule couples by N alone, S ≈ (N − 1)/(N + 1) < 1 in 4·64·64 dimensions
    _, median = csd_gradient(residuals, x, RBFKernel(), ALPHAS_CUMPROD_T, return_diagnostics=True)
    assert median["kernel_self_weight_ratio"] == pytest.approx((count - 1) / (count + 1), rel=0.15)


def test_coupling_gamma_solves_the_float64_equation():
    x = noisy_particles(6, seed=3, dtype=torch.float64)
    flat = x.reshape(6, -1)
    distances = squared_distances(flat - flat.mean(0))
    for target in (0.5, 1.0, 3.0, 4.9):
        gamma = coupling_gamma(distances, target)
        assert coupling(distances, gamma) == pytest.approx(target, rel=1e-12)
        assert coupling_gamma(distances, target) == gamma  # deterministic
    assert coupling_gamma(distances, 5.0) == 0.0  # S(0) = N − 1: the largest reachable coupling


def test_rows_sum_to_the_uncoupled_weight_and_the_step_is_the_no_svgd_step():
    count = 8
    x = noisy_particles(count, seed=5)
    output = ConsensusKernel(target_coupling=5.0)(x)
    uncoupled = IdentityKernel(normalize_by_count=True)(x)
    torch.testing.assert_close(output.matrix.sum(dim=1), uncoupled.matrix.sum(dim=1), atol=1e-6, rtol=0)
    assert output.normalizer == uncoupled.normalizer == count
    # identical residuals: the score term of Eq. 9 is exactly the no-SVGD ablation's (w/N) Δ
    residual = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6)).expand(count, *SHAPE)
    mixed = (output.matrix @ residual.reshape(count, -1)).reshape(residual.shape)
    torch.testing.assert_close(mixed, residual, atol=1e-5, rtol=1e-5)


def test_single_particle_is_sds_exactly():
    generator = torch.Generator().manual_seed(7)
    residuals, x = torch.randn(1, *SHAPE, generator=generator), torch.randn(1, *SHAPE, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N = 1 has nothing to couple: no clamp warning
        consensus = csd_gradient(residuals, x, ConsensusKernel(), ALPHAS_CUMPROD_T)
    assert torch.equal(consensus, csd_gradient(residuals, x, IdentityKernel(), ALPHAS_CUMPROD_T))
    assert torch.equal(consensus, sds_gradient(residuals, ALPHAS_CUMPROD_T))


def test_repulsion_is_autograd_of_the_normalised_kernel():
    """R̃_i = −Σ_j ∇_y k̃(y, x_i)|_{y = x_j} with k̃(y, x_i) = exp(−γ‖y − x_i‖²) / Z_i, γ and Z_i the step's
    constants (Z_i = 1 / K̃_ii since k(x_i, x_i) = 1); the minus is the descent-gradient sign of every kernel's R.

    Tolerance: both sides are float64 evaluations of the same closed form; they differ only by rounding, in the
    kernel's Gram-form distances (cancellation of order eps·‖x‖² ≈ 1e-16 · 2e4 against d² ≈ 2e4, i.e. a
    relative error ≈ 1e-12 in γd²≈ 1, hence in K̃) and in summation order over D = 16384 terms. 1e-9 relative
    leaves a wide margin above that and is still ~1e6 times tighter than a float32 result would pass.
    """
    count = 5
    x = noisy_particles(count, seed=8, dtype=torch.float64)
    output = ConsensusKernel(target_coupling=2.5, compute_dtype=torch.float64)(x)
    gamma, normalisers = float(output.gamma), 1.0 / output.matrix.diagonal()
    flat = x.reshape(count, -1)
    expected = []
    for i in range(count):
        y = flat.clone().requires_grad_(True)
        weights = torch.exp(-gamma * ((y - flat[i]) ** 2).sum(dim=1)) / normalisers[i]
        (grad,) = torch.autograd.grad(weights.sum(), y)
        expected.append(-grad.sum(dim=0))
        # and K̃ itself is the explicit-difference normalised RBF weight
        torch.testing.assert_close(output.matrix[i], weights.detach(), atol=0, rtol=1e-9)
    expected = torch.stack(expected).reshape(x.shape)
    scale = float(expected.abs().max())
    assert scale > 1e-6  # not vacuous (γ ≈ 1/d² is small, so R̃ is small next to the residuals)
    torch.testing.assert_close(output.repulsion, expected, atol=1e-9 * scale, rtol=1e-9)


def test_target_above_n_minus_one_clamps_once_with_the_bound():
    x = noisy_particles(4, seed=9)
    kernel = ConsensusKernel(target_coupling=8.0)
    with pytest.warns(RuntimeWarning, match=r"exceeds the bound S <= N - 1 = 3 for N = 4"):
        output = kernel(x)
    assert float(output.gamma) == 0.0 and measured_coupling(output.matrix) == pytest.approx(3.0, rel=1e-6)
    torch.testing.assert_close(output.matrix, torch.full((4, 4), 0.25), atol=1e-7, rtol=0)
    assert torch.equal(output.repulsion, torch.zeros_like(output.repulsion))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(x)  # one warning per particle count, not one per step


def test_coincident_particles():
    same = torch.ones(3, 2, 2)
    output = ConsensusKernel(target_coupling=1.0)(same)  # S = N − 1 for every γ
    torch.testing.assert_close(output.matrix, torch.full((3, 3), 1 / 3))
    assert float(output.gamma) == 0.0 and not output.repulsion.any()
    pair = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # S ≥ 2/3: only the coincident pair keeps weight
    output = ConsensusKernel(target_coupling=0.5)(pair)
    assert math.isinf(float(output.gamma)) and not output.repulsion.any()
    torch.testing.assert_close(output.matrix, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("target", [0, -1.0, math.inf, math.nan, True, "8"])
def test_bad_target_is_refused(target):
    with pytest.raises(ValueError, match="target_coupling"):
        ConsensusKernel(target_coupling=target)


def test_name_and_compute_dtype():
    assert isinstance(make_kernel("consensus"), ConsensusKernel) and make_kernel("consensus").target_coupling == 8.0
    with pytest.raises(ValueError, match="compute_dtype"):
        ConsensusKernel(compute_dtype=torch.float16)


# ------------------------------------------------------------------------------ across ranks (gloo)
SHARDS = (3, 2)


def _shard_gradients(start: int, stop: int, process_group=None):
    generator = torch.Generator().manual_seed(0)
    residuals, noisy = (torch.randn(sum(SHARDS), 4, 8, 8, generator=generator) for _ in range(2))
    return csd_gradient(
        residuals[start:stop],
        noisy[start:stop],
        ConsensusKernel(target_coupling=3.0),
        ALPHAS_CUMPROD_T,
        process_group=process_group,
        return_diagnostics=True,
    )


def _rank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        start = sum(SHARDS[:rank])
        torch.save(_shard_gradients(start, start + SHARDS[rank], dist.group.WORLD), f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer is still in a collective
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same BLAS partitioning as the workers: bit-identical results
    try:
        mp.spawn(_rank_worker, args=(len(SHARDS), str(tmp_path / "store"), str(tmp_path)), nprocs=len(SHARDS))
        reference, diagnostics = _shard_gradients(0, sum(SHARDS))
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(len(SHARDS))]
    assert torch.equal(torch.cat([gradients for gradients, _ in ranks]), reference)
    for _, rank_diagnostics in ranks:  # every rank solved γ on all particles: the same S and γ
        assert rank_diagnostics == diagnostics
    assert diagnostics["kernel_self_weight_ratio"] == pytest.approx(3.0, rel=1e-4)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "overrides, label",
    [
        (["guidance=sds", "kernel=consensus"], "csd_edit_random_noise"),  # random noise + coupling, exact prior
        (["guidance=csd_edit_no_svgd", "kernel=consensus"], "csd_edit"),  # source branch + coupling
    ],
)
def test_a_coupling_kernel_under_an_uncoupled_preset_is_relabelled_by_its_maths(overrides, label, tmp_path):
    """Issue 22: a preset with an overriding kernel is relabelled, never refused (it used to be refused)."""
    from csd_exp.schema import validate_composed

    cfg = compose_config(overrides, tmp_path)
    validate_composed(cfg)
    assert cfg.method == label and cfg.kernel._target_ == "csd_exp.distill.ConsensusKernel"


def test_kernel_consensus_composes_and_checks_its_target(tmp_path):
    from hydra.utils import instantiate

    from csd_exp.schema import ConfigError, validate_composed

    cfg = compose_config(["experiment=video_exact_cpu", "kernel=consensus", "kernel.target_coupling=6"], tmp_path)
    validate_composed(cfg)
    kernel = instantiate(cfg.guidance.kernel)
    assert isinstance(kernel, ConsensusKernel) and kernel.target_coupling == 6.0
    cfg = compose_config(["kernel=consensus", "kernel.target_coupling=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"kernel.target_coupling=0 is not allowed"):
        validate_composed(cfg)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_no_experiment_chooses_consensus(experiment, tmp_path):
    """Beyond the paper and opt-in: every experiment keeps its kernel (the official median rule for CSD), except
    the ``*_coupled_*`` experiments of issue 26, whose point is the released coupling (consensus only early)."""
    kernel = compose_config([f"experiment={experiment}"], tmp_path).kernel
    if "_coupled_" in experiment:
        assert kernel.get("_target_") == "csd_exp.distill.ReleasedCoupling"
        return
    assert "consensus" not in (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert kernel.get("_target_") != "csd_exp.distill.ConsensusKernel"
    if kernel.get("_target_") == "csd_exp.distill.RBFKernel":
        assert kernel.bandwidth == "median" and kernel.bandwidth_multiplier == 1.0
