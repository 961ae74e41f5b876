"""The full-resolution output (``edited_fullres.png``): the float resize's pixels, written a strip at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csd_exp.data.images import save_image, write_png_strips
from csd_exp.data.resample import resize_frames, resize_rows
from csd_exp.data.samples import sample_image

REPO_ROOT = Path(__file__).resolve().parents[2]


def _edit(height: int, width: int) -> torch.Tensor:
    """A photo with noise on top: sharp edges and overshoot, so the bicubic's clamping is exercised."""
    noise = torch.randn(3, height, width, generator=torch.Generator().manual_seed(0))
    return (resize_frames(sample_image("coffee"), height, width) + 0.1 * noise).clamp(0, 1)


def _old_fullres(edit: torch.Tensor, height: int, width: int) -> np.ndarray:
    """What edited_fullres.png held before: the float resize of the whole image, rounded to 8 bits."""
    return (resize_frames(edit, height, width).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("size", [(301, 457), (23, 17), (40, 60)])  # up, down, the same height
def test_strips_join_into_the_whole_resize(size):
    edit = _edit(40, 52)
    whole = resize_frames(edit, *size)
    strips = list(resize_rows(edit, *size, max_pixels=7 * size[1]))  # 7 rows a strip, the last shorter
    assert len(strips) == -(-size[0] // 7) and all(s.shape[1] <= 7 for s in strips)
    # Float32 sums of at most a few dozen weighted terms in [0, 1], in another order: ~1e-7 apart.
    torch.testing.assert_close(torch.cat(strips, dim=1), whole, rtol=0, atol=1e-5)


def test_fullres_png_equals_the_float_resize(tmp_path):
    edit, (height, width) = _edit(48, 64), (230, 321)
    save_image(edit, tmp_path / "whole.png", size=(height, width))
    strips = (
        (s.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        for s in resize_rows(edit, height, width, max_pixels=10 * width)
    )
    write_png_strips(strips, tmp_path / "strips.png", (height, width))
    expected = _old_fullres(edit, height, width).astype(int)
    for name in ("whole.png", "strips.png"):
        with Image.open(tmp_path / name) as image:
            assert image.mode == "RGB" and image.size == (width, height)
            written = np.asarray(image).astype(int)
        # Equal but for a float32 sum landing on the other side of a rounding tie (none in practice).
        assert np.abs(written - expected).max() <= 1, name
        assert (written != expected).mean() < 1e-3, name


def test_strips_must_fill_the_image(tmp_path):
    with pytest.raises(ValueError, match="hold 2 rows, expected 3"):
        write_png_strips([np.zeros((2, 4, 3), np.uint8)], tmp_path / "short.png", (3, 4))
    with pytest.raises(ValueError, match="uint8"):
        write_png_strips([np.zeros((3, 4, 3), np.float32)], tmp_path / "float.png", (3, 4))


# The fixed memory the write may take, whatever the output size: one strip of 2**19 pixels with its
# temporaries (the float strip, its 8-bit copy, two filtered copies and their int16 costs: about 20 MB),
# the (H, h) weight matrix (3 MB here) and allocator slack; measured 42 MiB here, 68 MiB at 144 MP.
FIXED_BYTES = 64 * 2**20
# What may grow with the size: one byte a pixel, a third of one 8-bit copy of the output. The old path held
# several float copies (about 36 bytes a pixel: 410 MiB here); a single float copy is 12 (137 MiB here).
BYTES_PER_PIXEL = 1.0

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from csd_exp.data.images import save_image
    from csd_exp.data.resample import resize_frames
    from csd_exp.data.samples import sample_image

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

    height, width, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    edit = resize_frames(sample_image("coffee"), 256, 341)  # a smooth edit: zlib is quick on it
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
    save_image(edit, path, size=(height, width))
    print(json.dumps({"before": before, "peak": status("VmHWM:")}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_fullres_write_peak_memory_does_not_grow_with_the_image(tmp_path):
    height, width = 3000, 4000  # 12 MP: the bound is 75 MiB, one float copy 137 MiB
    path = tmp_path / "fullres.png"
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(height), str(width), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    if result.returncode != 0 and "clear_refs" in result.stderr:
        pytest.skip(f"cannot reset the peak RSS here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    grown = measured["peak"] - measured["before"]
    assert grown <= FIXED_BYTES + BYTES_PER_PIXEL * height * width, f"peak grew by {grown / 2**20:.0f} MiB"
    with Image.open(path) as image:
        assert image.size == (width, height)
