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
``--args bench_scaling="--skip-unet"``, ``--dtype float32``, ``--quick`` (the tests' tiny UNet, tiny sizes and one
repeat: a smoke test that every table of every benchmark runs end to end, not a measurement; a minute or two on
2 CPU cores, and ``tests/test_benchmarks_quick.py`` runs it).

Every failure prints one ``FAILED: <benchmark>/<table>: <error>`` line: the benchmarks print their own per table
(``benchmarks.common.run_tables``), and a benchmark that crashes or times out outside a table gets one here. They
are repeated at the end of stdout, and the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import DTYPE_ENV, FAILED_PREFIX

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# What the emulation caps in the environment are set to goes in the report: they change the dtype choice.
ISA_CAP_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# --quick: every table of each benchmark at its smallest size (tiny UNet, tiny latents, one repeat); a benchmark
# missing here fails --quick, so a new one gets its tiny sizes when it is added.
QUICK_ARGS = {
    "bench_priors": ["--tiny", "--particles", "2", "--latent-size", "8", "--repeats", "1"],
    "bench_distill": ["--tiny", "--particles", "4", "16", "--latent-size", "16", "--repeats", "1"],
    "bench_scaling": [
        *("--tiny", "--particles", "4", "--latent-size", "16", "--repeats", "1", "--steps", "2", "--windows", "2"),
    ],
    "bench_video_baselines": ["--frames", "2", "--steps", "2", "--csd-steps", "1", "--frame-size", "8"],
}
# --quick runs each benchmark on one thread unless the environment says otherwise.
QUICK_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Process groups of the benchmarks running now: Ctrl-C and SIGTERM reach only run_all (each benchmark has its
# own session), so main() stops these itself.
RUNNING: set[int] = set()
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


def failure_lines(name: str, stdout: str, stderr: str, status: str) -> list[str]:
    """The ``FAILED:`` lines of one benchmark: the ones it printed per table, else one for the whole script
    (a crash or a timeout outside any table) with the last line of its stderr."""
    printed = [line for line in stdout.splitlines() if line.startswith(FAILED_PREFIX)]
    if printed:
        return printed
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no error output")
    return [f"{FAILED_PREFIX}{name}: {status}: {last[:400]}"]


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_process(command: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str, str, float]:
    """(exit status, None on timeout; stdout; stderr; CPU seconds of the process and of every process it waited
    for, e.g. bench_scaling's CLI runs). It runs in its own session, so a timeout stops its children too (and
    :func:`main` stops every running one when it is interrupted)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        RUNNING.add(process.pid)
        timed_out = threading.Event()
        timer = threading.Timer(timeout, lambda: (timed_out.set(), kill_group(process.pid)))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
            RUNNING.discard(process.pid)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen never waits for it again
        outputs = []
        for stream in (out, err):
            stream.seek(0)
            outputs.append(stream.read().decode(errors="replace"))
    return (None if timed_out.is_set() else process.returncode), *outputs, usage.ru_utime + usage.ru_stime


def run_benchmark(name: str, extra_args: list[str], timeout: float) -> tuple[list[str], str, float]:
    """(its FAILED lines, empty when it succeeded; markdown section; seconds)."""
    env = {key: value for key, value in os.environ.items() if key not in DDP_ENV_VARS}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    command = [sys.executable, "-m", f"benchmarks.{name}", *extra_args]
    print(f"... running {name}", file=sys.stderr, flush=True)
    load_before = load_average()
    started = time.perf_counter()
    returncode, stdout, stderr, cpu = run_process(command, env, timeout)
    seconds = time.perf_counter() - started
    ok = returncode == 0 and not any(line.startswith(FAILED_PREFIX) for line in stdout.splitlines())
    cause = f"timeout after {timeout:.0f} s" if returncode is None else f"exit {returncode}"
    failures = [] if ok else failure_lines(name, stdout, stderr, cause)
    lines = [
        f"## {name}",
        "",
        f"`{' '.join(['python', '-m', f'benchmarks.{name}', *map(shlex.quote, extra_args)])}`: "
        f"{'ok' if ok else f'FAILED ({cause})'}, {seconds:.0f} s (CPU {cpu:.0f} s), load average before "
        f"{load_before}, after {load_average()}",
        "",
        stdout.rstrip(),
    ]
    if failures:
        lines += ["", "```", stderr.rstrip()[-4000:], "```"]
        lines += ["", *(line for line in failures if line not in stdout)]
    return failures, "\n".join(lines) + "\n", seconds


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
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --quick: benchmarks run side by side (their timings disturb each other, so not without --quick)",
    )
    parser.add_argument("--output", type=Path, default=None, help="report path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more")
    if args.jobs > 1 and not args.quick:
        parser.error("--jobs > 1 runs benchmarks side by side, which disturbs their timings: use it with --quick only")
    return args


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
        missing = sorted(set(names) - set(args.skip) - set(QUICK_ARGS))
        if missing:
            raise SystemExit(f"--quick: no tiny sizes for {missing}; add them to QUICK_ARGS in benchmarks/run_all.py")
        extra = {name: [*QUICK_ARGS.get(name, []), *extra.get(name, [])] for name in available}
        for variable in QUICK_THREAD_ENV_VARS:  # tiny models gain nothing from threads; a loaded machine loses a lot
            os.environ.setdefault(variable, "1")
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
        threads = ", ".join(f"{variable}={os.environ[variable]}" for variable in QUICK_THREAD_ENV_VARS)
        report.insert(
            -1, f"- --quick: smoke-test sizes ({threads}, {args.jobs} at a time), the numbers are not measurements"
        )
    print("\n".join(report), flush=True)
    failures: list[str] = []
    started = time.perf_counter()
    selected = [name for name in names if name not in args.skip]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM)) if in_main_thread else None
    with contextlib.ExitStack() as restore, concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if previous is not None:
            restore.callback(signal.signal, signal.SIGTERM, previous)
        runs = [pool.submit(run_benchmark, name, extra.get(name, []), args.timeout) for name in selected]
        try:
            for run in runs:  # in order, whatever order they finish in
                failed, section, _ = run.result()
                failures += failed
                report.append(section)
                print(section, flush=True)
        except BaseException:  # Ctrl-C, SIGTERM: stop the running benchmarks and their children, then leave
            for future in runs:
                future.cancel()
            for pid in list(RUNNING):
                kill_group(pid)
            raise
    summary = f"{len(failures)} failure(s)" if failures else "every table ran"
    report += [f"## Summary\n\n{summary}, {time.perf_counter() - started:.0f} s in all", *failures, ""]
    print("\n".join(report[-(len(failures) + 2) :]), flush=True)

    output = args.output or RESULTS_DIR / f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(report))
    print(f"report written to {output}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
