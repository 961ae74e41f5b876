"""``python -m benchmarks.run_all --quick`` runs every table of every benchmark on tiny models without one
``FAILED:`` line, so a renamed config key or API breaks this test, not a user's ``make bench``.

The first test runs it for real (a subprocess, tiny models, one thread per benchmark, two benchmarks at a time:
about 60 s of CPU); the others check, in-process, that a failure does produce a ``FAILED:`` line and a non-zero
exit, so the first test cannot pass by missing one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from framework_support import REPO_ROOT

# A title or header of every table each benchmark prints: a table that silently stops printing fails too.
TABLE_TITLES = {
    "bench_distill": ["kernel+combiner ms"],
    "bench_priors": ["ours (5N rows, 1 call)", "official panorama (2N x 3)"],
    "bench_scaling": [
        "### CSD vs SDS step, exact prior",
        "### CSD vs SDS step, tiny test UNet",
        "### 1 vs 2 processes",
        "| cpu, 1 process |",
        "| ddp_sim, 2 processes (gloo) |",
    ],
    "bench_video_baselines": ["| fatezero | 2 |", "| pix2video | 2 |", "| csd_edit | 2 |"],
}


@pytest.mark.slow
def test_quick_benchmarks_run_every_table(tmp_path):
    report = tmp_path / "report.md"
    command = [sys.executable, "-m", "benchmarks.run_all", "--quick", "--jobs", "2", "--timeout", "600"]
    result = subprocess.run(
        [*command, "--output", str(report)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500
    )
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED:")]
    assert not failed, "\n".join(failed) + "\n" + result.stdout[-6000:]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from benchmarks.run_all import discover

    assert sorted(TABLE_TITLES) == discover(), "a new benchmark: list its tables in TABLE_TITLES"
    for name, titles in TABLE_TITLES.items():
        section = result.stdout.split(f"## {name}\n", 1)[-1]
        assert f"benchmarks.{name} --" in result.stdout and ": ok," in section.splitlines()[1]
        for title in titles:
            assert title in section, f"{name}: no {title!r} in its output"
    assert "every table ran" in result.stdout
    assert report.read_text().startswith("# csd-exp benchmarks")
    assert "tiny test UNet" in result.stdout and "SD-1.5" not in result.stdout  # no real-size model


def test_a_failing_table_prints_failed_and_the_next_table_still_runs(capsys):
    from benchmarks.common import run_tables

    def broken():
        raise KeyError("task.snapshot_every")

    status = run_tables("bench_x", [("first", lambda: print("first ran")), ("second", broken), ("third", print)])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    assert out == ["first ran", "FAILED: bench_x/second: KeyError: 'task.snapshot_every'", ""]
    assert run_tables("bench_x", [("only", lambda: None)]) == 0


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "expected"),
    [
        (1, "table\nFAILED: bench_x/t: RuntimeError: no\n", "Traceback ...", ["FAILED: bench_x/t: RuntimeError: no"]),
        (1, "", "Traceback ...\nImportError: cannot import name 'Guidance'\n", None),
        (None, "half a table\n", "", ["FAILED: bench_x: timeout after 5 s: no error output"]),
        (0, "FAILED: bench_x/t: ValueError: v\n", "", ["FAILED: bench_x/t: ValueError: v"]),
    ],
    ids=["table-failed", "crashed-outside-tables", "timed-out", "exit-0-with-a-failed-table"],
)
def test_run_all_turns_every_failure_into_a_failed_line_and_exit_1(
    monkeypatch, tmp_path, capsys, returncode, stdout, stderr, expected
):
    from benchmarks import run_all

    calls = []
    for variable in run_all.QUICK_THREAD_ENV_VARS:  # --quick sets them in os.environ: restored after the test
        monkeypatch.setenv(variable, "1")

    def fake_process(command, env, timeout):
        calls.append(command)
        if command[2] == "benchmarks.bench_x":
            return returncode, stdout, stderr, 0.1
        return 0, "a table\n", "", 0.1

    monkeypatch.setattr(run_all, "discover", lambda: ["bench_ok", "bench_x"])
    monkeypatch.setattr(run_all, "QUICK_ARGS", {"bench_ok": ["--tiny"], "bench_x": ["--tiny"]})
    monkeypatch.setattr(run_all, "run_process", fake_process)
    monkeypatch.setattr(run_all, "machine_header", lambda: ["# header", ""])
    status = run_all.main(["--quick", "--timeout", "5", "--output", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    if expected is None:
        expected = ["FAILED: bench_x: exit 1: ImportError: cannot import name 'Guidance'"]
    assert status == 1
    assert [command[2:] for command in calls] == [["benchmarks.bench_ok", "--tiny"], ["benchmarks.bench_x", "--tiny"]]
    summary = out.split("## Summary", 1)[1]
    assert [line for line in summary.splitlines() if line.startswith("FAILED")] == expected
    assert "1 failure(s)" in summary
    assert all(line in (tmp_path / "r.md").read_text() for line in expected)


def test_quick_refuses_a_benchmark_without_tiny_sizes_and_jobs_without_quick(monkeypatch):
    from benchmarks import run_all

    monkeypatch.setattr(run_all, "discover", lambda: ["bench_new"])
    with pytest.raises(SystemExit, match="no tiny sizes for \\['bench_new'\\]"):
        run_all.main(["--quick"])
    with pytest.raises(SystemExit):
        run_all.parse_args(["--jobs", "2"])
