"""Shared fixtures for the render tests: a small analytic scene, single-threaded torch."""

import pytest
import torch

from csd_exp.data.sample_scene import make_sample_scene


@pytest.fixture(autouse=True)
def _single_thread():
    """Run each test with one intra-op thread, then restore the previous setting.

    The ops here act on ~10^5-element tensors, where a second OpenMP thread gains little on an
    idle machine and, on an oversubscribed shared machine, makes every op spin at barriers (we
    measured 0.06 s/step on one thread against 0.9 s/step on two under load). One thread also
    makes the floating-point reductions reproducible.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_scene():
    """12 views (10 train + 2 held out) of the sample scene at 32x32."""
    return make_sample_scene(num_views=12, num_val=2, size=(32, 32), seed=0)
