"""Cost of the distillation core next to the UNet: kernel + combiner time as a fraction of one UNet row.

One "UNet row" is one batch element through Stable Diffusion 1.5's UNet at 64×64 latents (random weights built
offline, the real configuration) in the benchmarks' dtype (``--dtype``, default the device's fast one: float32 on
a CPU without native bf16; see ``benchmarks.common``). The kernel and combiner run in float32 whatever that
dtype, as in training (particles and residuals are float32); both are timed in the same run.

CSD's kernel and combiner (Eq. 8 / 9: the RBF kernel with the median rule on the noisy latents, then
(w/N)(KΔ + R)) run once per step over all N particles, while the prior costs several rows per particle (5 for
CSD-Edit with InstructPix2Pix), so the target is < 1 % of a single row for N ≤ 64.

Run: ``python -m benchmarks.bench_distill [--dtype auto] [--latent-size 64]`` (one to two minutes on 2 CPU
cores; 53 s in float32). ``--tiny`` (``run_all --quick``) uses the tests' tiny UNet: a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (
    add_dtype_argument,
    add_tiny_argument,
    bench_dtype,
    default_device,
    dtype_line,
    dtype_name,
    run_tables,
    sd15_unet,
    time_call,
    unet_label,
)
from csd_exp.distill import RBFKernel, csd_gradient

LATENT_SHAPE = (4, 64, 64)  # SD latents of a 512×512 image: D = 16384
TEXT_TOKENS = 77  # CLIP text states (768 wide for SD 1.5: the UNet's cross_attention_dim)
ROWS_PER_PARTICLE_CSD_EDIT = 5  # target: 3 CFG branches; source: 2 (see ARCHITECTURE.md, Priors)
ALPHAS_CUMPROD_T = 0.5
TARGET_FRACTION = 0.01


def unet_row_seconds(
    device: torch.device,
    repeats: int,
    dtype: torch.dtype,
    latent_shape: tuple[int, ...] = LATENT_SHAPE,
    tiny: bool = False,
) -> float:
    """Median seconds of one batch-1 UNet call in ``dtype``."""
    unet = sd15_unet(in_channels=latent_shape[0], dtype=dtype, device=device, tiny=tiny)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, *latent_shape, generator=generator).to(device, dtype)
    text = torch.randn(1, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor([500], device=device)

    def call():
        with torch.inference_mode():
            unet(sample, timestep, encoder_hidden_states=text)

    return time_call(call, repeats=repeats, warmup=1)


def combiner_seconds(
    count: int, device: torch.device, repeats: int, latent_shape: tuple[int, ...] = LATENT_SHAPE
) -> float:
    """Median seconds of the RBF kernel + combiner over ``count`` float32 particles."""
    generator = torch.Generator().manual_seed(count)
    residuals = torch.randn(count, *latent_shape, generator=generator).to(device)
    noisy = torch.randn(count, *latent_shape, generator=generator).to(device)
    kernel = RBFKernel()
    return time_call(lambda: csd_gradient(residuals, noisy, kernel, ALPHAS_CUMPROD_T), repeats=repeats, warmup=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for both measurements; default 1 on CPU, where a shared, "
        "loaded machine's thread oversubscription inflates both timings erratically "
        "(measured: UNet row 2 s with 1 thread, 16 s with 2 under load), 0 = torch's default",
    )
    parser.add_argument(
        "--latent-size",
        type=int,
        default=LATENT_SHAPE[-1],
        help="latent side for both measurements (smaller only for a quick smoke run)",
    )
    add_dtype_argument(parser)
    add_tiny_argument(parser)
    args = parser.parse_args(argv)
    device = default_device()
    dtype, reason = bench_dtype(device, args.dtype)
    shape = (LATENT_SHAPE[0], args.latent_size, args.latent_size)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    print(dtype_line(dtype, reason))

    def table() -> None:
        row = unet_row_seconds(device, args.repeats, dtype, shape, tiny=args.tiny)
        print(
            f"device {device}, threads {torch.get_num_threads()}, D = {'·'.join(map(str, shape))}, "
            f"one {unet_label(args.tiny)} row ({dtype_name(dtype)}, batch 1, {shape[1]}×{shape[2]}): "
            f"{row * 1e3:.0f} ms; kernel+combiner in float32"
        )
        print(f"{'N':>5} {'kernel+combiner ms':>19} {'/ one UNet row':>15} {'/ CSD-Edit step (5N rows)':>26}  target")
        for count in args.particles:
            seconds = combiner_seconds(count, device, args.repeats, shape)
            fraction = seconds / row
            step_fraction = seconds / (row * ROWS_PER_PARTICLE_CSD_EDIT * count)
            verdict = ("ok" if fraction < TARGET_FRACTION else "MISSED") if count <= 64 else "-"
            print(f"{count:>5} {seconds * 1e3:>19.2f} {fraction:>14.3%} {step_fraction:>26.4%}  {verdict}")

    return run_tables("bench_distill", [("kernel+combiner vs one UNet row", table)])


if __name__ == "__main__":
    sys.exit(main())
