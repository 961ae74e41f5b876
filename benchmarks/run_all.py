"""Run every ``benchmarks/bench_*.py`` in one go and gather their tables in one markdown report.

Each benchmark runs as its own subprocess (``python -m benchmarks.<name>``), so one benchmark's memory (a
real-size UNet needs ~5 GB) and thread settings never leak into the next, and one failure does not stop the
others. The report (``benchmarks/results/<timestamp>.md``, git-ignored) and stdout get, per benchmark, its
printed tables, its wall time and the machine's load average before and after it: on a shared machine a high
load explains noisy ratios. Every ratio in a table is measured within that benchmark's single run, in one dtype.

The header records the UNet dtype all benchmarks use and why (``benchmarks.common.bench_dtype``: the device's
fast dtype, float32 on a CPU without native bf16), plus any instruction-set caps in the environment;
``--dtype`` forces one for every benchmark (through ``CSD_BENCH_DTYPE``).

Run: ``python -m benchmarks.run_all`` (``make bench``), or ``--only bench_scaling``, ``--skip bench_priors``,
``--args bench_scaling="--skip-unet"``, ``--dtype float32``, ``--quick`` (tiny sizes and one repeat: a smoke
test that every benchmark runs end to end, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import DTYPE_ENV

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# What the emulation caps in the environment are set to goes in the report: they change the dtype choice.
ISA_CAP_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# --quick: each benchmark's smallest meaningful run (real-size UNet, tiny latents, one repeat).
QUICK_ARGS = {
    "bench_priors": ["--particles", "1", "--latent-size", "8", "--repeats", "1"],
    "bench_distill": ["--particles", "4", "16", "--latent-size", "16", "--repeats", "1"],
    "bench_scaling": ["--particles", "4", "--latent-size", "16", "--repeats", "1", "--steps", "3", "--windows", "4"],
    "bench_video_baselines": ["--frames", "2", "--steps", "2", "--csd-steps", "1", "--frame-size", "8"],
}
DDP_ENV_VARS = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GLOBAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


def discover() -> list[str]:
    return sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))


def load_average() -> str:
    try:
        return "/".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return result.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dtype_header() -> str:
    """The dtype line for the report, computed here with the environment the benchmarks inherit."""
    from benchmarks.common import bench_dtype, default_device, dtype_line

    caps = [f"{name}={os.environ[name]}" for name in ISA_CAP_ENV_VARS if os.environ.get(name)]
    return f"- benchmark {dtype_line(*bench_dtype(default_device()))}" + (f"; caps: {', '.join(caps)}" if caps else "")


def machine_header() -> list[str]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    return [
        f"# csd-exp benchmarks, {datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- commit: {git_commit()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), {device}",
        dtype_header(),
        f"- load average at start (1/5/15 min): {load_average()}",
        "",
    ]


def run_benchmark(name: str, extra_args: list[str], timeout: float) -> tuple[bool, str, float]:
    """(succeeded, markdown section, seconds)."""
    env = {key: value for key, value in os.environ.items() if key not in DDP_ENV_VARS}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    command = [sys.executable, "-m", f"benchmarks.{name}", *extra_args]
    load_before = load_average()
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, stdout, stderr = result.returncode == 0, result.stdout, result.stderr
        status = "ok" if ok else f"FAILED (exit {result.returncode})"
    except subprocess.TimeoutExpired as expired:
        ok, status = False, f"FAILED (timeout after {timeout:.0f} s)"
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
    seconds = time.perf_counter() - started
    lines = [
        f"## {name}",
        "",
        f"`{' '.join(['python', '-m', f'benchmarks.{name}', *map(shlex.quote, extra_args)])}`: {status}, "
        f"{seconds:.0f} s, load average before {load_before}, after {load_average()}",
        "",
        stdout.rstrip(),
    ]
    if not ok:
        lines += ["", "```", stderr.rstrip()[-4000:], "```"]
    return ok, "\n".join(lines) + "\n", seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names to run (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], help="benchmark names to leave out")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar='NAME="ARGS"',
        help='extra command-line arguments for one benchmark, e.g. bench_scaling="--skip-unet"',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds per benchmark (bench_priors in float32 on 2 CPU cores needs ~8 minutes)",
    )
    parser.add_argument(
        "--dtype", default=None, help="force the UNet dtype of every benchmark (auto, float32, bfloat16, float16)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one repeat: checks every benchmark runs, measures nothing meaningful",
    )
    parser.add_argument("--output", type=Path, default=None, help="report path (default benchmarks/results/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    available = discover()
    names = args.only or available
    unknown = sorted((set(names) | set(args.skip)) - set(available))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {available}")
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, value = item.partition("=")
        if name not in available:
            raise SystemExit(f"--args {item!r}: unknown benchmark {name!r}; available: {available}")
        extra[name] = [*extra.get(name, []), *shlex.split(value)]
    if args.quick:  # user --args come last, so they override the quick defaults
        extra = {name: [*QUICK_ARGS.get(name, []), *extra.get(name, [])] for name in available}
    if args.dtype is not None:
        from csd_exp.infra.devices import parse_torch_dtype

        if args.dtype.strip().lower() != "auto":
            try:
                parse_torch_dtype(args.dtype)  # fail here, not once per benchmark
            except ValueError as error:
                raise SystemExit(f"--dtype: {error}") from None
        os.environ[DTYPE_ENV] = args.dtype  # the children inherit it (run_benchmark copies os.environ)

    report = machine_header()
    if args.quick:
        report.insert(-1, "- --quick: smoke-test sizes, the numbers are not measurements")
    print("\n".join(report), flush=True)
    failed = []
    for name in names:
        if name in args.skip:
            continue
        print(f"... running {name}", file=sys.stderr, flush=True)
        ok, section, _ = run_benchmark(name, extra.get(name, []), args.timeout)
        if not ok:
            failed.append(name)
        report.append(section)
        print(section, flush=True)

    output = args.output or RESULTS_DIR / f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(report))
    print(f"report written to {output}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
