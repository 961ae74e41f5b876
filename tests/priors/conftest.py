"""Tiny pipelines built once per test session (offline, seeded) and loaded through ``from_pretrained``."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_pipelines")


@pytest.fixture(scope="session")
def ip2p_prior(tiny_cache):
    from csd_exp.priors import tiny_instruct_pix2pix_prior

    return tiny_instruct_pix2pix_prior(tiny_cache)


@pytest.fixture(scope="session")
def ip2p_prior64(tiny_cache):
    """The tiny pipeline in float64: batched and unbatched convolutions then agree to ~1e-15 on any CPU,
    so batching tests see the prior's row bookkeeping, not the CPU's float32 summation order."""
    from csd_exp.priors import tiny_instruct_pix2pix_prior

    return tiny_instruct_pix2pix_prior(tiny_cache, torch_dtype="float64")


@pytest.fixture(scope="session")
def sd_prior(tiny_cache):
    from csd_exp.priors import tiny_stable_diffusion_prior

    return tiny_stable_diffusion_prior(tiny_cache)


@pytest.fixture(scope="session")
def sd_prior64(tiny_cache):
    from csd_exp.priors import tiny_stable_diffusion_prior

    return tiny_stable_diffusion_prior(tiny_cache, torch_dtype="float64")


@pytest.fixture(scope="package", autouse=True)
def single_thread():
    """Tiny models run as fast on one thread, and one thread is not slowed by a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
