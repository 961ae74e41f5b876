"""csd-exp as a package: the wheel carries the configs and the experiment scripts and runs outside any
checkout; the declared dependencies are the imported ones."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from framework_support import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# Declared but not imported: used by what we import (with a reason next to each in pyproject.toml).
RUNTIME_ONLY = {"accelerate", "safetensors", "rich", "timm"}  # timm: Adan, named by a config _target_
# Imported only inside ``try: ... except ImportError`` with a fallback.
OPTIONAL_IMPORTS = {"psutil"}


def _distribution(requirement: str) -> str:
    name = requirement.split(";")[0]
    for sep in "<>=!~[ ":
        name = name.split(sep)[0]
    return name.strip().lower().replace("_", "-")


def _imported_distributions() -> set[str]:
    to_distributions = metadata.packages_distributions()
    names: set[str] = set()
    for path in (REPO_ROOT / "csd_exp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    names -= set(sys.stdlib_module_names) | {"csd_exp", "__future__"} | OPTIONAL_IMPORTS
    imported: set[str] = set()
    for name in names:
        providers = {_distribution(dist) for dist in to_distributions.get(name, [name])}
        # A namespace package we ship a part of (hydra_plugins) needs no other distribution to import.
        if "csd-exp" not in providers:
            imported |= providers
    return imported


def test_declared_dependencies_are_the_imported_ones():
    declared = {_distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    imported = _imported_distributions()
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported - RUNTIME_ONLY == set(), "declared in pyproject.toml but never imported"
    pinned = {
        _distribution(line)
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert declared <= pinned, "requirements.txt pins the tested set of every dependency"


def test_the_package_list_names_every_package_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "csd_exp").rglob("__init__.py")}
    assert folders <= listed
    assert "csd_exp.conf" in listed


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel installed into a fresh venv that borrows this environment's dependencies (not csd_exp)."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the checkout's files: an in-tree build/ would keep modules that were since
    # moved, and the wheel would ship them.
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / "src" / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(root / "src"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("csd_exp-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # A .pth line adds our site-packages without processing its .pth files, so the editable csd_exp stays out.
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, venv


def _outside(venv: Path, args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "PYTHON"))}
    clean.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", **env)
    return subprocess.run(args, cwd=cwd, env=clean, capture_output=True, text=True, timeout=300)


def test_the_wheel_ships_configs_and_experiments(wheel_venv):
    wheel, _ = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert "csd_exp/conf/config.yaml" in names and "csd_exp/conf/experiment/panorama_exact_cpu.yaml" in names
    assert "csd_exp/report/paper.py" in names and "csd_exp/conf/paper/davis_table1.yaml" in names
    assert not any(name.startswith(("conf/", "experiments/", "tests/", "csd_exp/baselines/")) for name in names)


def test_the_wheel_runs_outside_the_checkout(wheel_venv, tmp_path):
    _, venv = wheel_venv
    bin_dir = venv / "bin"
    where = _outside(venv, [str(bin_dir / "python"), "-c", "import csd_exp; print(csd_exp.__file__)"], tmp_path)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    help_text = _outside(venv, [str(bin_dir / "csd-exp"), "--help"], tmp_path)
    assert help_text.returncode == 0 and "experiment" in help_text.stdout, help_text.stderr[-2000:]
    small = ["trainer.max_steps=2", "logger=csv", "~callbacks.progress"]
    for name, args in {"panorama": [], "video": ["experiment=video_exact_cpu", "data.max_frames=4"]}.items():
        job = _outside(venv, [str(bin_dir / "csd-exp"), *args, *small, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert job.returncode == 0, job.stderr[-3000:]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
    edited = tmp_path / "panorama" / "edited.png"
    scored = _outside(
        venv,
        [
            str(bin_dir / "csd-exp"),
            "eval",
            "--source",
            str(tmp_path / "panorama" / "source.png"),
            "--edited",
            str(edited),
            "--out",
            str(tmp_path / "eval"),
            "--target-text",
            "x",
        ],
        tmp_path,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    table = _outside(venv, [str(bin_dir / "python"), "-m", "csd_exp.report", str(tmp_path)], tmp_path)
    assert table.returncode == 0 and "| panorama | csd_edit | 1 |" in table.stdout, table.stderr[-2000:]
    # fig7_8 is a panorama table: a folder with runs of another task (the video run) is refused (issue 22).
    paper = [
        str(bin_dir / "python"),
        "-m",
        "csd_exp.report.paper",
        "fig7_8",
        "--report-only",
        str(tmp_path / "panorama"),
    ]
    reported = _outside(venv, [*paper, "--out", str(tmp_path / "fig7_8")], tmp_path)
    assert reported.returncode == 0 and (tmp_path / "fig7_8" / "fig7_8.md").is_file(), reported.stderr[-2000:]


def test_a_user_config_folder_adds_experiments(wheel_venv, tmp_path):
    _, venv = wheel_venv
    own = tmp_path / "my_conf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\nprompt: make it night\ntrainer:\n  max_steps: 2\n")
    args = [
        str(venv / "bin" / "csd-exp"),
        "experiment=mine",
        "logger=csv",
        "~callbacks.progress",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    job = _outside(venv, args, tmp_path, CSD_EXP_CONFIG_DIR=str(tmp_path / "my_conf"))
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["prompt"] == "make it night" and summary["steps"] == 2
