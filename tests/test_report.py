"""``csd-exp-report``: rows per (method, swept values) with the right means, failed runs counted and never
averaged, the paper column, the files written; and one real 2-job smoke sweep through the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from csd_exp.report import main
from csd_exp.report.plots import line_key
from csd_exp.report.runs import load_runs
from csd_exp.report.table import build_rows, swept_columns

RBF = {"_target_": "csd_exp.distill.RBFKernel", "bandwidth": "median", "bandwidth_multiplier": 1.0}


def psnr_of(method: str, scale: float, seed: int) -> float:
    """A made-up metric with a known mean over seeds 0 and 1: base + 0.5, sample std sqrt(0.5)."""
    return (25.0 if method == "csd_edit" else 18.0) + scale + seed


def write_run(
    sweep: Path,
    name: str,
    *,
    method: str = "csd_edit",
    scale: float = 3.0,
    seed: int = 0,
    status: str = "completed",
    task: str = "panorama",
    kernel: dict | None = None,
    metrics: dict | None = None,
    image: bool = True,
) -> Path:
    """A run folder shaped like a real one: the bookkeeping keys (paths, callbacks, loggers, task.seed)
    differ between runs as they do in a sweep."""
    folder = sweep / name
    folder.mkdir(parents=True)
    kernel = (RBF if method == "csd_edit" else {}) if kernel is None else kernel
    config = {
        "seed": seed,
        "run_name": f"{task}_{method}",
        "ckpt_path": None,
        "kernel": kernel,
        "guidance": {"method": method, "guidance_scale": scale, "image_guidance_scale": 1.5, "kernel": kernel or None},
        "task": {"_target_": f"csd_exp.tasks.{task.capitalize()}Task", "seed": seed, "window_size": 32},
        "trainer": {"max_steps": 2, "default_root_dir": str(folder), "devices": 1},
        "paths": {"output_dir": str(folder), "root_dir": str(sweep)},
        "callbacks": {"checkpoint": {"dirpath": str(folder / "checkpoints")}},
        "logger": {"csv": {"save_dir": str(folder)}},
    }
    if metrics is None:
        metrics = {"fidelity/psnr": psnr_of(method, scale, seed), "consistency/mode_fraction/hue_72": 1.0}
    # Runs record what ran at the top of summary.json (the report never recovers it from names).
    summary = {"status": status, "metrics": metrics, "seed": seed, "steps": 2, "wall_time_s": 1.0, "config": config}
    summary.update(task=task, method=method)
    (folder / "summary.json").write_text(json.dumps(summary))
    if image:
        Image.new("RGB", (48, 16), (40 * seed, 100, 200)).save(folder / "edited.png")
    return folder


def scale_sweep(root: Path) -> Path:
    """2 methods x 2 text guidance scales (omega_y) x 2 seeds, numbered like a Hydra multirun."""
    job = 0
    for method in ("csd_edit", "sds"):
        for scale in (3.0, 7.5):
            for seed in (0, 1):
                write_run(root, f"{job}_panorama_{method}_seed{seed}", method=method, scale=scale, seed=seed)
                job += 1
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_row_per_method_and_swept_value_with_the_mean_over_seeds(tmp_path):
    sweep = scale_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "report.csv")
    assert [(row["method"], row["guidance_scale"], row["n"]) for row in rows] == [
        ("csd_edit", "3", "2"),
        ("csd_edit", "7.5", "2"),
        ("sds", "3", "2"),
        ("sds", "7.5", "2"),
    ]
    for row in rows:
        scale = float(row["guidance_scale"])
        assert float(row["fidelity/psnr_mean"]) == pytest.approx(psnr_of(row["method"], scale, 0) + 0.5)
        assert float(row["fidelity/psnr_std"]) == pytest.approx(math.sqrt(0.5))
    # The per-mode breakdown is left out by default; seeds, paths and callbacks are not swept keys.
    assert not any("mode_fraction" in name for name in rows[0])
    assert list(rows[0])[:4] == ["method", "guidance_scale", "n", "fidelity/psnr_mean"]
    text = (sweep / "report.md").read_text()
    assert "| method | guidance_scale | n | fidelity/psnr | wall_time_s |" in text
    assert "| csd_edit | 7.5 | 2 | 33 ± 0.71 | 1 ± 0 |" in text
    # The kernel differs only between the methods: a note, not a column.
    assert "Differ only between methods" in text and "kernel.bandwidth" in text


def test_failed_and_interrupted_runs_are_counted_never_averaged(tmp_path):
    sweep = scale_sweep(tmp_path / "sweep")
    write_run(sweep, "8_panorama_csd_edit_seed2", seed=2, status="failed", metrics={"fidelity/psnr": 1000.0})
    # A refused run's config is unresolved and may lack keys: it must not create swept columns either.
    refused = sweep / "9_panorama_csd_edit_seed3"
    refused.mkdir()
    (refused / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "ValueError: bad\nmore", "metrics": {}, "config": {"x": "${y}"}})
    )
    write_run(sweep, "10_panorama_sds_seed2", method="sds", seed=2, status="interrupted")
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "2 runs failed: 8_panorama_csd_edit_seed2, 9_panorama_csd_edit_seed3" in text
    assert "1 run interrupted: 10_panorama_sds_seed2" in text
    assert "- 9_panorama_csd_edit_seed3: ValueError: bad\n" in text
    rows = read_csv(sweep / "report.csv")
    assert [row["n"] for row in rows] == ["2"] * 4
    assert float(rows[0]["fidelity/psnr_mean"]) == pytest.approx(28.5)
    assert list(rows[0])[1] == "guidance_scale"


def test_the_paper_column_sits_beside_ours(tmp_path):
    sweep = scale_sweep(tmp_path / "sweep")
    paper = tmp_path / "paper.yaml"
    paper.write_text("csd_edit:\n  fidelity/psnr: 30.5\nin2n:\n  fidelity/psnr: 20\n")
    assert main([str(sweep), "--metrics", "fidelity/psnr", "--paper-column", str(paper)]) == 0
    text = (sweep / "report.md").read_text()
    assert "| method | guidance_scale | n | fidelity/psnr | paper |" in text
    assert "| csd_edit | 3 | 2 | 28.5 ± 0.71 | 30.5 |" in text
    assert "| sds | 3 | 2 | 21.5 ± 0.71 | – |" in text
    assert "Paper numbers for methods without runs here: in2n." in text
    rows = read_csv(sweep / "report.csv")
    assert [row["fidelity/psnr_paper"] for row in rows] == ["30.5", "30.5", "", ""]
    # JSON works too; a value that is not a number is a one-line error.
    paper_json = tmp_path / "paper.json"
    paper_json.write_text(json.dumps({"sds": {"fidelity/psnr": 19}}))
    assert main([str(sweep), "--paper-column", str(paper_json), "--out", str(tmp_path / "json")]) == 0
    paper.write_text("csd_edit:\n  fidelity/psnr: high\n")
    assert main([str(sweep), "--paper-column", str(paper)]) == 2


def test_the_files_are_written_into_the_sweep_or_out(tmp_path, monkeypatch):
    sweep = scale_sweep(tmp_path / "sweep")
    monkeypatch.chdir(tmp_path)  # relative paths, from any folder
    assert main(["sweep", "--metrics", "fidelity/*", "wall_time_s"]) == 0
    names = {"report.md", "report.csv", "report_grid.png", "report_fidelity_psnr.png", "report_wall_time_s.png"}
    assert names <= {path.name for path in sweep.iterdir()}
    with Image.open(sweep / "report_grid.png") as grid:
        assert grid.width > 2 * grid.height / 4  # 2 seed columns beside the labels, 4 rows
    text = (sweep / "report.md").read_text()
    assert "![outputs](report_grid.png)" in text and "![fidelity/psnr](report_fidelity_psnr.png)" in text
    # Run folders as arguments, the report elsewhere.
    out = tmp_path / "elsewhere" / "report"
    assert (
        main([str(sweep / "0_panorama_csd_edit_seed0"), str(sweep / "1_panorama_csd_edit_seed1"), "--out", str(out)])
        == 0
    )
    rows = read_csv(out / "report.csv")
    assert [(row["method"], row["n"]) for row in rows] == [("csd_edit", "2")]


def test_no_summary_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no summary.json under" in error
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_keys_in_lockstep_give_one_column_and_tasks_stay_apart(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (multiplier, seed) in enumerate([(0.5, 0), (0.5, 1), (2.0, 0), (2.0, 1)]):
        kernel = {**RBF, "bandwidth_multiplier": multiplier}
        write_run(sweep, f"{job}_panorama_csd_edit_seed{seed}", seed=seed, kernel=kernel)
    write_run(sweep, "4_video_csd_edit_seed0", task="video", kernel={**RBF, "bandwidth_multiplier": 0.5})
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    rows = read_csv(sweep / "report.csv")
    assert [(r["task"], r["method"], r["bandwidth_multiplier"], r["n"]) for r in rows] == [
        ("panorama", "csd_edit", "0.5", "2"),
        ("panorama", "csd_edit", "2", "2"),
        ("video", "csd_edit", "0.5", "1"),
    ]
    text = (sweep / "report.md").read_text()
    assert "Vary together with bandwidth_multiplier: guidance.kernel.bandwidth_multiplier." in text


def test_one_numeric_swept_key_gives_line_plots():
    from csd_exp.report.runs import Run

    def run(scale, seed, method="csd_edit"):
        config = {"run_name": f"panorama_{method}", "guidance.guidance_scale": scale, "seed": seed}
        return Run(Path(f"/r/{method}{scale}{seed}"), {}, "completed", "panorama", method, seed, config)

    runs = [run(3.0, 0), run(3.0, 1), run(7.5, 0), run(7.5, 0, "sds")]
    columns = swept_columns(runs)
    assert columns.keys == ["guidance.guidance_scale"]
    assert line_key(build_rows(runs, columns), columns) == "guidance.guidance_scale"
    runs[-1].config["guidance.guidance_scale"] = "high"
    assert line_key(build_rows(runs, swept_columns(runs)), swept_columns(runs)) is None


def test_labels_are_what_the_run_recorded_never_names(tmp_path):
    """task / method come from summary.json (else the saved config's method label); a run that records
    neither is "unknown" with a one-line note, whatever its run name, class name or folder says."""
    sweep = tmp_path / "sweep"
    recorded = write_run(sweep, "0_panorama_csd_edit_seed0")
    old = write_run(sweep, "1_panorama_sds_seed0", method="sds")
    summary = json.loads((old / "summary.json").read_text())
    del summary["task"], summary["method"]  # an older summary: the config's method label is still read
    summary["config"]["method"] = "sds"
    (old / "summary.json").write_text(json.dumps(summary))
    nameless = write_run(sweep, "2_video_csd_seed0", task="video", method="csd")
    summary = json.loads((nameless / "summary.json").read_text())
    del summary["task"], summary["method"]  # run_name "video_csd" and VideoTask are not read
    (nameless / "summary.json").write_text(json.dumps(summary))
    runs, _ = load_runs([sweep])
    assert [(run.task, run.method, run.labelled) for run in runs] == [
        ("panorama", "csd_edit", True),
        (None, "sds", True),
        (None, "unknown", False),
    ]
    assert recorded == runs[0].folder
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    text = (sweep / "report.md").read_text()
    assert "1 run(s) record no method" in text and "reported as `unknown`, never guessed from names" in text


def test_non_finite_values_and_eval_summaries(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0_panorama_csd_edit_seed0", metrics={"fidelity/psnr": float("nan")})
    write_run(sweep, "1_panorama_csd_edit_seed1", seed=1, metrics={"fidelity/psnr": 20.0})
    # csd-exp-eval output: no status, no config.
    (sweep / "fatezero").mkdir()
    (sweep / "fatezero" / "summary.json").write_text(json.dumps({"metrics": {"fidelity/psnr": 15.0}}))
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    text = (sweep / "report.md").read_text()
    assert "| csd_edit | 2 | 20 (1/2) |" in text
    assert "| unknown | 1 | 15 |" in text  # no method recorded: not recovered from the folder name


@pytest.mark.slow
def test_a_real_smoke_sweep_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    sweep = tmp_path / "sweep"
    overrides = [
        "-m",
        "experiment=panorama_exact_cpu",
        "debug=smoke",
        "logger=csv",
        "data.short_side=32",
        "task.window_size=32",
        "task.window_stride=8",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    ]
    ran = subprocess.run(
        [sys.executable, "-m", "csd_exp.cli", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    # From an unrelated folder, as a module (the console script is the same function).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reported = subprocess.run(
        [sys.executable, "-m", "csd_exp.report", str(sweep)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert reported.returncode == 0, reported.stderr
    rows = read_csv(sweep / "report.csv")
    # Two seeds of one configuration: one row, no swept columns (paths, seeds, callbacks are bookkeeping).
    assert [(row["method"], row["n"]) for row in rows] == [("csd_edit", "2")]
    assert list(rows[0])[:2] == ["method", "n"]
    assert math.isfinite(float(rows[0]["fidelity/psnr_mean"])) and rows[0]["fidelity/psnr_std"]
    assert {"report.md", "report_grid.png", "report_fidelity_psnr.png"} <= {path.name for path in sweep.iterdir()}
    assert "| csd_edit | 2 |" in reported.stdout


# ------------------------------------------------------------------ conditions, confounders, paired differences
FAMILY = {"csd_edit": "instruct_pix2pix", "sds": "instruct_pix2pix", "fatezero": "stable_diffusion"}
MODEL = {"instruct_pix2pix": "tiny_ip2p", "stable_diffusion": "tiny_sd"}


def write_recorded(sweep: Path, job: int, method: str, seed: int, value: float, **conditions) -> Path:
    """A summary as runs write it now: task, method, model and the conditions block at the top."""
    folder = sweep / f"{job}_video_{method}_seed{seed}"
    folder.mkdir(parents=True)
    family = conditions.pop("family", FAMILY[method])
    block = {
        "input": "sample:pan",
        "frames": 8,
        "size_px": [64, 64],
        "steps": 4,
        "steps_meaning": "updates",
        "guidance_scale": 7.5,
        "image_guidance_scale": 1.5,
        "seed": seed,
        "unet_passes_per_step": 3,
        **conditions,
    }
    task = {"fatezero": "VideoFateZeroTask"}.get(method, "VideoTask")
    config = {"seed": seed, "task": {"_target_": f"csd_exp.tasks.{task}"}, "data": {"path": block["input"]}}
    summary = {
        "status": "completed",
        "task": "video",
        "method": method,
        "model_family": family,
        "model_id": conditions.get("model_id", MODEL[family]),
        "kernel": "rbf" if method == "csd_edit" else None,
        "conditions": block,
        "seed": seed,
        "metrics": {"fidelity/psnr": value},
        "config": config,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_paired_differences_by_seed_and_input_with_a_t_interval(tmp_path):
    """sds minus csd_edit on 2 clips x 2 seeds: differences 1, 2, 3, 6 (hand-computed: mean 3, sample std
    sqrt(14/3), t_{0.975, 3} = 3.18245 from a t table, half width 3.18245 * sqrt(14/3) / 2 = 3.43743)."""
    sweep = tmp_path / "sweep"
    base = {("a", 0): 20.0, ("a", 1): 21.0, ("b", 0): 30.0, ("b", 1): 28.0}
    shift = {("a", 0): 1.0, ("a", 1): 2.0, ("b", 0): 3.0, ("b", 1): 6.0}
    job = 0
    # The sds runs come in another order than csd_edit's: pairs follow (input, seed), never the order.
    for method, keys in (("csd_edit", list(base)), ("sds", list(reversed(base)))):
        for clip, seed in keys:
            value = base[clip, seed] + (shift[clip, seed] if method == "sds" else 0.0)
            write_recorded(sweep, job, method, seed, value, input=clip)
            job += 1
    write_recorded(sweep, job, "sds", 2, 99.0, input="a")  # no csd_edit run on (a, seed 2): unpaired
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    (row,) = read_csv(sweep / "report_paired.csv")
    half = 3.18245 * math.sqrt(14 / 3) / 2
    assert (row["method"], row["reference"], row["n_pairs"], row["unpaired"]) == ("sds", "csd_edit", "4", "1")
    assert float(row["mean_difference"]) == pytest.approx(3.0, abs=1e-12)
    # The table's t value has 6 significant digits: the bounds agree to ~1e-5 of the half width.
    assert float(row["ci95_low"]) == pytest.approx(3.0 - half, abs=1e-4)
    assert float(row["ci95_high"]) == pytest.approx(3.0 + half, abs=1e-4)
    text = (sweep / "report.md").read_text()
    assert "## Paired differences against `csd_edit`" in text
    assert "| fidelity/psnr | sds | 4 (1 unpaired) | 3 | [-0.4374, 6.437] |" in text
    # Another reference: the differences change sign.
    assert main([str(sweep), "--metrics", "fidelity/psnr", "--reference", "sds", "--out", str(tmp_path / "r")]) == 0
    (row,) = read_csv(tmp_path / "r" / "report_paired.csv")
    assert (row["method"], row["n_pairs"], float(row["mean_difference"])) == ("csd_edit", "4", -3.0)
    assert main([str(sweep), "--reference", "in2n", "--out", str(tmp_path / "none")]) == 0
    assert "reference method `in2n` has no completed run" in (tmp_path / "none" / "report.md").read_text()


def test_methods_that_differ_from_the_reference_by_their_kernel_are_paired_with_it():
    """CSD with two kernels against SDS (whose kernel is one value): each kernel's runs pair with the SDS run of
    the same input and seed; a scale swept for every method still pairs like with like."""
    from csd_exp.report.paired import paired_differences
    from csd_exp.report.runs import Run

    def run(method, kernel, scale, seed, value):
        config = {"kernel": kernel, "guidance.guidance_scale": scale, "seed": seed}
        summary = {"metrics": {"fidelity/psnr": value}}
        return Run(Path(f"/r/{method}{kernel}{scale}{seed}"), summary, "completed", "video", method, seed, config)

    runs = [run("sds", "identity", scale, seed, 10.0 * scale + seed) for scale in (1, 2) for seed in (0, 1)]
    runs += [
        run("csd", kernel, scale, seed, 10.0 * scale + seed + shift)
        for kernel, shift in (("rbf", 1.0), ("feature_rbf", -2.0))
        for scale in (1, 2)
        for seed in (0, 1)
    ]
    keys = ["kernel", "guidance.guidance_scale"]
    found = {
        (item.context["kernel"], item.context["guidance.guidance_scale"]): item
        for item in paired_differences(runs, ["fidelity/psnr"], "sds", keys, set())
    }
    assert set(found) == {("rbf", 1), ("rbf", 2), ("feature_rbf", 1), ("feature_rbf", 2)}
    for (kernel, _), item in found.items():
        assert (item.interval.n, item.unpaired, item.interval.mean) == (2, 0, 1.0 if kernel == "rbf" else -2.0)


def test_t_quantiles_match_the_table():
    from csd_exp.report.paired import mean_interval, t_quantile

    # Two-sided 95 % critical values of a t table (6 significant digits).
    for dof, value in ((1, 12.7062), (2, 4.30265), (3, 3.18245), (4, 2.77645), (9, 2.26216), (30, 2.04227)):
        assert t_quantile(0.95, dof) == pytest.approx(value, rel=1e-5)
    # Differences 1, 2, 3: mean 2, std 1, half width 4.30265 / sqrt(3).
    interval = mean_interval([1.0, 2.0, 3.0])
    assert (interval.n, interval.mean) == (3, 2.0)
    assert interval.high - 2.0 == pytest.approx(4.30265 / math.sqrt(3), rel=1e-5)
    assert mean_interval([5.0]).low is None and mean_interval([]).n == 0


def test_a_sweep_where_only_the_method_differs_flags_the_model_as_expected_and_nothing_else(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (method, seed) in enumerate((m, s) for m in ("csd_edit", "fatezero") for s in (0, 1)):
        write_recorded(sweep, job, method, seed, 20.0 + job)
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    text = (sweep / "report.md").read_text()
    assert "## Conditions" in text
    assert "| csd_edit | instruct_pix2pix: tiny_ip2p | sample:pan | 8 | 64x64 | 4 | 7.5 | 1.5 | 0, 1 |" in text
    assert "| fatezero | stable_diffusion: tiny_sd | sample:pan | 8 | 64x64 | 4 | 7.5 | 1.5 | 0, 1 |" in text
    assert "task class: VideoFateZeroTask" in text and "kernel: rbf" in text  # listed, not flagged
    assert "Confounders: none" in text and "**Confounders**" not in text
    assert "Expected: model family differs between methods" in text
    assert "updates (3 UNet passes per step)" in text
    rows = read_csv(sweep / "report.csv")
    assert "confounders" not in rows[0] and list(rows[0])[:2] == ["method", "n"]


def test_frames_size_and_steps_that_differ_are_confounders_in_the_report_the_csv_and_the_plots(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        write_recorded(sweep, seed, "csd_edit", seed, 20.0, frames=12, size_px=[512, 512], steps=100)
        write_recorded(sweep, 2 + seed, "fatezero", seed, 18.0, frames=8, size_px=[128, 128], steps=100)
        # Same family, another model: a confounder too (a family difference alone is not).
        write_recorded(sweep, 4 + seed, "sds", seed, 17.0, frames=12, size_px=[512, 512], steps=50, model_id="ip2p")
    titles = []
    import csd_exp.report.cli as cli

    original = cli.plot_metric
    monkeypatch.setattr(cli, "plot_metric", lambda *a, **k: titles.append(a[-1]) or original(*a, **k))
    assert main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    text = (sweep / "report.md").read_text()
    assert "**Confounders**" in text
    assert "- frames: csd_edit: 12; fatezero: 8; sds: 12" in text
    assert "- size_px: csd_edit: 512x512; fatezero: 128x128; sds: 512x512" in text
    assert "- steps: csd_edit: 100; fatezero: 100; sds: 50" in text
    assert "- model: family instruct_pix2pix: csd_edit: tiny_ip2p; sds: ip2p" in text
    assert "- input:" not in text and "- seed:" not in text and "- guidance_scale:" not in text
    rows = {row["method"]: row for row in read_csv(sweep / "report.csv")}
    assert rows["fatezero"]["confounders"] == "frames, size_px, steps, model"
    assert (rows["fatezero"]["condition:frames"], rows["fatezero"]["condition:size_px"]) == ("8", "128x128")
    assert titles == ["confounded: frames, size_px, steps, model"]
    assert {row["confounders"] for row in read_csv(sweep / "report_paired.csv")} == {"frames, size_px, steps, model"}


def test_seeds_and_scales_given_per_method_are_confounders_a_scale_swept_for_all_is_not(tmp_path):
    sweep = tmp_path / "sweep"
    write_recorded(sweep, 0, "csd_edit", 0, 20.0, guidance_scale=7.5)
    write_recorded(sweep, 1, "sds", 1, 20.0, guidance_scale=100.0)
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "- guidance_scale: csd_edit: 7.5; sds: 100" in text and "- seed: csd_edit: 0; sds: 1" in text
    swept = tmp_path / "swept"
    for job, (method, scale) in enumerate((m, s) for m in ("csd_edit", "sds") for s in (3.0, 7.5)):
        write_recorded(swept, job, method, 0, scale, guidance_scale=scale)
    assert main([str(swept)]) == 0
    assert "Confounders: none" in (swept / "report.md").read_text()


def test_jobs_without_a_summary_are_counted_as_missing_from_jobs_json(tmp_path):
    sweep = tmp_path / "sweep"
    done = [write_recorded(sweep, job, "csd_edit", job, 20.0) for job in (0, 1)]
    (sweep / "2_video_sds_seed0").mkdir()  # started, never wrote its summary
    jobs = [
        {"num": 0, "overrides": ["method=csd_edit", "seed=0"], "dir": done[0].name},
        {"num": 1, "overrides": ["method=csd_edit", "seed=1"], "dir": done[1].name},
        {"num": 2, "overrides": ["method=sds", "seed=0"], "dir": "2_video_sds_seed0"},
        {"num": 3, "overrides": ["method=sds", "seed=1"], "dir": None},  # never started
    ]
    (sweep / "jobs.json").write_text(json.dumps({"jobs": jobs, "n_trials": None}))
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert (
        "2 of 4 jobs missing in . (no summary.json; from jobs.json): job 2 (method=sds seed=0); "
        "job 3 (method=sds seed=1)." in text
    )
    # Optuna: the trials never launched count too, up to n_trials.
    (sweep / "jobs.json").write_text(json.dumps({"jobs": jobs[:2], "n_trials": 5}))
    assert main([str(sweep)]) == 0
    assert "3 of 5 jobs missing in . (no summary.json; from jobs.json); 3 trial(s) of n_trials never launched." in (
        (sweep / "report.md").read_text()
    )
    # Without jobs.json: job folders Hydra made that hold no summary, with their overrides.
    (sweep / "jobs.json").unlink()
    (sweep / "2_video_sds_seed0" / ".hydra").mkdir()
    (sweep / "2_video_sds_seed0" / ".hydra" / "overrides.yaml").write_text("- method=sds\n- seed=0\n")
    for folder in done:
        (folder / ".hydra").mkdir()
    assert main([str(sweep)]) == 0
    assert (
        "1 of 3 jobs missing in . (no summary.json; from job folders (no jobs.json)): job 2 (method=sds seed=0)."
        in ((sweep / "report.md").read_text())
    )


def test_runs_of_a_non_released_baseline_are_marked_in_the_table_the_csv_and_a_note(tmp_path):
    """summary.json's release_deviations (non-empty = not the baseline as released) gives a column and a note;
    a sweep whose runs are all as released has neither."""
    sweep = tmp_path / "sweep"
    deviation = "task.sampler=linspace_ddim: DDIM on linspace timesteps, not the pipeline's scheduler"
    for seed in (0, 1):
        write_run(sweep, f"{seed}_panorama_csd_edit_seed{seed}", seed=seed)
        folder = write_run(sweep, f"{2 + seed}_panorama_sampling_per_window_seed{seed}", method="per_window", seed=seed)
        summary = json.loads((folder / "summary.json").read_text())
        summary["release_deviations"] = [deviation] if seed == 0 else []
        (folder / "summary.json").write_text(json.dumps(summary))
    assert main([str(sweep), "--no-wandb"]) == 0
    rows = {row["method"]: row for row in read_csv(sweep / "report.csv")}
    assert (rows["csd_edit"]["non-released"], rows["csd_edit"]["release_deviations"]) == ("no", "")
    assert (rows["per_window"]["non-released"], rows["per_window"]["release_deviations"]) == (
        "yes (1 of 2 runs)",
        deviation,
    )
    text = (sweep / "report.md").read_text()
    assert "| fidelity/psnr | wall_time_s | non-released |" in text
    assert "| per_window | 2 |" in text and text.count("| yes (1 of 2 runs) |") == 1
    assert "Not as released (summary.json `release_deviations`, W&B tag `non-released`)" in text
    assert f"  - `per_window`: {deviation}" in text
    # All as released: no column, no note.
    clean = scale_sweep(tmp_path / "clean")
    assert main([str(clean), "--no-wandb"]) == 0
    assert "non-released" not in (clean / "report.md").read_text()
    assert "non-released" not in read_csv(clean / "report.csv")[0]
