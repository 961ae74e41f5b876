"""``csd-exp-paper``: each figure / table is one experiment whose ``paper`` node lists its methods; the
command launches ``-m method=<its methods> experiment=<the table>`` (checked as the argv it builds, and end
to end on the CPU priors) and reports it, titled by what ran, refusing a folder of
another task; ``--report-only`` re-reports a sweep; the report's W&B table in offline mode."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_report import read_csv, write_run

from csd_exp.report import main as report_main
from csd_exp.report.paper import main as paper_main
from csd_exp.report.paper_inputs import load_inputs, shipped_file
from csd_exp.report.paper_tables import load_tables, method_options

TABLES = load_tables()
POP_ART = "turn it into a pop-art painting"  # instructions the exact prior knows
NIGHT = "make it night"
SMOKE = ["--cpu"]  # the table's paper.cpu overrides: exact / tiny priors at smoke sizes


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


def write_table_run(sweep: Path, job: int, method: str, *, task: str, model: tuple[str, str], seed: int = 0, **extra):
    """A summary as runs write it: task, method, model and conditions at the top, metrics, an output image."""
    folder = sweep / f"{job}_{task}_{method}_seed{seed}"
    folder.mkdir(parents=True)
    scale = extra.pop("guidance_scale", 7.5)
    conditions = {"input": extra.pop("input", "sample:pan"), "frames": 8, "size_px": [64, 64], "steps": 2}
    conditions.update(guidance_scale=scale, image_guidance_scale=1.5, seed=seed)
    config = {"seed": seed, "guidance": {"guidance_scale": scale}, "data": {"path": conditions["input"]}}
    metrics = {"fidelity/psnr": 20.0 + job, **extra.pop("metrics", {})}
    summary = {"status": "completed", "task": task, "method": method, "model_family": model[0], "model_id": model[1]}
    summary.update(conditions=conditions, seed=seed, metrics=metrics, config=config)
    (folder / "summary.json").write_text(json.dumps(summary))
    Image.new("RGB", (48, 16), (40 * seed, 100, 200)).save(folder / "edited.png")
    return folder


IP2P = ("instruct_pix2pix", "timbrooks/instruct-pix2pix")
SD15 = ("stable_diffusion", "runwayml/stable-diffusion-v1-5")


# ------------------------------------------------------------------------------- the tables and their launch
def test_each_paper_table_is_one_experiment_whose_paper_node_both_commands_read(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    assert {name: table.experiment for name, table in TABLES.items()} == {
        "fig5": "paper_panorama_fig5",
        "fig7_8": "paper_panorama_fig7_8",
        "table1": "paper_video_table1",
        "table2": "paper_3d_table2",
        "table3": "paper_t23d_table3",
    }
    assert TABLES["table1"].methods == ("csd_edit", "fatezero", "pix2video")
    assert TABLES["fig5"].methods == ("csd_edit", "multidiffusion", "downscaled")
    assert TABLES["table2"].methods == ("csd_edit", "in2n") and TABLES["table3"].methods == ("csd", "sds")
    # The composed experiment carries the same node (the report reads it from the runs' config), and the
    # existing experiment names keep composing.
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="csd_exp.conf", version_base="1.3"):
        for table in TABLES.values():
            cfg = compose(config_name="config", overrides=[f"experiment={table.experiment}"])
            assert tuple(cfg.paper.methods) == table.methods and cfg.paper.table == table.name
        assert "paper" not in compose(config_name="config", overrides=["experiment=paper_3d_table2_in2n"])
    GlobalHydra.instance().clear()
    with pytest.raises(ImportError):
        import csd_exp.report.paper_entries  # noqa: F401  (the methods' second home is gone)


def test_every_tables_method_is_an_option_of_the_method_group():
    """The sweeps below run each method through the method config group (conf/method/): they never skip."""
    options = method_options()
    assert options is not None
    assert {name: set(table.methods) - set(options) for name, table in TABLES.items()} == {
        name: set() for name in TABLES
    }


def _composed(overrides: list[str]):
    """The job's config as the compose-time check leaves it (the method's prior family applied, values checked)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from csd_exp.schema.rules import validate_composed

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="csd_exp.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    validate_composed(cfg)
    return cfg


def test_each_method_of_a_table_gets_its_own_settings_and_prior_family_on_gpu_and_with_cpu():
    """Table 1: FateZero on SD 1.5 and Pix2Video on SD 2 depth (their tiny stand-ins with --cpu), on the frames
    of CSD-Edit; Table 3: CSD's LPIPS-RBF kernel (weight-free feature_rbf with --cpu, still labelled csd) while
    SDS keeps its identity kernel and label; Table 2: the paper's CSD-Edit editor schedule, IN2N's own."""
    table1, table2, table3 = TABLES["table1"], TABLES["table2"], TABLES["table3"]
    expected = {
        False: {"csd_edit": "timbrooks/instruct-pix2pix", "fatezero": "v1-5", "pix2video": "stable-diffusion-2-depth"},
        True: {
            "csd_edit": "tiny_instruct_pix2pix_prior",
            "fatezero": "tiny_stable_diffusion_prior",
            "pix2video": "tiny_stable_diffusion_depth_prior",
        },
    }
    for cpu in (False, True):
        inputs = set()
        for method in table1.methods:
            cfg = _composed([f"method={method}", f"experiment={table1.experiment}", *(table1.cpu if cpu else ())])
            model = cfg.model.get("pretrained_model_name_or_path") or cfg.model._target_
            assert cfg.method == method and expected[cpu][method] in str(model), (cpu, method, model)
            inputs.add((cfg.data.path, cfg.data.max_frames))
        assert inputs == {(None, 4) if cpu else ("sample:pan", 24)}  # one clip for every method (smoke: bundled)
        kernels = {}
        for method in table3.methods:
            cfg = _composed([f"method={method}", f"experiment={table3.experiment}", *(table3.cpu if cpu else ())])
            kernels[cfg.method] = cfg.kernel._target_.rsplit(".", 1)[-1]
        assert kernels == {"csd": "FeatureRBFKernel" if cpu else "LPIPSRBFKernel", "sds": "IdentityKernel"}
    editors = {m: _composed([f"method={m}", f"experiment={table2.experiment}"]).task.editor for m in table2.methods}
    assert (editors["csd_edit"].every, editors["csd_edit"].views, editors["csd_edit"].iterations) == (2000, 16, 100)
    assert (editors["in2n"].every, editors["in2n"].views, editors["in2n"].diffusion_steps) == (10, 1, 20)


def dry_run(args: list[str], capsys) -> list[str]:
    assert paper_main([*args, "--dry-run"]) == 0, capsys.readouterr().err
    return shlex.split(capsys.readouterr().out)


def test_the_sweep_is_the_tables_methods_over_its_experiment(tmp_path, capsys):
    out = tmp_path / "t1"
    command = dry_run(["table1", "--out", str(out)], capsys)
    # No input given: the experiment's own (the bundled clip), nothing else.
    assert command == [
        "csd-exp",
        "-m",
        f"hydra.sweep.dir={out.resolve()}",
        "method=csd_edit,fatezero,pix2video",
        "experiment=paper_video_table1",
    ]
    assert not out.exists()  # a dry run writes nothing
    # The table's own sweep, replaced by the user's value of the same key; --cpu adds the table's paper.cpu
    # before the user's overrides (which win); --only runs a subset in the table's order.
    command = dry_run(["fig5", "--out", str(tmp_path / "f"), "--only", "downscaled,csd_edit"], capsys)
    assert command[3:] == [
        "method=csd_edit,downscaled",
        "experiment=paper_panorama_fig5",
        "guidance.guidance_scale=3.0,5.0,7.5,10.0",
    ]
    command = dry_run(["fig5", "--cpu", "guidance.guidance_scale=3,10", "--out", str(tmp_path / "f")], capsys)
    assert command[5:] == [
        "debug=smoke",
        "model=exact",
        "prompt=turn it into a pop-art painting",
        "guidance.guidance_scale=3,10",
    ]


def test_inputs_become_overrides_or_a_swept_input_group(tmp_path, capsys):
    sample = tmp_path / "sample.yaml"
    sample.write_text("inputs:\n  - {name: pan, path: 'sample:pan', prompt: make it night}\n")
    command = dry_run(["table1", "--inputs", str(sample), "--out", str(tmp_path / "a")], capsys)
    assert command[5:] == ["data.path='sample:pan'", "prompt='make it night'"]
    clips = tmp_path / "clips.yaml"
    (tmp_path / "cat").mkdir()
    clips.write_text("inputs:\n  - {name: cat, path: cat, prompt: x}\n  - {name: pan, path: 'sample:pan'}\n")
    out = tmp_path / "b"
    command = dry_run(["table1", "--inputs", str(clips), "--out", str(out)], capsys)
    assert command[5:] == [f'hydra.searchpath=["file://{(out / "paper_configs").resolve()}"]', "+paper_input=cat,pan"]


def test_bad_launches_are_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    cases = [
        (["fig5", "csd_edit:model=tiny_ip2p"], "per-method overrides are gone"),
        (["table1", "experiment=video_exact_cpu"], "table1 is experiment=paper_video_table1 over its methods"),
        (["table1", "method=sds"], "pick methods with --only"),
        (["table1", "--only", "csd_edit,sds"], "--only sds: table1's methods are csd_edit, fatezero, pix2video"),
        (["table3", "--root", str(tmp_path)], "table3 ships no list of inputs"),
    ]
    for args, message in cases:
        assert paper_main([*args, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    # A launch needs every method to be an option of the method group.
    monkeypatch.setattr("csd_exp.report.paper.method_options", lambda: None)
    assert paper_main(["table1", "--out", str(tmp_path / "y")]) == 2
    assert "this csd-exp has no `method` config group" in capsys.readouterr().err
    monkeypatch.setattr("csd_exp.report.paper.method_options", lambda: ["csd_edit", "fatezero"])
    assert paper_main(["table1", "--out", str(tmp_path / "z")]) == 2
    assert "lists method(s) pix2video that the method group lacks; its methods: csd_edit, fatezero" in (
        capsys.readouterr().err
    )
    assert not list(tmp_path.rglob("summary.json")) and not (tmp_path / "z").exists()


# ------------------------------------------------------------------------------------------ report only
def test_report_only_titles_by_what_ran_and_compares_with_the_paper_only_on_real_weights(tmp_path):
    sweep = tmp_path / "real"
    for seed in (0, 1):
        write_table_run(sweep, seed, "csd_edit", task="video", model=IP2P, seed=seed)
        write_table_run(sweep, 2 + seed, "fatezero", task="video_fatezero", model=SD15, seed=seed)
    assert paper_main(["table1", "--report-only", str(sweep), "--no-wandb"]) == 0
    text = (sweep / "table1.md").read_text()
    title = text.splitlines()[0]
    assert title.startswith("# table1: csd_edit, fatezero (video, video_fatezero) on sample:pan; 8 frames; 64x64 px")
    assert "DAVIS" not in title and "The paper's Table 1: video editing on DAVIS 2017" in text
    assert "Methods of table1 without a completed run here: pix2video." in text
    assert "Expected: model family differs between methods" in text and "Confounders: none" in text
    rows = {row["method"]: row for row in read_csv(sweep / "table1.csv")}
    assert float(rows["fatezero"]["clip/directional_paper"]) == 0.314
    # Tiny random-weight models: titled so, no paper column.
    tiny = tmp_path / "tiny"
    write_table_run(tiny, 0, "csd_edit", task="video", model=("instruct_pix2pix", "tiny_ip2p"))
    write_table_run(tiny, 1, "fatezero", task="video_fatezero", model=("stable_diffusion", "tiny_sd"))
    assert paper_main(["table1", "--report-only", str(tiny), "--no-wandb"]) == 0
    text = (tiny / "table1.md").read_text()
    assert text.startswith("# table1 on tiny random-weight models, not comparable: csd_edit, fatezero")
    assert "| paper |" not in text and not any("_paper" in name for name in read_csv(tiny / "table1.csv")[0])


def test_report_only_refuses_a_folder_of_another_task(tmp_path, capsys):
    sweep = tmp_path / "pano"
    write_table_run(sweep, 0, "csd_edit", task="panorama", model=IP2P)
    assert paper_main(["table1", "--report-only", str(sweep)]) == 2
    error = capsys.readouterr().err
    assert f"{sweep} holds runs of task panorama; table1 reports video, video_sampling" in error
    assert not (sweep / "table1.md").exists()


def test_report_only_draws_the_fig5_scatter(tmp_path):
    """Summaries with CLIP numbers (as with the weights): one row per method and omega_y, the scatter drawn."""
    sweep = tmp_path / "fig5"
    job = 0
    for method in ("csd_edit", "multidiffusion", "downscaled"):
        for scale in (3.0, 10.0):
            clip = {"clip/directional": 0.01 * scale, "clip/image_similarity": 0.9 - 0.01 * scale}
            task = "panorama" if method == "csd_edit" else "panorama_sampling"
            write_table_run(sweep, job, method, task=task, model=IP2P, guidance_scale=scale, metrics=clip)
            job += 1
    out = tmp_path / "again"
    assert paper_main(["fig5", "--report-only", str(sweep), "--out", str(out), "--no-wandb"]) == 0
    rows = read_csv(out / "fig5.csv")
    assert [(row["method"], row["guidance_scale"]) for row in rows] == [
        (method, scale) for method in ("csd_edit", "multidiffusion", "downscaled") for scale in ("3", "10")
    ]
    assert float(rows[1]["clip/directional_mean"]) == pytest.approx(0.1)
    with Image.open(out / "fig5.png") as figure:
        assert figure.width > 300 and figure.height > 200
    assert "![fig5](fig5.png)" in (out / "fig5.md").read_text()
    # Overrides would run something: refused with --report-only.
    assert paper_main(["fig5", "--report-only", str(sweep), "seed=1"]) == 2


def test_the_report_names_a_tables_methods_without_runs(tmp_path):
    """csd-exp-report reads the experiment's paper node from the runs' config too."""
    sweep = tmp_path / "sweep"
    for job, method in enumerate(("csd_edit", "in2n")[:1]):
        folder = write_table_run(sweep, job, method, task="scene3d", model=IP2P)
        summary = json.loads((folder / "summary.json").read_text())
        summary["config"]["paper"] = {"table": "table2", "methods": ["csd_edit", "in2n"]}
        (folder / "summary.json").write_text(json.dumps(summary))
    assert report_main([str(sweep), "--no-wandb"]) == 0
    assert "Paper table table2 (its experiment's paper.methods) lists methods without a completed run here: in2n" in (
        (sweep / "report.md").read_text()
    )


def test_the_shipped_and_sample_inputs_load(tmp_path, capsys):
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
    listing = tmp_path / "samples.csv"
    listing.write_text("path,prompt\nsample:pan,make it night\n")
    (item,) = load_inputs(listing, root=tmp_path / "elsewhere")
    assert (item.name, item.values["data.path"]) == ("pan", "sample:pan")


# ------------------------------------------------------------- end to end (with the method config group)
@pytest.fixture(scope="module")
def fig5_sweep(tmp_path_factory) -> Path:
    """fig5 on the CPU priors over two omega_y values: CSD-Edit and the two sampling baselines."""
    folder = tmp_path_factory.mktemp("fig5")
    out = folder / "sweep"
    ran = run_paper(["fig5", *SMOKE, "guidance.guidance_scale=3,10", "--out", str(out)], cwd=folder)
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
    # Every job ran the method it was labelled with, on one canvas.
    by_method = {s["method"]: s for s in summaries(fig5_sweep)}
    assert by_method["downscaled"]["config"]["task"]["method"] == "downscaled"
    assert by_method["csd_edit"]["config"]["guidance"]["baseline"] == "source_branch"
    assert all(s["status"] == "completed" for s in summaries(fig5_sweep))
    assert "Not sent to W&B: the runs did not log to W&B." in (fig5_sweep / "report.md").read_text()


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
    guidance = {s["method"]: s["config"]["guidance"] for s in summaries(out)}
    assert guidance["csd_edit_random_noise"]["baseline"] == "random_noise"
    assert guidance["csd_edit_no_svgd"]["kernel"]["_target_"] != guidance["csd_edit"]["kernel"]["_target_"]
    with Image.open(out / "fig7_8_grid.png") as grid:
        assert grid.width > grid.height / 3  # 2 seed columns beside the labels, 3 method rows
    assert "![fig7_8](fig7_8_grid.png)" in (out / "fig7_8.md").read_text()


def test_table2_on_the_cpu_priors_is_titled_not_comparable(tmp_path):
    out = tmp_path / "sweep"
    ran = run_paper(["table2", *SMOKE, "--out", str(out)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rows = {row["method"]: row for row in read_csv(out / "table2.csv")}
    assert list(rows) == ["csd_edit", "in2n"]
    assert rows["in2n"]["lpips/consecutive_mean"] == "needs LPIPS weights"
    text = (out / "table2.md").read_text()
    assert text.startswith("# table2 on tiny random-weight models, not comparable") and "| paper |" not in text


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


def test_table1_runs_the_three_methods_over_the_clips(tmp_path, two_sequences):
    """CSD-Edit and the text-to-image baselines, each on its prior family, over two tiny sequences; the
    table pools the clips of each method."""
    out = tmp_path / "sweep"
    args = ["table1", *SMOKE, "--inputs", str(two_sequences), "--root", str(tmp_path / "davis"), "--out", str(out)]
    ran = run_paper(args, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    runs = summaries(out)
    assert {(s["method"], Path(s["config"]["data"]["path"]).name, s["config"]["prompt"]) for s in runs} == {
        (method, clip, prompt)
        for method in ("csd_edit", "fatezero", "pix2video")
        for clip, prompt in (("cat", POP_ART), ("street", NIGHT))
    }
    assert len(read_csv(out / "report.csv")) == 6  # a row per method and clip
    rows = read_csv(out / "table1.csv")
    assert [(row["method"], row["n"]) for row in rows] == [("csd_edit", "2"), ("fatezero", "2"), ("pix2video", "2")]
    psnr = [s["metrics"]["fidelity/psnr"] for s in runs if s["method"] == "fatezero"]
    assert float(rows[1]["fidelity/psnr_mean"]) == pytest.approx(sum(psnr) / 2)
    text = (out / "table1.md").read_text()
    assert "2 inputs x seeds" in text and "`fatezero` = FateZero" in text and "ran more than once" not in text
    assert "tiny random-weight models, not comparable" in text and (out / "table1.png").is_file()


def test_table3_csd_against_sds(tmp_path):
    out = tmp_path / "sweep"
    ran = run_paper(["table3", *SMOKE, "--out", str(out)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    rows = {row["method"]: row for row in read_csv(out / "table3.csv")}
    assert list(rows) == ["csd", "sds"]
    assert rows["sds"]["fid/rgb_mean"] == "needs Inception weights and a reference folder"
    assert (out / "table3.md").is_file() and (out / "table3.png").is_file()


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
