"""Cross-rank form: particles sharded over gloo ranks give the single-process gradients and diagnostics."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distill_ddp_worker import SHARD_SIZES, distill_shard, make_particles, worker


@pytest.fixture()
def single_thread():
    """Same BLAS partitioning in every process, so results can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_single_process_group_equals_plain_call(single_thread, single_process_group):
    particles = make_particles()
    count = len(particles["latents"])
    grouped = distill_shard(particles, 0, count, process_group=single_process_group)
    plain = distill_shard(particles, 0, count)
    for name in ("gradients", "guidance_gradients", "latent_grad"):
        assert torch.equal(grouped[name], plain[name]), name
    assert grouped["diagnostics"] == plain["diagnostics"]


def test_two_gloo_processes_equal_single_process(single_thread, tmp_path):
    mp.spawn(
        worker, args=(len(SHARD_SIZES), str(tmp_path / "store"), str(tmp_path)), nprocs=len(SHARD_SIZES), join=True
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(len(SHARD_SIZES))]
    particles = make_particles()
    reference = distill_shard(particles, 0, len(particles["latents"]))
    for name in ("gradients", "guidance_gradients", "latent_grad"):
        assert [len(rank[name]) for rank in ranks] == list(SHARD_SIZES)
        assert torch.equal(torch.cat([rank[name] for rank in ranks]), reference[name]), name
    for rank in ranks:  # diagnostics describe all particles, the same on every rank
        assert rank["diagnostics"] == reference["diagnostics"]
        assert rank["guidance_diagnostics"] == reference["guidance_diagnostics"]
