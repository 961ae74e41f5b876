"""One CSD-Edit step with our batched InstructPix2Pix prior vs the official algorithm, same UNet, same run.

A CSD-Edit step over N particles needs, per particle, the 3 target rows [x_t|x̃|y, x_t|x̃|∅, x_t|0|∅] and the
baseline at the noisy source. The official code evaluates the baseline with the full 3-row formula and an
empty prompt (6 rows per particle); we evaluate its 2 non-redundant rows (5 rows per particle) in one
batched UNet call. Measured side by side (interleaved repeats, median), on a random-weight UNet with Stable
Diffusion 1.5's real configuration and 8 input channels (InstructPix2Pix), at a 32×32 latent:

* ``ours``            InstructPix2PixPrior.predict_noise with the noisy sources: one call of 5N rows;
* ``bare 5N rows``    the UNet alone on the same 5N rows (what the step cannot go below);
* ``official video``  one batch-3N target call + one batch-3N source call (csdedit_video.py);
* ``official panorama`` a per-window loop of two batch-3 calls (csdedit_image.py).

Wall time is the measure (``time_call``'s median); process CPU time is printed beside it because shared
2-core machines are noisy. Targets: ours / official panorama ≤ 0.70, ours / official video ≤ 0.85
(5/6 = 0.83 is the row-count floor), ours / bare ≤ 1.1.

All four variants run the same UNet in one dtype (``--dtype``, default the device's fast dtype: float32 on a
CPU without native bf16; see ``benchmarks.common``), so every ratio compares like with like.

Run: ``python -m benchmarks.bench_priors [--particles 4 8] [--repeats 2] [--dtype auto]``. Default particles:
4 and 8, but only 4 on a CPU in float32, where N = 4 alone took 7 minutes on 2 shared cores (N = 8 doubles that
and breaks ``run_all``'s per-benchmark timeout). ``--tiny`` (``run_all --quick``) uses the tests' tiny UNet and text
encoder: a smoke run of the table, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.common import (
    add_dtype_argument,
    add_tiny_argument,
    bench_dtype,
    default_device,
    dtype_line,
    run_tables,
    sd15_unet,
    time_call,
    unet_label,
)
from csd_exp.priors import InstructPix2PixPrior
from csd_exp.priors.tiny import clip_tokenizer, tiny_text_encoder

SD15_TEXT_HIDDEN = 768  # SD 1.5's cross-attention width (CLIP ViT-L/14 text hidden size)
LATENT_CHANNELS = 4
TIMESTEP = 500
INSTRUCTION = "turn it into autumn"


def build_prior(dtype: torch.dtype, device: torch.device, tiny: bool = False) -> InstructPix2PixPrior:
    """The real-size UNet (``tiny``: the tests' tiny one); a 1-layer text encoder as wide as the UNet's
    cross-attention (768 for SD 1.5) and a tiny VAE (neither is timed)."""
    from diffusers import AutoencoderKL

    unet = sd15_unet(in_channels=2 * LATENT_CHANNELS, dtype=dtype, device=device, tiny=tiny)
    width = unet.config.cross_attention_dim
    tokenizer = clip_tokenizer(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text_encoder = tiny_text_encoder(
            len(tokenizer),
            hidden_size=width,
            num_hidden_layers=1,
            intermediate_size=width,
            num_attention_heads=12 if width == SD15_TEXT_HIDDEN else 4,
        )
        vae = AutoencoderKL(
            latent_channels=LATENT_CHANNELS,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
    prior = InstructPix2PixPrior(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, torch_dtype=dtype)
    return prior.to(device)


def step_functions(prior: InstructPix2PixPrior, num_particles: int, latent_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (num_particles, LATENT_CHANNELS, latent_size, latent_size)
    noisy, noisy_source, image_cond = (torch.randn(shape, generator=generator).to(prior.device) for _ in range(3))
    cond = prior.make_conditioning(INSTRUCTION, image_cond, guidance_scale=7.5, image_guidance_scale=1.5)
    unet, dtype, t = prior.unet, prior.dtype, torch.tensor(TIMESTEP, device=prior.device)
    text, empty = prior.prompt_embeddings(INSTRUCTION).to(dtype), prior.prompt_embeddings("").to(dtype)
    cast = dict(device=prior.device, dtype=dtype)
    zeros = torch.zeros_like(image_cond)

    def rows(samples, conditions):
        return torch.cat([torch.cat(pair, dim=1) for pair in zip(samples, conditions)]).to(**cast)

    def embeds(*prompts, n):
        return torch.cat([p.expand(n, -1, -1) for p in prompts])

    def official_cfg(eps):
        text_eps, image_eps, uncond_eps = eps.float().chunk(3)
        return uncond_eps + 7.5 * (text_eps - image_eps) + 1.5 * (image_eps - uncond_eps)

    bare_sample = rows([noisy] * 3 + [noisy_source] * 2, [image_cond, image_cond, zeros, image_cond, zeros])
    bare_embeds = embeds(text, empty, empty, empty, empty, n=num_particles)

    @torch.no_grad()
    def ours():
        return prior.predict_noise(noisy, TIMESTEP, cond, source_noisy_latents=noisy_source)

    @torch.no_grad()
    def bare():
        return unet(bare_sample, t, encoder_hidden_states=bare_embeds).sample

    @torch.no_grad()
    def official_video():
        cond3 = [image_cond, image_cond, zeros]
        target = official_cfg(
            unet(rows([noisy] * 3, cond3), t, encoder_hidden_states=embeds(text, empty, empty, n=num_particles)).sample
        )
        source = official_cfg(
            unet(
                rows([noisy_source] * 3, cond3), t, encoder_hidden_states=embeds(empty, empty, empty, n=num_particles)
            ).sample
        )
        return target - source

    @torch.no_grad()
    def official_panorama():
        deltas = []
        for i in range(num_particles):
            one = slice(i, i + 1)
            cond3 = [image_cond[one], image_cond[one], zeros[one]]
            target = official_cfg(
                unet(rows([noisy[one]] * 3, cond3), t, encoder_hidden_states=embeds(text, empty, empty, n=1)).sample
            )
            source = official_cfg(
                unet(
                    rows([noisy_source[one]] * 3, cond3), t, encoder_hidden_states=embeds(empty, empty, empty, n=1)
                ).sample
            )
            deltas.append(target - source)
        return torch.cat(deltas)

    return {
        OURS: (ours, 5),
        "bare UNet 5N rows": (bare, 5),
        "official video (2 x 3N)": (official_video, 6),
        "official panorama (2N x 3)": (official_panorama, 6),
    }


OURS = "ours (5N rows, 1 call)"
TARGETS = {
    "bare UNet 5N rows": "<= 1.10",
    "official video (2 x 3N)": "<= 0.85",
    "official panorama (2N x 3)": "<= 0.70",
}


def default_particles(device: torch.device, dtype: torch.dtype) -> list[int]:
    """N = 4 and 8, except only 4 for a float32 UNet on a CPU, which is too slow for both in one run."""
    return [4] if device.type == "cpu" and dtype == torch.float32 else [4, 8]


def particles_table(prior, n: int, latent_size: int, repeats: int) -> None:
    """The rows of one particle count: every variant timed in interleaved repeats, ratios to ours."""
    functions = step_functions(prior(), n, latent_size)
    functions[next(iter(functions))][0]()  # warm-up (allocator, kernels)
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    for _ in range(repeats):  # interleaved: contention hits all alike
        for name, (fn, _rows) in functions.items():
            cpu_start = time.process_time()
            wall[name].append(time_call(fn, repeats=1, warmup=0))
            cpu[name].append(time.process_time() - cpu_start)
    median = {name: statistics.median(ts) for name, ts in wall.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name, (_fn, rows_per_particle) in functions.items():
        rows = rows_per_particle * n
        ratio, cpu_ratio = median[OURS] / median[name], cpu_median[OURS] / cpu_median[name]
        target = f"{ratio:.2f} (cpu {cpu_ratio:.2f}) {TARGETS[name]}" if name != OURS else ""
        print(
            f"{n:>3} {name:<28} {rows:>5} {median[name]:>9.2f} {cpu_median[name]:>8.2f} "
            f"{rows / median[name]:>7.1f}  {target}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--particles", type=int, nargs="+", default=None, help="particle counts (default 4 8; 4 on a CPU in float32)"
    )
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    add_dtype_argument(parser)
    add_tiny_argument(parser)
    args = parser.parse_args(argv)
    device = default_device()
    dtype, reason = bench_dtype(device, args.dtype)
    particles = args.particles or default_particles(device, dtype)
    prior = functools.cache(lambda: build_prior(dtype, device, tiny=args.tiny))  # built once, inside the first table
    print(dtype_line(dtype, reason))
    print(
        f"device {device}, {dtype}, threads {torch.get_num_threads()}, latent {args.latent_size}x{args.latent_size},"
        f" {unet_label(args.tiny)} (8 in-channels, random weights), timestep {TIMESTEP}, "
        f"{args.repeats} interleaved repeats"
    )
    header = f"{'N':>3} {'variant':<28} {'rows':>5} {'wall s':>9} {'cpu s':>8} {'rows/s':>7}  ours/this (target)"
    print(header)
    print("-" * len(header))
    return run_tables(
        "bench_priors",
        [
            (f"ours vs official, N = {n}", functools.partial(particles_table, prior, n, args.latent_size, args.repeats))
            for n in particles
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
