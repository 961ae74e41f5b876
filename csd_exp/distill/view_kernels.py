"""Kernels on images: the views of one 3D object compared by a perceptual distance (paper Sec. 4.4, App. B.2).

In text-to-3D the particles are the B views rendered from one 3D representation at each step. The paper's
kernel compares the renders, not the noisy latents: an RBF on the LPIPS distance between 64 × 64 renders with
bandwidth h = med² / log B, med the median pairwise LPIPS distance (App. B.2). Read as the usual SVGD RBF with
LPIPS in place of the Euclidean distance (the paper does not print k; csd-paper-notes §1.6, UNCONFIRMED):

    k(I, I') = exp(−D(I, I')² / h),   D = LPIPS (or any distance),   h = med(D_{i<j})² / log B,

i.e. the ``"median_log_n"`` rule of :func:`~csd_exp.distill.kernels.bandwidth_gamma` on the squared distances
D², with γ = 1 / h. The other rules of :class:`~csd_exp.distill.kernels.RBFKernel` are available too.

**What the kernel returns** (a :class:`~csd_exp.distill.kernels.KernelOutput`, class attribute ``on_images = True``):

* ``matrix`` K with K_ij = k(I_j, I_i), which weights the residuals Δ_j in latent space exactly as the latent
  kernels do (Σ_j K_ij Δ_j);
* ``repulsion`` R of the images' shape (N, 3, H, W), in the descent-gradient sign of every kernel here:

      R_i = −Σ_j ∇_{I_j} k(I_j, I_i),

  SVGD's repulsion term (Eq. 7, Eq. 8: the gradient with respect to the first argument, at the other particle
  I_j) with the sign that is *added* to the descent gradient (for a Euclidean RBF this is the latent kernels'
  R_i = −2γ Σ_j K_ij (x_i − x_j)). It is computed by autograd through the distance network, with γ held fixed
  within the step (as SVGD and the official code hold the median rule's γ fixed); the j = i term vanishes
  (D(·, I_i)² has its minimum, zero, at I_i).

How the guidance uses both: with the renders I = g(θ) and the latents z = E(I) (E the prior's differentiable
encode; the identity map to [−1, 1] for a pixel prior),

    ∇_θ L_CSD = (w(t)/N) Σ_i [ (Σ_j K_ij Δ_j) ∂z_i/∂θ + R_i ∂I_i/∂θ ],

Eq. 8 with the kernel on the images: the score term enters through the latents, the repulsion through the
images, with the same w(t)/N (see :func:`~csd_exp.distill.combine.csd_gradient_with_image_kernel` and
``Guidance.__call__(prior, Particles(latents, kernel_inputs=renders), ...)``). For a pixel prior (z an affine
map of I) this is SVGD on the images themselves.

The distance must be symmetric, D(a, b) = D(b, a) (LPIPS is): each unordered pair {i, j} goes through the network
once, and the gradients with respect to its two arguments are the two repulsion terms ∇_{I_j} k(I_j, I_i) and
∇_{I_i} k(I_i, I_j). That is N(N − 1)/2 network calls on image pairs per step (6 for the paper's B = 4).

Two kernels:

* :class:`LPIPSRBFKernel`: the paper's, on any distance network; the config passes the project's LPIPS metric
  (``csd_exp.metrics.lpips.load_lpips``: torchmetrics' LPIPS, backbone weights from torchvision's cache, never
  downloaded). ``distill`` imports no metrics code: the network comes in as an argument.
* :class:`FeatureRBFKernel`: the offline default, the Euclidean distance between the multi-scale features of a
  fixed seeded random conv net (no weights to download).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import torch
from torch import Tensor

from csd_exp.distill.arguments import checked
from csd_exp.distill.kernels import KernelOutput, bandwidth_gamma, check_bandwidth, check_particles

if TYPE_CHECKING:
    from csd_exp.distill.kernels import BandwidthRule, PositiveFloat

#: the paper's render size for the LPIPS kernel (App. B.2)
PAPER_KERNEL_IMAGE_SIZE = 64
#: ``kernel.channels``: the widths of the random conv layers, at least one, each ≥ 1 (pydantic ``Field`` keywords)
ConvChannels = Annotated[Sequence[Annotated[int, {"ge": 1}]], {"min_length": 1}]
#: ``kernel.seed``: the seed of the conv weights, in numpy's and Lightning's seed range
ConvSeed = Annotated[int, {"ge": 0, "le": 2**32 - 1}]


def check_kernel_images(images: Tensor, name: str = "kernel_inputs") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``images`` is a finite (N, 3, H, W) float tensor."""
    check_particles(images, name)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name} must be RGB images (N, 3, H, W) in [0, 1] (the renders of the views), got shape "
            f"{tuple(images.shape)}"
        )


class ImageRBFKernel:
    """k(I, I') = exp(−γ D(I, I')²) on images, with SVGD's repulsion by autograd (see the module docstring).

    Subclasses define :meth:`pair_squared_distances`. ``image_size``: images are resized (bilinear, antialiased,
    inside the autograd graph, so R is with respect to the images given) to ``image_size`` × ``image_size``
    before the distance; ``None`` keeps their size. ``bandwidth``, ``gamma``, ``bandwidth_multiplier``: the rules
    of :class:`~csd_exp.distill.kernels.RBFKernel` on D², the paper's ``"median_log_n"`` by default.
    N = 1: K = [[1]], R = 0 (CSD is SDS, Eq. 8); the guidance warns about it.
    """

    on_images = True

    @checked
    def __init__(
        self,
        image_size: Annotated[int, {"ge": 1}] | None = PAPER_KERNEL_IMAGE_SIZE,
        bandwidth: BandwidthRule = "median_log_n",
        gamma: PositiveFloat | None = None,
        bandwidth_multiplier: PositiveFloat = 1.0,
    ) -> None:
        check_bandwidth(bandwidth, gamma)
        self.image_size = image_size
        self.bandwidth = bandwidth
        self.gamma = gamma
        self.bandwidth_multiplier = float(bandwidth_multiplier)

    def _settings(self) -> str:
        return (
            f"image_size={self.image_size}, bandwidth={self.bandwidth!r}, gamma={self.gamma!r}, "
            f"bandwidth_multiplier={self.bandwidth_multiplier}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings()})"

    def pair_squared_distances(self, first: Tensor, second: Tensor) -> Tensor:
        """D(first_p, second_p)² for P pairs of images (P, 3, s, s) in [0, 1]: (P,), differentiable, symmetric."""
        raise NotImplementedError

    def _resize(self, images: Tensor) -> Tensor:
        if self.image_size is None or tuple(images.shape[-2:]) == (self.image_size, self.image_size):
            return images
        size = (self.image_size, self.image_size)
        return torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def __call__(self, images: Tensor) -> KernelOutput:
        check_kernel_images(images, "images")
        count = images.shape[0]
        images = images.detach().to(torch.promote_types(images.dtype, torch.float32))
        distances = images.new_zeros(count, count)
        repulsion = torch.zeros_like(images)
        if count == 1:
            gamma = distances.new_zeros(())
            matrix = torch.ones_like(distances)
            return KernelOutput(matrix=matrix, repulsion=repulsion, gamma=gamma, normalizer=1.0)
        rows, cols = torch.triu_indices(count, count, offset=1, device=images.device)
        with torch.enable_grad():  # the guidance may run under no_grad; R needs the distance's gradient
            first = images[rows].clone().requires_grad_(True)
            second = images[cols].clone().requires_grad_(True)
            squared = self.pair_squared_distances(self._resize(first), self._resize(second)).reshape(-1)
            if squared.shape[0] != rows.shape[0]:
                raise ValueError(
                    f"{type(self).__name__}: the distance returned {squared.shape[0]} values for {rows.shape[0]} "
                    "image pairs; it must return one distance per pair"
                )
            pair_values = squared.detach().to(distances.dtype).clamp_min(0.0)
            distances[rows, cols] = pair_values
            distances[cols, rows] = pair_values
            gamma = bandwidth_gamma(distances, self.bandwidth, self.gamma, self.bandwidth_multiplier)
            weights = torch.exp(-gamma.to(squared.dtype) * squared)  # k(I_rows, I_cols), γ a constant of the step
            grad_first, grad_second = torch.autograd.grad(weights.sum(), (first, second))
        # Pair p = (j, i) = (rows_p, cols_p): ∂/∂first is ∇_{I_j} k(I_j, I_i), a term of R_i; by symmetry
        # ∂/∂second is ∇_{I_i} k(I_j, I_i) = ∇_{I_i} k(I_i, I_j), a term of R_j. Minus: the descent sign.
        repulsion.index_add_(0, cols, -grad_first.to(repulsion.dtype))
        repulsion.index_add_(0, rows, -grad_second.to(repulsion.dtype))
        matrix = torch.exp(-gamma * distances)
        return KernelOutput(matrix=matrix, repulsion=repulsion, gamma=gamma, normalizer=float(count))


def _frozen_module(module):
    if isinstance(module, torch.nn.Module):
        module.eval().requires_grad_(False)
    return module


def _on_device(module: torch.nn.Module, reference: Tensor) -> torch.nn.Module:
    parameter = next(iter(module.parameters()), None)
    if parameter is not None and parameter.device != reference.device:
        module.to(reference.device)
    return module


class LPIPSRBFKernel(ImageRBFKernel):
    """The paper's text-to-3D kernel: k = exp(−LPIPS² / h), h = med(LPIPS)² / log B, on 64 × 64 renders (App. B.2).

    Args:
        distance: the distance network. A torchmetrics ``LearnedPerceptualImagePatchSimilarity`` (what
            ``csd_exp.metrics.lpips.load_lpips`` returns; its ``net`` is called per pair on inputs in [0, 1]), or
            any symmetric callable ``(a, b) -> (P,)`` distances for image batches in [0, 1]. ``None`` (what
            ``load_lpips`` returns when the LPIPS backbone weights are not in torchvision's cache) is an error
            naming the fix. The network is held frozen (evaluation mode, no parameter gradients) and moved to
            the images' device.
        image_size, bandwidth, gamma, bandwidth_multiplier: see :class:`ImageRBFKernel` (defaults: the paper's
            64 px and h = med² / log B).
    """

    def __init__(
        self,
        distance,
        image_size: Annotated[int, {"ge": 1}] | None = PAPER_KERNEL_IMAGE_SIZE,
        bandwidth: BandwidthRule = "median_log_n",
        gamma: PositiveFloat | None = None,
        bandwidth_multiplier: PositiveFloat = 1.0,
    ) -> None:
        super().__init__(image_size, bandwidth, gamma, bandwidth_multiplier)
        if distance is None:
            raise ValueError(
                "LPIPSRBFKernel got no LPIPS network (distance=None): the LPIPS backbone weights are not in "
                "torchvision's cache (the warning above names the file; copy it to $TORCH_HOME/hub/checkpoints/ "
                "or point TORCH_HOME at a folder holding it). Without weights use kernel=feature_rbf, which needs "
                "no download"
            )
        self._distance = _pair_distance(distance)

    def pair_squared_distances(self, first: Tensor, second: Tensor) -> Tensor:
        return self._distance(first, second).reshape(-1).square()


def _pair_distance(distance) -> Callable[[Tensor, Tensor], Tensor]:
    network = getattr(distance, "net", None)
    if isinstance(network, torch.nn.Module):  # torchmetrics LPIPS: its network gives one distance per pair
        _frozen_module(network)

        def lpips_pairs(first: Tensor, second: Tensor) -> Tensor:
            _on_device(network, first)
            dtype = next(network.parameters()).dtype
            value = network(first.to(dtype), second.to(dtype), normalize=True)
            return value.reshape(-1).to(first.dtype)

        return lpips_pairs
    if callable(distance):
        _frozen_module(distance)
        if isinstance(distance, torch.nn.Module):
            return lambda first, second: _on_device(distance, first)(first, second)
        return distance
    raise ValueError(
        f"distance must be a torchmetrics LPIPS metric or a callable (a, b) -> distances, got {type(distance).__name__}"
    )


class RandomConvFeatures(torch.nn.Module):
    """A fixed random conv net: φ(I) = [x, f_1(x), …, f_L(x)], x = 2I − 1, each layer scaled by 1/√(its size).

    f_l = tanh(conv_{3×3, stride 2}(f_{l−1})), weights N(0, 1/fan_in) from ``torch.Generator`` seeded by ``seed``
    (no bias). ‖φ(a) − φ(b)‖² is then the sum over layers of the mean squared feature difference, a pixel term
    plus coarser, random-filter terms (the untrained-network perceptual distance). Weights are non-persistent
    buffers: they never enter a checkpoint and follow ``.to(device, dtype)``.
    """

    @checked
    def __init__(self, channels: ConvChannels = (16, 32), seed: ConvSeed = 0) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        generator = torch.Generator().manual_seed(int(seed))
        fan_in = 3
        for index, width in enumerate(channels):
            weight = torch.randn(width, fan_in, 3, 3, generator=generator, dtype=torch.float64) / math.sqrt(9 * fan_in)
            self.register_buffer(f"weight{index}", weight.float(), persistent=False)
            fan_in = width
        self.num_layers = len(channels)

    def layers(self, images: Tensor) -> list[Tensor]:
        x = 2.0 * images - 1.0
        outputs = [x]
        for index in range(self.num_layers):
            weight = getattr(self, f"weight{index}").to(dtype=x.dtype)
            x = torch.tanh(torch.nn.functional.conv2d(x, weight, stride=2, padding=1))
            outputs.append(x)
        return outputs

    def forward(self, images: Tensor) -> Tensor:
        """(N, F) features: the layers flattened, each divided by √(its number of entries)."""
        return torch.cat([f.flatten(1) / math.sqrt(f[0].numel()) for f in self.layers(images)], dim=1)


class FeatureRBFKernel(ImageRBFKernel):
    """An RBF on the features of a fixed seeded random conv net (:class:`RandomConvFeatures`): no download.

    D(I, I')² = ‖φ(I) − φ(I')‖², k = exp(−D² / h) with the bandwidth rules of :class:`ImageRBFKernel` (the paper's
    h = med² / log B by default), repulsion by autograd through φ. The offline stand-in for the LPIPS kernel.

    Args:
        channels: widths of the stride-2 conv layers (each halves the resolution).
        seed: seed of the conv weights (the kernel is a fixed function of it).
        image_size, bandwidth, gamma, bandwidth_multiplier: see :class:`ImageRBFKernel`.
    """

    @checked
    def __init__(
        self,
        channels: ConvChannels = (16, 32),
        seed: ConvSeed = 0,
        image_size: Annotated[int, {"ge": 1}] | None = PAPER_KERNEL_IMAGE_SIZE,
        bandwidth: BandwidthRule = "median_log_n",
        gamma: PositiveFloat | None = None,
        bandwidth_multiplier: PositiveFloat = 1.0,
    ) -> None:
        super().__init__(image_size, bandwidth, gamma, bandwidth_multiplier)
        self.features = RandomConvFeatures(channels, seed)
        self.channels = tuple(int(c) for c in channels)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"FeatureRBFKernel(channels={list(self.channels)}, seed={self.seed}, {self._settings()})"

    def pair_squared_distances(self, first: Tensor, second: Tensor) -> Tensor:
        features = self.features.to(device=first.device)
        difference = features(torch.cat([first, second])).chunk(2)
        return (difference[0] - difference[1]).square().sum(dim=1)


__all__ = [
    "FeatureRBFKernel",
    "ImageRBFKernel",
    "LPIPSRBFKernel",
    "PAPER_KERNEL_IMAGE_SIZE",
    "RandomConvFeatures",
    "check_kernel_images",
]
