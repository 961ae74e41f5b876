"""Fixtures for tests/metrics."""

from __future__ import annotations

import pytest
from metrics_test_support import build_tiny_clip_checkpoint


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory):
    """(checkpoint path, in-memory model) of a random-weight tiny OpenCLIP registered with open_clip."""
    return build_tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"))
