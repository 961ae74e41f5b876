"""W&B runs of a sweep share a group and have distinct, readable names and the true method tags.

The identity each run gave W&B is recorded in its ``summary.json`` (``wandb``), and the tests check it
against what W&B itself wrote into the offline run file (``tests/wandb_offline.py`` reads it back).
"""

from __future__ import annotations

import json

import pytest
from framework_support import REPO_ROOT, run_cli
from wandb_offline import read_offline_run

SMALL = [
    "debug=smoke",
    "logger=wandb",
    "data.short_side=32",
    "task.window_size=32",
    "task.window_stride=8",
]


def _cli(args, cwd):
    return run_cli(args, cwd=cwd, env={"WANDB_MODE": "offline"})


def test_a_sweep_shares_a_group_and_names_each_run_by_method_swept_values_and_seed(tmp_path):
    sweep = tmp_path / "sweep"
    result = _cli(
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            "experiment=panorama_exact_cpu",
            *SMALL,
            "guidance=csd_edit,sds",
            "seed=0,1",
            "tags=[review]",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.rglob("summary.json"))]
    runs = [summary["wandb"] for summary in summaries]
    assert sorted(run["name"] for run in runs) == ["csd_edit·s0", "csd_edit·s1", "sds·s0", "sds·s1"]
    assert {run["group"] for run in runs} == {f"panorama_exact_cpu-{sweep.name}"}
    assert {run["job_type"] for run in runs} == {"panorama"}
    assert sorted(tuple(run["tags"]) for run in runs) == [
        ("panorama", "csd_edit", "panorama_exact_cpu", "review", "kernel:rbf"),
        ("panorama", "csd_edit", "panorama_exact_cpu", "review", "kernel:rbf"),
        ("panorama", "sds", "panorama_exact_cpu", "review", "kernel:identity"),
        ("panorama", "sds", "panorama_exact_cpu", "review", "kernel:identity"),
    ]
    # Each job logs its own overrides (its own method and seed), and its artifact holds its record and outputs.
    for summary in summaries:
        method, seed = summary["wandb"]["name"].split("·s")
        assert f"guidance={method}" in summary["overrides"] and f"seed={seed}" in summary["overrides"]
        assert summary["tags"] == ["review"]
        files = summary["wandb"]["artifact_files"]
        assert {"summary.json", "resolved_config.yaml", "config_tree.log", "edited.png", "source.png"} <= set(files)
    # What W&B itself recorded, read back from the offline run files, is the same.
    for folder in sorted(sweep.glob("*/summary.json")):
        summary = json.loads(folder.read_text())
        (run_dir,) = (folder.parent / "wandb").glob("offline-run-*")
        run = read_offline_run(run_dir)
        recorded = summary["wandb"]
        assert (run.name, run.group, run.job_type, run.tags) == (
            recorded["name"],
            recorded["group"],
            recorded["job_type"],
            recorded["tags"],
        )
        assert recorded["id"] == run.id  # the report links to it
        assert run.config["overrides"] == summary["overrides"] and run.config["seed"] == summary["seed"]
        assert {name: run.summary[name] for name in summary["metrics"]} == pytest.approx(summary["metrics"])
        assert run.artifacts[f"outputs-{run.id}"] == ("run-outputs", sorted(recorded["artifact_files"]))
    # One `wandb sync` line for the whole sweep (W&B's own banners are silenced offline), naming all four runs.
    output = result.stdout + result.stderr
    sync_lines = [line for line in output.splitlines() if "wandb sync" in line]
    assert len(sync_lines) == 1, sync_lines
    command = sync_lines[0].split("later with: ", 1)[1]
    assert command == f"wandb sync {sweep.resolve()}/*/wandb/offline-run-*"
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 4


def test_the_run_artifact_holds_the_named_files(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    from csd_exp.infra.loggers import finish_wandb, log_run_artifact

    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "edited.png").write_bytes(b"not read")
    logger = WandbLogger(project="csd-exp-test", save_dir=str(tmp_path), offline=True)
    try:
        artifact = log_run_artifact([logger], tmp_path, ["summary.json", "edited.png", "absent.mp4"])
        assert artifact.type == "run-outputs"
        assert artifact.name.startswith(f"outputs-{logger.experiment.id}")
        assert sorted(artifact.manifest.entries) == ["edited.png", "summary.json"]
    finally:
        finish_wandb([logger], announce=False)


def test_swept_values_enter_the_name_and_a_baseline_is_tagged_as_itself(tmp_path):
    sweep = tmp_path / "sweep"
    result = _cli(
        [
            "-m",
            f"hydra.sweep.dir={sweep}",
            "task=panorama_sampling",
            *SMALL,
            "task.method=per_window,multidiffusion",
            "guidance.guidance_scale=1.5,3",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text())["wandb"] for p in sorted(sweep.rglob("summary.json"))]
    assert sorted(run["name"] for run in runs) == [
        "multidiffusion·guidance_scale=1.5·s0",
        "multidiffusion·guidance_scale=3·s0",
        "per_window·guidance_scale=1.5·s0",
        "per_window·guidance_scale=3·s0",
    ]
    assert {run["tags"][1] for run in runs} == {"per_window", "multidiffusion"}  # never "csd_edit"
    recorded = [read_offline_run(folder) for folder in sorted(sweep.glob("*/wandb/offline-run-*"))]
    assert sorted(run.name for run in recorded) == sorted(run["name"] for run in runs)
    assert {run.tags[1] for run in recorded} == {"per_window", "multidiffusion"}
    assert {run.config["method"] for run in recorded} == {"per_window", "multidiffusion"}
    assert {run["group"] for run in runs} == {f"panorama_sampling-{sweep.name}"}


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["experiment=panorama_exact_cpu", *SMALL]
    assert _cli([*common, f"paths.output_dir={first}"], cwd=REPO_ROOT).returncode == 0
    checkpoint = first / "checkpoints" / "last.ckpt"
    result = _cli([*common, "trainer.max_steps=4", f"ckpt_path={checkpoint}", f"paths.output_dir={second}"], REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (first_run,) = (first / "wandb").glob("offline-run-*")
    (second_run,) = (second / "wandb").glob("offline-run-*")
    run_id = first_run.name.rsplit("-", 1)[-1]
    assert second_run.name.rsplit("-", 1)[-1] == run_id
    assert read_offline_run(first_run).id == read_offline_run(second_run).id == run_id
    assert json.loads((second / "summary.json").read_text())["wandb"]["id"] == run_id


def test_curves_get_run_summaries_that_wandb_accepts(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    from csd_exp.infra.loggers import CURVE_SUMMARIES, define_curve_summaries, finish_wandb

    logger = WandbLogger(project="csd-exp-test", save_dir=str(tmp_path), offline=True)
    run, defined = logger.experiment, []
    original = run.define_metric

    def recording(name, **kwargs):
        defined.append((name, kwargs["summary"]))
        return original(name, **kwargs)  # W&B validates the summary ops (raises on an unknown one)

    run.define_metric = recording
    try:
        define_curve_summaries([logger])
    finally:
        finish_wandb([logger], announce=False)
    assert dict(defined) == CURVE_SUMMARIES and dict(defined)["val/*"] == "min,max,last"
