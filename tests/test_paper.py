"""``csd-exp-paper``: each figure / table entry runs its sweep end to end on the exact prior at smoke sizes
and writes its files (paper columns, "needs CLIP weights" where the weights are missing); ``--report-only``
re-reports a sweep; per-method overrides; the report's W&B table in offline mode."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_report import read_csv, write_run

from csd_exp.report import main as report_main
from csd_exp.report.paper import main as paper_main
from csd_exp.report.paper_entries import ENTRIES
from csd_exp.report.paper_inputs import load_inputs, shipped_file
from csd_exp.report.paper_launch import split_overrides
from csd_exp.report.runs import ReportError

POP_ART = "turn it into a pop-art painting"  # instructions the exact prior knows
NIGHT = "make it night"
SMOKE = ["debug=smoke", "model=exact", f"prompt={POP_ART}"]


def run_paper(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m csd_exp.report.paper`` from an unrelated folder (= the csd-exp-paper console script)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "csd_exp.report.paper", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def summaries(sweep: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep.glob("*/summary.json"))]


@pytest.fixture(scope="module")
def fig5_sweep(tmp_path_factory) -> Path:
    """fig5 over two omega_y values: CSD-Edit and the two sampling baselines (DDIM: a per-method override)."""
    folder = tmp_path_factory.mktemp("fig5")
    out = folder / "sweep"
    ran = run_paper(
        [
            "fig5",
            *SMOKE,
            "guidance.guidance_scale=3,10",
            "multidiffusion,downscaled:task.eta=0.0",
            "--out",
            str(out),
        ],
        cwd=folder,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    return out


def test_fig5_has_two_rows_per_method_and_says_what_clip_needs(fig5_sweep):
    rows = read_csv(fig5_sweep / "fig5.csv")
    assert [(row["method"], row["guidance_scale"], row["n"]) for row in rows] == [
        ("csd_edit", "3", "1"),
        ("csd_edit", "10", "1"),
        ("multidiffusion", "3", "1"),
        ("multidiffusion", "10", "1"),
        ("downscaled", "3", "1"),
        ("downscaled", "10", "1"),
    ]
    assert all(row["clip/directional_mean"] == "needs CLIP weights" for row in rows)
    assert all(float(row["consistency/mode_agreement_mean"]) >= 0.5 for row in rows)
    text = (fig5_sweep / "fig5.md").read_text()
    assert "| csd_edit | 3 | 1 | needs CLIP weights | needs CLIP weights |" in text
    assert "No fig5.png: the plot of clip/image_similarity against clip/directional needs CLIP weights." in text
    assert not (fig5_sweep / "fig5.png").exists()
    # The scoped override reached the baselines only; every job ran the method it was labelled with.
    by_method = {s["config"]["method"]: s for s in summaries(fig5_sweep)}
    assert by_method["multidiffusion"]["config"]["task"]["eta"] == 0.0
    assert by_method["multidiffusion"]["steps"] == 2 and "eta" not in by_method["csd_edit"]["config"]["task"]
    assert by_method["downscaled"]["config"]["task"]["method"] == "downscaled"
    assert by_method["csd_edit"]["config"]["guidance"]["baseline"] == "source_branch"
    assert all(s["status"] == "completed" for s in summaries(fig5_sweep))
    # The sweep's own report sits beside it; the runs logged CSV only, so nothing went to W&B.
    assert "Not sent to W&B: the runs did not log to W&B." in (fig5_sweep / "report.md").read_text()


def test_report_only_reports_an_existing_sweep_and_draws_the_scatter(fig5_sweep, tmp_path):
    """Re-reported from a copy whose summaries hold CLIP numbers (as with the weights): the scatter is drawn."""
    sweep = tmp_path / "copy"
    shutil.copytree(fig5_sweep, sweep)
    for path in sweep.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        scale = summary["config"]["guidance"]["guidance_scale"]
        summary["metrics"].update({"clip/directional": 0.01 * scale, "clip/image_similarity": 0.9 - 0.01 * scale})
        path.write_text(json.dumps(summary))
    assert paper_main(["fig5", "--report-only", str(sweep), "--out", str(tmp_path / "again"), "--no-wandb"]) == 0
    rows = read_csv(tmp_path / "again" / "fig5.csv")
    assert len(rows) == 6 and float(rows[1]["clip/directional_mean"]) == pytest.approx(0.1)
    with Image.open(tmp_path / "again" / "fig5.png") as figure:
        assert figure.width > 300 and figure.height > 200
    assert "![fig5](fig5.png)" in (tmp_path / "again" / "fig5.md").read_text()
    # Overrides would run something: refused with --report-only.
    assert paper_main(["fig5", "--report-only", str(sweep), "seed=1"]) == 2


def test_fig7_8_puts_the_ablations_side_by_side(tmp_path):
    out = tmp_path / "sweep"
    ran = run_paper(["fig7_8", *SMOKE, "seed=0,1", "--out", str(out)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rows = read_csv(out / "fig7_8.csv")
    assert [(row["method"], row["n"]) for row in rows] == [
        ("csd_edit", "2"),
        ("csd_edit_no_svgd", "2"),
        ("csd_edit_random_noise", "2"),
    ]
    guidance = {s["config"]["method"]: s["config"]["guidance"] for s in summaries(out)}
    assert guidance["csd_edit_random_noise"]["baseline"] == "random_noise"
    assert guidance["csd_edit_no_svgd"]["kernel"]["_target_"] != guidance["csd_edit"]["kernel"]["_target_"]
    with Image.open(out / "fig7_8_grid.png") as grid:
        assert grid.width > grid.height / 3  # 2 seed columns beside the labels, 3 method rows
    assert "![fig7_8](fig7_8_grid.png)" in (out / "fig7_8.md").read_text()


def test_table2_shows_the_paper_numbers_beside_ours(tmp_path):
    out = tmp_path / "sweep"
    ran = run_paper(["table2", *SMOKE, "--out", str(out)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rows = {row["method"]: row for row in read_csv(out / "table2.csv")}
    assert list(rows) == ["csd_edit", "in2n"]
    paper = {m: [float(rows[m][f"{k}_paper"]) for k in ENTRIES["table2"].metrics] for m in rows}
    assert paper == {"csd_edit": [0.239, 0.995, 0.043], "in2n": [0.230, 0.994, 0.048]}
    assert rows["in2n"]["lpips/consecutive_mean"] == "needs LPIPS weights"
    text = (out / "table2.md").read_text()
    header = "| method | n | clip/directional | paper | clip/consistency | paper | lpips/consecutive | paper |"
    assert text.count(header) == 1
    assert (
        "| csd_edit | 1 | needs CLIP weights | 0.239 | needs CLIP weights | 0.995 | needs LPIPS weights | 0.043 |"
        in text
    )
    assert (out / "table2.png").is_file()  # the paper's bars, with ours marked as needing the weights


def _tiny_sequence(folder: Path, shade: int) -> Path:
    folder.mkdir(parents=True)
    for frame in range(4):
        Image.new("RGB", (16, 16), (shade, 40 * frame, 200 - shade)).save(folder / f"{frame:05d}.png")
    return folder


@pytest.fixture
def two_sequences(tmp_path) -> Path:
    """A DAVIS-style folder of two tiny sequences (``davis/``) and the user's list of them (relative paths)."""
    davis = tmp_path / "davis"
    _tiny_sequence(davis / "cat", 30)
    _tiny_sequence(davis / "street", 150)
    listing = tmp_path / "clips.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "path", "source_prompt", "prompt"])
        writer.writerow(["cat", "cat", "a cat", POP_ART])
        writer.writerow(["street", "street", "a street", NIGHT])
    return listing


def test_table1_runs_the_three_methods_over_the_clips_with_their_own_models(tmp_path, two_sequences):
    """CSD-Edit on an InstructPix2Pix model, the text-to-image baselines on Stable Diffusion (per-method
    models), over two tiny sequences; the table pools the clips of each method."""
    out = tmp_path / "sweep"
    args = ["table1", "--inputs", str(two_sequences), "--root", str(tmp_path / "davis"), "debug=smoke"]
    args += ["csd_edit:model=tiny_ip2p", "fatezero,pix2video:model=tiny_sd", "--out", str(out)]
    ran = run_paper(args, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    runs = summaries(out)
    assert {(s["config"]["method"], Path(s["config"]["data"]["path"]).name, s["config"]["prompt"]) for s in runs} == {
        (method, clip, prompt)
        for method in ("csd_edit", "fatezero", "pix2video")
        for clip, prompt in (("cat", POP_ART), ("street", NIGHT))
    }
    assert {s["config"]["source_prompt"] for s in runs} == {"a cat", "a street"}
    models = {s["config"]["method"]: s["config"]["model"]["_target_"] for s in runs}
    assert "pix2pix" in models["csd_edit"] and "pix2pix" not in models["fatezero"] + models["pix2video"]
    assert len(read_csv(out / "report.csv")) == 6  # a row per method and clip
    rows = read_csv(out / "table1.csv")
    assert [(row["method"], row["n"]) for row in rows] == [("csd_edit", "2"), ("fatezero", "2"), ("pix2video", "2")]
    paper = [[float(row[f"{key}_paper"]) for key in ENTRIES["table1"].metrics] for row in rows]
    assert paper == [[0.320, 0.957, 0.236], [0.314, 0.948, 0.267], [0.230, 0.949, 0.283]]
    assert {row["clip/consistency_mean"] for row in rows} == {"needs CLIP weights"}
    psnr = [s["metrics"]["fidelity/psnr"] for s in runs if s["config"]["method"] == "fatezero"]
    assert float(rows[1]["fidelity/psnr_mean"]) == pytest.approx(sum(psnr) / 2)
    text = (out / "table1.md").read_text()
    assert "2 inputs x seeds" in text and "`fatezero` = FateZero" in text and "ran more than once" not in text
    assert (out / "table1.png").is_file()


def test_table3_csd_against_sds(tmp_path):
    """On the exact generation prior (its experiment replacing the paper's for both methods)."""
    out = tmp_path / "sweep"
    ran = run_paper(["table3", "debug=smoke", "experiment=generation3d_exact_cpu", "--out", str(out)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rows = {row["method"]: row for row in read_csv(out / "table3.csv")}
    assert list(rows) == ["csd", "sds"]
    assert [float(rows["csd"][f"{key}_paper"]) for key in ENTRIES["table3"].metrics] == [0.447, 0.345, 247.1]
    assert rows["sds"]["fid/rgb_mean"] == "needs Inception weights and a reference folder"
    assert (out / "table3.md").is_file() and (out / "table3.png").is_file()


def test_the_inputs_and_overrides_are_checked_before_anything_runs(tmp_path, two_sequences, capsys):
    assert paper_main(["table1", "--out", str(tmp_path / "x")]) == 2
    assert "table1 runs over a list of inputs: give --root" in capsys.readouterr().err
    # The shipped list of the paper's clips is found in the installed package, relative to --root.
    assert paper_main(["table1", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    error = capsys.readouterr().err
    assert "no such file or folder" in error and str(tmp_path / "nowhere" / "lucia") in error
    for name in ("lucia", "bear", "breakdance-flare"):
        (tmp_path / "davis" / name).mkdir(parents=True)
    shipped = load_inputs(shipped_file("paper/davis_table1.yaml"), root=tmp_path / "davis")
    assert [(item.name, item.values["prompt"]) for item in shipped][:2] == [
        ("lucia", "Make it as a painting of Claude Monet"),
        ("bear", "Turn a bear into a tiger"),
    ]
    assert shipped[0].values["data.path"] == str((tmp_path / "davis" / "lucia").resolve())
    assert (
        paper_main(["table1", "--inputs", str(two_sequences), "--only", "csd_edit,sds", "--out", str(tmp_path / "w")])
        == 2
    )
    assert "--only sds: table1's methods are csd_edit, fatezero, pix2video" in capsys.readouterr().err
    assert paper_main(["fig5", "nosuch:model=tiny_ip2p", "--out", str(tmp_path / "z")]) == 2
    assert "fig5 has no method 'nosuch'; its methods: csd_edit, multidiffusion, downscaled" in capsys.readouterr().err
    assert not list(tmp_path.rglob("summary.json"))


def test_overrides_split_into_common_and_per_method():
    overrides = split_overrides(
        ["data.path=sample:pan", "csd_edit,in2n:model=tiny_ip2p", "seed=0,1"], ENTRIES["table2"]
    )
    assert overrides.common == ["data.path=sample:pan", "seed=0,1"]
    assert overrides.scoped == {"csd_edit": ["model=tiny_ip2p"], "in2n": ["model=tiny_ip2p"]}
    with pytest.raises(ReportError, match="takes one value"):
        from csd_exp.report.paper_launch import method_config

        method_config(ENTRIES["table2"].methods[0], ["seed=0,1"])


def test_the_report_goes_to_wandb_as_a_table_when_the_runs_did(tmp_path, monkeypatch):
    """Two runs that logged to W&B (offline): one report run in their group, job type report, with the table."""
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        folder = write_run(sweep, f"{seed}_panorama_csd_edit_seed{seed}", seed=seed)
        summary = json.loads((folder / "summary.json").read_text())
        summary["wandb"] = {"name": f"csd_edit·s{seed}", "group": "panorama_exact_cpu-sweep", "job_type": "panorama"}
        summary["config"]["logger"]["wandb"] = {"project": "csd-exp-test"}
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "wandb" / f"offline-run-20261202_070000-run{seed}id").mkdir(parents=True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert report_main([str(sweep), "--metrics", "fidelity/psnr"]) == 0
    record = json.loads((sweep / "report_wandb.json").read_text())
    assert (record["group"], record["job_type"], record["project"], record["mode"]) == (
        "panorama_exact_cpu-sweep",
        "report",
        "csd-exp-test",
        "offline",
    )
    assert record["columns"] == ["method", "n", "fidelity/psnr_mean", "fidelity/psnr_std", "runs", "wandb_runs"]
    (row,) = record["data"]
    assert row[:2] == ["csd_edit", 2] and float(row[2]) == pytest.approx(25.0 + 3.0 + 0.5)
    assert "run0id" in row[-1] and "run1id" in row[-1]
    run_folder = Path(record["folder"])
    assert run_folder.parent == sweep / "wandb" and list(run_folder.glob(f"run-{record['id']}.wandb"))
    assert f"(id {record['id']}, job type report, group panorama_exact_cpu-sweep" in (sweep / "report.md").read_text()
    # Disabled, by the environment or the flag: no run, no record.
    for args, env in (([], "disabled"), (["--no-wandb"], "offline")):
        monkeypatch.setenv("WANDB_MODE", env)
        out = tmp_path / f"report_{env}"
        assert report_main([str(sweep), "--out", str(out), *args]) == 0
        assert not (out / "report_wandb.json").exists() and not (out / "wandb").exists()
        assert "Not sent to W&B" in (out / "report.md").read_text()
