"""A one-node SLURM cluster for the tests in this folder (``scripts/slurm_cluster.sh``), started once per session.

Where it cannot start (not Linux, not root, slurm-wlm / munge not installed) the tests skip saying why; with
``CSD_EXP_REQUIRE_CLUSTER=1`` (``make test`` as root, i.e. CI) that is an error instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "slurm_cluster.sh"
REQUIRE_VARIABLE = "CSD_EXP_REQUIRE_CLUSTER"
DROPPED = ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: runs jobs on a one-node SLURM cluster (scripts/slurm_cluster.sh)")


@dataclass
class Cluster:
    conf: Path
    state: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a csd-exp command submitting to this cluster (sbatch passes it on to the jobs):
        one thread per process, loopback only, no hub or W&B network, no SLURM variables of an outer job."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith("SLURM_")}
        env.update(
            SLURM_CONF=str(self.conf),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            GLOO_SOCKET_IFNAME="lo",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            WANDB_MODE="offline",
            WANDB_SILENT="true",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        env.update(extra)
        return env

    def slurm(self, *args: str, check: bool = True) -> str:
        """Run a SLURM command (squeue, scontrol, ...) against this cluster; its stdout."""
        result = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1: the cluster tests must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster():
    if not sys.platform.startswith("linux"):
        _unavailable("SLURM test cluster: Linux only")
    why = subprocess.run([str(SCRIPT), "why-not"], capture_output=True, text=True).stdout.strip()
    if why:
        _unavailable(why)
    state = Path(tempfile.mkdtemp(prefix="csd-exp-slurm-"))  # short: munge's socket path has a length limit
    started = subprocess.run([str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
        pytest.fail(f"SLURM test cluster did not start: {started.stderr.strip()[-500:]}", pytrace=False)
    try:
        yield Cluster(conf=state / "slurm.conf", state=state)
    finally:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, timeout=120)


@pytest.fixture
def release_held_jobs(cluster):
    """SLURM holds a requeued job for ~120 s (Reason=BeginTime); release such jobs at once while the test runs.
    Yields the list of releases made (job ids)."""
    released: list[str] = []
    stop = threading.Event()

    def loop():
        while not stop.wait(1.0):
            queue = cluster.slurm("squeue", "-h", "-t", "PD", "-o", "%i %r", check=False)
            for line in queue.splitlines():
                job, _, reason = line.strip().partition(" ")
                if reason == "BeginTime":
                    cluster.slurm("scontrol", "update", f"jobid={job}", "StartTime=now", check=False)
                    released.append(job)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield released
    stop.set()
    thread.join(timeout=10)
