"""How CSD's step cost scales: CSD against SDS at N ∈ {4, 16, 64} particles, and 1 against 2 processes.

(a) CSD against SDS, one distillation step (``Guidance`` call + backward of its surrogate loss):

* ``exact prior``: the whole step with the exact-score prior (no network; 3×64×64 latents). The prior is nearly
  free here, so this shows the kernel's cost at its most visible, not a realistic overhead.
* ``SD-1.5 row model``: the step's non-UNet work measured at D = 4·64·64 (a stub prior returns precomputed noise
  predictions, so only noise drawing, noising, kernel, combiner and surrogate are timed), plus
  ``rows × N`` UNet rows of Stable Diffusion 1.5's real configuration (random weights, 64×64 latents, one
  batch-2 call measured once, per row) in the benchmarks' dtype (``--dtype``, default the device's fast one:
  float32 on a CPU without native bf16; see ``benchmarks.common``). The non-UNet work is float32, as in
  training; CSD and SDS share the one UNet row, so their ratio is within one dtype. Text-to-image CSD and SDS
  both cost 2 rows per particle (CFG).

(b) 1 against 2 processes: the wall time of the same panorama run (exact prior, 16 windows per step) with
``trainer=cpu`` and ``trainer=ddp_sim`` (2 CPU processes, gloo) through the ``csd-exp`` CLI as subprocesses. It
measures the whole command (Python start-up, the second rank's start-up, the per-step all-gather and gradient
all-reduce) and ``summary.json``'s ``wall_time_s`` (building the task, fit, final outputs). The exact prior is
cheap, so this is dominated by fixed costs and communication: on a 2-core machine expect no speed-up. With two
or more GPUs it also compares ``trainer=gpu`` with ``trainer=ddp trainer.devices=2``.

Run: ``python -m benchmarks.bench_scaling [--skip-unet] [--skip-processes] [--dtype auto]`` (about 2–3 minutes
on 2 CPU cores). ``--tiny`` (``run_all --quick``) uses the tests' tiny UNet for (a): a smoke run of every table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
from csd_exp.distill import Guidance, Particles
from csd_exp.priors import ExactScorePrior, NoisePrediction, scaled_linear_alphas_cumprod

PARTICLES = (4, 16, 64)
EXACT_SHAPE = (3, 64, 64)  # exact prior: latents are pixels (downsample 1)
SD_SHAPE = (4, 64, 64)  # SD latents of a 512×512 image: D = 16384
SD_ROWS_PER_PARTICLE = 2  # text-to-image CFG: conditional + unconditional row, for CSD and SDS alike
TEXT_TOKENS = 77
INSTRUCTION = "turn it into a pop-art painting"
REPO_ROOT = Path(__file__).resolve().parents[1]
DDP_ENV_VARS = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GLOBAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


class StubPrior:
    """A prior whose noise prediction costs nothing: isolates the guidance step's own work."""

    def __init__(self, shape, count: int, device: torch.device):
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(device)
        generator = torch.Generator().manual_seed(count)
        self.prediction = torch.randn(count, *shape, generator=generator).to(device)

    def add_noise(self, latents, noise, t):
        abar = self.alphas_cumprod[t]
        return abar.sqrt() * latents + (1 - abar).sqrt() * noise

    def make_conditioning(self, prompt, **_):
        return None

    def predict_noise(self, noisy_latents, t, cond, source_noisy_latents=None):
        return NoisePrediction(target=self.prediction, source=None)


def step_function(guidance: Guidance, prior, shape, count: int, device: torch.device, image_cond: bool):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(count, *shape, generator=generator).to(device).requires_grad_()
    cond = torch.randn(count, *shape, generator=generator).to(device) if image_cond else None
    steps = iter(range(10**9))

    def call():
        latents.grad = None
        out = guidance(prior, Particles(latents, condition=cond), prompt=INSTRUCTION, step=next(steps), seed=0)
        out.loss.backward()

    return call


def paired_seconds(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions measured in alternation (a shared, noisy machine affects both alike)."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (first, second, first, second):  # warm-up
        fn()
    for _ in range(repeats):
        for fn, bucket in zip((first, second), times):
            bucket.append(time_call(fn, repeats=1, warmup=0))
    return statistics.median(times[0]), statistics.median(times[1])


def exact_prior_table(device: torch.device, repeats: int, particles: tuple[int, ...] = PARTICLES) -> None:
    prior = ExactScorePrior().to(device)
    print(f"\n### CSD vs SDS step, exact prior (D = {'·'.join(map(str, EXACT_SHAPE))}, {device})\n")
    print("| N | SDS step ms | CSD step ms | CSD / SDS |")
    print("|---:|---:|---:|---:|")
    for count in particles:
        sds, csd = paired_seconds(
            step_function(
                Guidance("random_noise", "identity", guidance_scale=1.5, image_guidance_scale=1.5),
                prior,
                EXACT_SHAPE,
                count,
                device,
                image_cond=True,
            ),
            step_function(
                Guidance("random_noise", "rbf", guidance_scale=1.5, image_guidance_scale=1.5),
                prior,
                EXACT_SHAPE,
                count,
                device,
                image_cond=True,
            ),
            repeats,
        )
        print(f"| {count} | {sds * 1e3:.1f} | {csd * 1e3:.1f} | {csd / sds:.2f} |")


def unet_row_seconds(
    device: torch.device,
    repeats: int,
    dtype: torch.dtype,
    shape: tuple[int, ...] = SD_SHAPE,
    batch: int = 2,
    tiny: bool = False,
) -> float:
    """Seconds per row of a batch-``batch`` UNet call in ``dtype`` (median over ``repeats``)."""
    unet = sd15_unet(in_channels=shape[0], dtype=dtype, device=device, tiny=tiny)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, *shape, generator=generator).to(device, dtype)
    text = torch.randn(batch, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor([500], device=device)

    def call():
        with torch.inference_mode():
            unet(sample, timestep, encoder_hidden_states=text)

    seconds = time_call(call, repeats=repeats, warmup=1) / batch
    return seconds


def row_model_table(
    device: torch.device,
    repeats: int,
    skip_unet: bool,
    dtype: torch.dtype,
    shape: tuple[int, ...] = SD_SHAPE,
    particles: tuple[int, ...] = PARTICLES,
    tiny: bool = False,
) -> None:
    extra = {}
    for count in particles:
        prior = StubPrior(shape, count, device)
        extra["sds", count], extra["csd", count] = paired_seconds(
            step_function(
                Guidance("random_noise", "identity", guidance_scale=1.5, image_guidance_scale=1.5),
                prior,
                shape,
                count,
                device,
                image_cond=False,
            ),
            step_function(
                Guidance("random_noise", "rbf", guidance_scale=1.5, image_guidance_scale=1.5),
                prior,
                shape,
                count,
                device,
                image_cond=False,
            ),
            repeats,
        )
    row = None if skip_unet else unet_row_seconds(device, max(1, repeats // 2), dtype, shape, tiny=tiny)
    label = "not measured (--skip-unet)" if row is None else f"{row * 1e3:.0f} ms"
    print(
        f"\n### CSD vs SDS step, {unet_label(tiny)} row model (D = {'·'.join(map(str, shape))}, {device}; "
        f"one UNet row, {dtype_name(dtype)}, per row of a batch-2 call: {label}; {SD_ROWS_PER_PARTICLE} rows per "
        "particle; non-UNet work float32)\n"
    )
    print("| N | SDS non-UNet ms | CSD non-UNet ms | CSD extra / UNet row | modelled CSD / SDS step |")
    print("|---:|---:|---:|---:|---:|")
    for count in particles:
        sds, csd = extra["sds", count], extra["csd", count]
        if row is None:
            ratio_row = ratio_step = "-"
        else:
            unet = SD_ROWS_PER_PARTICLE * count * row
            ratio_row = f"{(csd - sds) / row:.2%}"
            ratio_step = f"{(unet + csd) / (unet + sds):.4f}"
        print(f"| {count} | {sds * 1e3:.1f} | {csd * 1e3:.1f} | {ratio_row} | {ratio_step} |")


def cli_run(overrides: list[str], folder: Path) -> tuple[float, float]:
    """(command wall time, summary.json wall_time_s) of one csd-exp run in a clean environment."""
    env = {key: value for key, value in os.environ.items() if key not in DDP_ENV_VARS}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true")
    command = [sys.executable, "-m", "csd_exp.cli", *overrides, f"hydra.run.dir={folder}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        tail = [line for line in result.stderr.splitlines() if line.strip()][-8:]
        raise RuntimeError(
            f"csd-exp exited {result.returncode}:\n" + "\n".join(tail) + f"\n(command: {' '.join(command)})"
        )
    summary = json.loads((folder / "summary.json").read_text())
    return wall, float(summary["wall_time_s"])


def processes_table(steps: int, windows: int) -> None:
    run = [
        "experiment=panorama_exact_cpu",
        "logger=csv",
        "metrics=none",
        "~callbacks.progress",
        "data.short_side=64",
        "task.window_size=32",
        "task.window_stride=8",
        f"task.windows_per_step={windows}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
    ]
    pairs = [("cpu, 1 process", ["trainer=cpu"]), ("ddp_sim, 2 processes (gloo)", ["trainer=ddp_sim"])]
    if torch.cuda.device_count() >= 2:
        pairs += [("gpu, 1 process", ["trainer=gpu"]), ("ddp, 2 GPUs (nccl)", ["trainer=ddp", "trainer.devices=2"])]
    print(
        f"\n### 1 vs 2 processes: panorama, exact prior, {steps} steps, {windows} windows per step "
        f"(CLI subprocesses, {os.cpu_count()} CPU cores)\n"
    )
    print("| trainer | command wall s | summary wall_time_s | vs 1 process (command) | vs 1 process (summary) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        reference = None
        for index, (label, overrides) in enumerate(pairs):
            wall, inner = cli_run([*run, *overrides], Path(tmp) / f"run{index}")
            if index % 2 == 0:
                reference = (wall, inner)
            print(f"| {label} | {wall:.1f} | {inner:.1f} | {wall / reference[0]:.2f} | {inner / reference[1]:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-unet", action="store_true", help="no SD-1.5 UNet (saves ~1 minute and ~5 GB)")
    parser.add_argument("--skip-processes", action="store_true", help="no 1-vs-2-process CLI runs")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for (a) (on a loaded shared CPU, 1 avoids oversubscription)",
    )
    parser.add_argument("--particles", type=int, nargs="+", default=list(PARTICLES))
    parser.add_argument(
        "--latent-size",
        type=int,
        default=SD_SHAPE[-1],
        help="side of the SD row model's latents (smaller only for a quick smoke run)",
    )
    add_dtype_argument(parser)
    add_tiny_argument(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = default_device()
    dtype, reason = bench_dtype(device, args.dtype)
    particles = tuple(args.particles)
    print(f"## bench_scaling (device {device}, torch threads {torch.get_num_threads()})\n")
    print(dtype_line(dtype, reason))
    shape = (SD_SHAPE[0], args.latent_size, args.latent_size)
    tables = [
        ("CSD vs SDS, exact prior", lambda: exact_prior_table(device, args.repeats, particles)),
        (
            "CSD vs SDS, row model",
            lambda: row_model_table(device, args.repeats, args.skip_unet, dtype, shape, particles, tiny=args.tiny),
        ),
    ]
    if not args.skip_processes:
        tables.append(("1 vs 2 processes", lambda: processes_table(args.steps, args.windows)))
    return run_tables("bench_scaling", tables)


if __name__ == "__main__":
    sys.exit(main())
