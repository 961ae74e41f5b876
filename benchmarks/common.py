"""Shared helpers for the benchmarks: a random-weight UNet of Stable Diffusion 1.5's real size, a timer, the
dtype every benchmark measures in, and the per-table failure report.

Real-size figures here come from Stable Diffusion 1.5's UNet configuration with random weights, built
offline (no download). Speed does not depend on the weights' values, so step-time ratios measured with
it transfer to the real checkpoint.

The dtype is the device's fast one (``csd_exp.infra.devices.fast_float_dtype``): bfloat16 on CUDA with native bf16,
else float16; on a CPU bfloat16 only with native bf16 instructions (AVX-512 BF16 / AMX, uncapped), else
float32, because emulated bf16 made one UNet row ~49x slower than float32 on an AVX2-only CPU. ``--dtype`` on
any benchmark, or ``CSD_BENCH_DTYPE`` in the environment (``run_all --dtype`` sets it), forces one. Each
benchmark prints the dtype and the reason, and runs every UNet it times in that one dtype, so both sides of
each ratio are measured in the same dtype, in the same run.

``--tiny`` (``run_all --quick`` passes it) swaps the real-size UNet for the tests' tiny one (block_out_channels
(32, 64), as ``csd_exp.priors.tiny``): every table still runs end to end in seconds, but its numbers measure
nothing. Each benchmark runs its tables through :func:`run_tables`: a table that fails prints
``FAILED: <benchmark>/<table>: <error>`` and the others still run; the script then exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable

import torch

from csd_exp.infra.devices import describe_dtype_choice, fast_float_dtype, parse_torch_dtype

DTYPE_ENV = "CSD_BENCH_DTYPE"

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
# The tests' tiny UNet (csd_exp.priors.tiny): a smoke run of every table (--tiny / run_all --quick), no measurement.
TINY_UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
)
FAILED_PREFIX = "FAILED: "


def sd15_unet(
    in_channels: int = 4,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tiny: bool = False,
):
    """A UNet2DConditionModel with SD 1.5's configuration (in_channels=8 is InstructPix2Pix's), random weights;
    ``dtype`` None is :func:`bench_dtype`'s choice for ``device``; ``tiny`` builds the tests' tiny UNet instead
    (its text width is ``unet.config.cross_attention_dim``, 32 instead of 768)."""
    from diffusers import UNet2DConditionModel

    if dtype is None:
        dtype = bench_dtype(device)[0]

    config = TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**config, "in_channels": in_channels})
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bench_dtype(device: str | torch.device, requested: str | None = None) -> tuple[torch.dtype, str]:
    """(dtype, one-line reason) the benchmarks run the UNet in: ``requested`` (e.g. ``--dtype``), else
    ``$CSD_BENCH_DTYPE``, else "auto" = the device's fast dtype."""
    value = requested if requested is not None else os.environ.get(DTYPE_ENV, "auto")
    if str(value).strip().lower() == "auto":
        return fast_float_dtype(device), describe_dtype_choice(device, fast=True)
    dtype = parse_torch_dtype(value, device)
    source = "--dtype" if requested is not None else DTYPE_ENV
    return dtype, f"{dtype_name(dtype)}: forced by {source}={value}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--dtype`` option every benchmark shares (default: $CSD_BENCH_DTYPE or auto)."""
    parser.add_argument(
        "--dtype",
        default=None,
        help=f"UNet dtype: auto (the device's fast dtype), float32, bfloat16, float16; default ${DTYPE_ENV} or auto",
    )


def add_tiny_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--tiny`` option (``run_all --quick``): the tiny UNet, so every table runs in seconds, measuring nothing."""
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the tests' tiny UNet instead of SD 1.5's real size: a smoke run of every table, not a measurement",
    )


def unet_label(tiny: bool) -> str:
    return "tiny test UNet (--tiny: not a measurement)" if tiny else "SD-1.5 UNet"


def error_line(error: BaseException, limit: int = 400) -> str:
    """``error`` as one line: its type and message, whitespace collapsed, at most ``limit`` characters."""
    text = " / ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_tables(benchmark: str, tables: Iterable[tuple[str, Callable[[], object]]]) -> int:
    """Run each ``(name, table)`` in turn; one that raises prints its traceback on stderr and
    ``FAILED: <benchmark>/<name>: <error>`` on stdout, and the next still runs. Returns the exit status (1 if
    any table failed), so ``run_all`` and its test see every broken table, not only the first."""
    failed = False
    for name, table in tables:
        try:
            table()
        except Exception as error:  # reported as FAILED and turned into the exit status, never swallowed
            traceback.print_exc()
            print(f"{FAILED_PREFIX}{benchmark}/{name}: {error_line(error)}", flush=True)
            failed = True
        sys.stdout.flush()
    return 1 if failed else 0


def dtype_line(dtype: torch.dtype, reason: str) -> str:
    """The line each benchmark prints, so the report says which dtype its numbers are in and why."""
    return f"dtype {dtype_name(dtype)} ({reason})"


def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
