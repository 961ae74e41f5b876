"""Kernels on rendered views (csd_exp/distill/view_kernels.py) and their use by the guidance (kernel_inputs).

Each kernel is checked against a float64 re-derivation written out here: the distance by explicit functional
code from the kernel's own weights, γ by the paper's rule h = med² / log B (App. B.2), K = exp(−γ D²) and the
repulsion R_i = −Σ_j ∇_y k(y, I_i)|_{y = I_j} by one autograd call per particle i on the first argument only
(so the kernel's use of the distance's symmetry and its index bookkeeping are both tested).

Tolerances: both sides are float64 evaluations of the same formulas in a different order (pair batches against
per-particle loops, concatenated against separate feature layers); they differ by a few float64 roundings of
O(1) quantities, ~1e-15 relative. 1e-10 relative leaves a wide margin and is still ~1e4 times tighter than
what a float32 evaluation would pass.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from distill_fakes import FakePrior

from csd_exp.distill import (
    FeatureRBFKernel,
    Guidance,
    IdentityKernel,
    LPIPSRBFKernel,
    Particles,
    RBFKernel,
    TimestepSchedule,
    csd_gradient,
    draw_step_randomness,
)

SEED, STEP = 3, 7
RTOL = 1e-10


def seeded_images(count: int, size: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Smooth random images in [0, 1] (bilinear upsampling of a coarse grid), from an explicit generator."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 4, size // 4, generator=generator, dtype=dtype)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def paper_gamma(squared: torch.Tensor) -> float:
    """γ = 1 / h with h = med² / log B: med² the lower median of the B(B − 1)/2 distinct pairs' D²."""
    count = squared.shape[0]
    rows, cols = torch.triu_indices(count, count, offset=1)
    pairs = squared[rows, cols].sort().values
    return math.log(count) / float(pairs[(pairs.numel() - 1) // 2])


def rederive(images: torch.Tensor, squared_distance) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(K, R, γ) in float64 from ``squared_distance(a, b) -> (P,)``, R by per-particle autograd loops."""
    count = images.shape[0]
    squared = torch.stack(
        [squared_distance(images, images[i : i + 1].expand_as(images)).detach() for i in range(count)], dim=1
    )  # squared[j, i] = D(I_j, I_i)²
    gamma = paper_gamma(squared)
    repulsion = []
    for i in range(count):
        y = images.clone().requires_grad_(True)
        weights = torch.exp(-gamma * squared_distance(y, images[i : i + 1].expand_as(images)))
        (grad,) = torch.autograd.grad(weights.sum(), y)
        repulsion.append(-grad.sum(dim=0))  # includes j = i, whose term is zero (D(·, I_i)² is minimal there)
    return torch.exp(-gamma * squared).T, torch.stack(repulsion), gamma


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 0  # not vacuous
    torch.testing.assert_close(actual, expected, atol=RTOL * scale, rtol=RTOL)


# ---------------------------------------------------------------------------------------------- FeatureRBF
def feature_squared_distance(kernel: FeatureRBFKernel, image_size: int):
    """‖φ(a) − φ(b)‖² written out: resize, x = 2I − 1, tanh(conv stride 2) layers, each mean-squared."""
    weights = [getattr(kernel.features, f"weight{k}").double() for k in range(len(kernel.channels))]

    def layers(images):
        x = 2.0 * F.interpolate(images, size=(image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        x = x - 1.0
        out = [x]
        for weight in weights:
            x = torch.tanh(F.conv2d(x, weight, stride=2, padding=1))
            out.append(x)
        return out

    def distance(first, second):
        return sum(((a - b) ** 2).flatten(1).mean(dim=1) for a, b in zip(layers(first), layers(second)))

    return distance


def test_feature_rbf_kernel_and_repulsion_match_a_float64_rederivation():
    images = seeded_images(4, size=16, seed=1)
    kernel = FeatureRBFKernel(channels=(4, 8), seed=5, image_size=8)  # resizing inside the graph: R is 16 px
    output = kernel(images)
    matrix, repulsion, gamma = rederive(images, feature_squared_distance(kernel, 8))
    assert output.repulsion.shape == images.shape and output.normalizer == 4.0
    assert float(output.gamma) == pytest.approx(gamma, rel=RTOL)
    assert_matches(output.matrix, matrix)
    assert_matches(output.repulsion, repulsion)
    # h = med² / log B: the lower-median pair (3rd nearest of 6, 4th in ascending K) has k = exp(−log B) = 1/B
    off_diagonal = output.matrix[torch.triu_indices(4, 4, offset=1).unbind()]
    assert float(off_diagonal.sort().values[3]) == pytest.approx(1 / 4, rel=1e-12)


def test_feature_rbf_is_a_fixed_function_of_its_seed():
    images = seeded_images(3, seed=2, dtype=torch.float32)
    first, again = FeatureRBFKernel(seed=0, image_size=16)(images), FeatureRBFKernel(seed=0, image_size=16)(images)
    other = FeatureRBFKernel(seed=1, image_size=16)(images)
    assert torch.equal(first.matrix, again.matrix) and torch.equal(first.repulsion, again.repulsion)
    assert not torch.equal(first.repulsion, other.repulsion)
    assert first.matrix.dtype == torch.float32 and first.repulsion.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- LPIPS-RBF
class StandInLPIPSNet(torch.nn.Module):
    """LPIPS' form on a tiny seeded conv net, called like torchmetrics' LPIPS network ``net(a, b, normalize)``:
    Σ_l mean_hw Σ_c w_lc (f̂_l(a) − f̂_l(b))², f̂ the ReLU conv features unit-normalised over channels, w ≥ 0."""

    def __init__(self, seed: int = 11) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv_weights = torch.nn.ParameterList(
            [
                torch.nn.Parameter(torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64) / 5),
                torch.nn.Parameter(torch.randn(8, 6, 3, 3, generator=generator, dtype=torch.float64) / 7),
            ]
        )
        self.linear = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.rand(c, generator=generator, dtype=torch.float64)) for c in (6, 8)]
        )

    def forward(self, in0, in1, normalize=False):
        if normalize:
            in0, in1 = 2 * in0 - 1, 2 * in1 - 1
        total = 0.0
        x0, x1 = in0, in1
        for weight, linear in zip(self.conv_weights, self.linear):
            x0 = F.relu(F.conv2d(x0, weight, stride=2, padding=1))
            x1 = F.relu(F.conv2d(x1, weight, stride=2, padding=1))
            n0 = x0 / torch.sqrt(1e-8 + (x0**2).sum(dim=1, keepdim=True))
            n1 = x1 / torch.sqrt(1e-8 + (x1**2).sum(dim=1, keepdim=True))
            total = total + (linear.view(1, -1, 1, 1) * (n0 - n1) ** 2).sum(dim=1).mean(dim=(1, 2))
        return total.view(-1, 1, 1, 1)


def test_lpips_rbf_kernel_and_repulsion_match_a_float64_rederivation():
    images = seeded_images(4, size=16, seed=3)
    metric = SimpleNamespace(net=StandInLPIPSNet())  # the torchmetrics metric's shape: the network is .net
    kernel = LPIPSRBFKernel(metric, image_size=None)
    output = kernel(images)
    net = StandInLPIPSNet()  # the same seeded weights, called directly

    def squared_lpips(first, second):
        return net(first, second, normalize=True).reshape(-1) ** 2

    matrix, repulsion, gamma = rederive(images, squared_lpips)
    assert not any(p.requires_grad for p in metric.net.parameters())  # frozen: no gradient into the network
    assert float(output.gamma) == pytest.approx(gamma, rel=RTOL)
    assert_matches(output.matrix, matrix)
    assert_matches(output.repulsion, repulsion)


def test_lpips_rbf_on_torchmetrics_lpips_architecture():
    """torchmetrics' own LPIPS network (its shipped linear heads; a seeded random SqueezeNet backbone, since the
    ImageNet weights are not on this machine) through the kernel, against the re-derivation, in float64."""
    lpips_module = pytest.importorskip("torchmetrics.functional.image.lpips")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = lpips_module._LPIPS(pretrained=True, net="squeeze", pnet_rand=True).double().eval()
    images = seeded_images(3, size=32, seed=4)
    output = LPIPSRBFKernel(SimpleNamespace(net=network), image_size=None)(images)

    def squared_lpips(first, second):
        return network(first, second, normalize=True).reshape(-1) ** 2

    matrix, repulsion, _ = rederive(images, squared_lpips)
    assert_matches(output.matrix, matrix)
    assert_matches(output.repulsion, repulsion)


def test_lpips_rbf_with_the_real_lpips_weights_when_present():
    from csd_exp.metrics.lpips import load_lpips

    metric = load_lpips("alex")
    if metric is None:
        pytest.skip("LPIPS AlexNet backbone weights are not in torchvision's cache")
    images = seeded_images(3, size=64, seed=5, dtype=torch.float32)
    output = LPIPSRBFKernel(metric)(images)
    with torch.no_grad():
        lpips = metric.net(images[[0, 0, 1]], images[[1, 2, 2]], normalize=True).reshape(-1)
    expected = torch.exp(-float(output.gamma) * lpips.square())
    torch.testing.assert_close(output.matrix[[0, 0, 1], [1, 2, 2]], expected, rtol=1e-4, atol=1e-6)
    assert bool(torch.isfinite(output.repulsion).all()) and float(output.repulsion.abs().sum()) > 0


def test_missing_lpips_weights_name_the_offline_kernel():
    with pytest.raises(ValueError, match="kernel=feature_rbf"):
        LPIPSRBFKernel(None)
    with pytest.raises(ValueError, match="bandwidth"):
        FeatureRBFKernel(bandwidth="median_log_b")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        FeatureRBFKernel()(torch.rand(2, 4, 8, 8))


# ---------------------------------------------------------------------------------------------- guidance
def run_guidance(kernel, latents, kernel_inputs, **kwargs):
    return Guidance("random_noise", kernel, guidance_scale=7.5, image_guidance_scale=1.5)(
        FakePrior(),
        Particles(latents, kernel_inputs=kernel_inputs),
        prompt="a hamburger",
        step=STEP,
        seed=SEED,
        **kwargs,
    )


def test_one_view_is_sds_with_a_warning():
    latents = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6), requires_grad=True)
    images = seeded_images(1, size=16, seed=6, dtype=torch.float32).requires_grad_(True)
    with pytest.warns(UserWarning, match=r"single particle \(N = 1\) is SDS"):
        csd = run_guidance(FeatureRBFKernel(image_size=16), latents, images)
    sds = run_guidance(IdentityKernel(), latents, None)
    assert torch.equal(csd.gradients, sds.gradients)
    assert torch.equal(csd.image_gradients, torch.zeros_like(images)) and sds.image_gradients is None
    csd.loss.backward()
    assert torch.equal(latents.grad, sds.gradients) and torch.equal(images.grad, torch.zeros_like(images))


def test_repulsion_reaches_the_parameters_upstream_of_the_renders():
    """θ → renders I = a ⊙ θ + b → latents z = 2I − 1 (a pixel prior); the loss's derivative in θ is
    a ⊙ (2 (w/N) K Δ + (w/N) R) with K, R from the float64 re-derivation and Δ = ε̂ − ε from the fake prior."""
    count, size = 4, 8
    generator = torch.Generator().manual_seed(8)
    theta = torch.rand(count, 3, size, size, generator=generator, dtype=torch.float64).requires_grad_(True)
    scale = 0.5 + torch.rand(count, 3, size, size, generator=generator, dtype=torch.float64)
    renders = scale * theta + 0.1
    latents = 2.0 * renders - 1.0
    kernel = FeatureRBFKernel(channels=(4,), seed=2, image_size=None)
    out = run_guidance(kernel, latents, renders)
    out.loss.backward()

    prior = FakePrior()
    t, noise = draw_step_randomness(SEED, STEP, TimestepSchedule(), count, latents.shape[1:])
    noisy = prior.add_noise(latents.detach(), noise, t)
    residuals = (torch.tanh(noisy) * 7.5 / 10 - noise).double()
    weight = 1.0 - float(prior.alphas_cumprod[t])
    matrix, repulsion, _ = rederive(renders.detach(), feature_squared_distance(kernel, size))
    latent_gradients = weight / count * (matrix @ residuals.reshape(count, -1)).reshape(residuals.shape)
    image_gradients = weight / count * repulsion
    assert_matches(out.gradients, latent_gradients)
    assert_matches(out.image_gradients, image_gradients)
    assert_matches(theta.grad, scale * (2.0 * latent_gradients + image_gradients))
    assert float(image_gradients.norm()) > 1e-3 * float(latent_gradients.norm())  # the repulsion term counts
    assert out.diagnostics["image_grad_norm"] > 0


def test_image_kernels_and_kernel_inputs_go_together():
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    images = seeded_images(2, size=8, seed=9, dtype=torch.float32)
    with pytest.raises(ValueError, match="kernel_inputs=the renders"):
        run_guidance(FeatureRBFKernel(), latents, None)
    with pytest.raises(ValueError, match="only by image kernels"):
        run_guidance(RBFKernel(), latents, images)
    with pytest.raises(ValueError, match=r"\(2, 3, H, W\)"):
        run_guidance(FeatureRBFKernel(), latents, images[:1])
    with pytest.raises(ValueError, match="csd_gradient_with_image_kernel"):
        csd_gradient(latents, latents, FeatureRBFKernel(), 0.5)


def test_kernel_configs_instantiate_and_pass_their_schemas():
    from pathlib import Path

    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from csd_exp.metrics.lpips import load_lpips
    from csd_exp.schema.targets import check_target

    folder = Path(__file__).resolve().parents[2] / "conf" / "kernel"
    feature = OmegaConf.load(folder / "feature_rbf.yaml")
    check_target("kernel", OmegaConf.to_container(feature))
    kernel = instantiate(feature)
    assert isinstance(kernel, FeatureRBFKernel) and kernel.on_images and kernel.channels == (16, 32)
    lpips = OmegaConf.load(folder / "lpips_rbf.yaml")
    check_target("kernel", OmegaConf.to_container(lpips))
    if load_lpips(lpips.distance.net) is None:
        with pytest.raises(InstantiationException, match="kernel=feature_rbf"):
            instantiate(lpips)
    else:
        assert isinstance(instantiate(lpips), LPIPSRBFKernel)


@pytest.mark.parametrize("kernel", ["feature_rbf", "lpips_rbf"])
def test_an_image_kernel_needs_a_task_that_passes_renders(kernel, tmp_path):
    from framework_support import compose_config

    from csd_exp.schema import ConfigError, validate_composed

    with pytest.raises(ConfigError, match=rf"kernel={kernel} compares rendered views.*kernel=rbf"):
        validate_composed(compose_config([f"kernel={kernel}"], tmp_path))
    validate_composed(compose_config(["task=generation3d", "guidance=csd", f"kernel={kernel}"], tmp_path))


# ---------------------------------------------------------------------------------------------- sharded views
SHARDS = (2, 1)  # uneven on purpose: the gather pads to the largest shard


def sharded_particles():
    generator = torch.Generator().manual_seed(12)
    residuals = torch.randn(sum(SHARDS), 3, 8, 8, generator=generator)
    return residuals, seeded_images(sum(SHARDS), size=8, seed=12, dtype=torch.float32)


def image_kernel_shard(rank: int, process_group=None):
    from csd_exp.distill import csd_gradient_with_image_kernel

    residuals, images = sharded_particles()
    rows = slice(sum(SHARDS[:rank]), sum(SHARDS[: rank + 1])) if process_group is not None else slice(None)
    kernel = FeatureRBFKernel(channels=(4,), image_size=None)
    return csd_gradient_with_image_kernel(
        residuals[rows], images[rows], kernel, 0.4, process_group=process_group, return_diagnostics=True
    )


def image_kernel_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(SHARDS))
    try:
        torch.save(image_kernel_shard(rank, dist.group.WORLD), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_views_give_the_single_process_gradients(tmp_path):
    """With the views sharded over two gloo ranks, the kernel sees every rank's renders (gathered, detached) and
    each rank gets its rows of the single-process result, bit for bit (one thread everywhere)."""
    import torch.multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(image_kernel_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=len(SHARDS), join=True)
        latent, image, diagnostics = image_kernel_shard(0)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(len(SHARDS))]
    assert torch.equal(torch.cat([r[0] for r in ranks]), latent)
    assert torch.equal(torch.cat([r[1] for r in ranks]), image)
    assert all(r[2] == diagnostics for r in ranks)
