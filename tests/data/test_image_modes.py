"""Every image mode and bit depth through the project's one reader, bomb and size guards, output modes.

Each mode is written with Pillow (16-bit RGB(A) PNGs, which Pillow cannot write, by a tiny encoder here),
then read back by the four entry points: ``read_rgb``, ``load_image``, the scene reader and ``csd-exp
eval``'s loader. Tolerances follow the quantisation of the values actually returned.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from csd_exp.data import images as image_mod
from csd_exp.data.images import current_umask, read_image_size, read_rgb, set_max_image_pixels
from csd_exp.data.sample_scene import make_sample_scene
from csd_exp.data.samples import sample_image
from csd_exp.data.scene import SceneError
from csd_exp.data.scene import read_scene_image as scene_read
from csd_exp.data.scene_formats import write_nerfstudio_scene
from csd_exp.data.video_write import save_frame_grid, write_frames, write_video
from csd_exp.eval import InputError, load_frames

EXACT = 1e-6  # float32 rounding of an exact division
HALF_8BIT = 0.5 / 255 + EXACT  # a continuous value rounded to 8 bits
HIGH_BYTE = 1 / 257 + EXACT  # |v / 65535 - (v >> 8) / 255| <= 255 / 65535
BACKGROUND = (0.25, 0.5, 1.0)
SIZE = (8, 12)  # (H, W): not square, so a swapped size is caught
RNG = np.random.default_rng(0)


def _png16(path: Path, array: np.ndarray) -> None:
    """Write a 16-bit gray / gray+alpha / RGB / RGBA PNG (Pillow has no writer for 16-bit colour)."""
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _u8(channels: int) -> np.ndarray:
    return RNG.integers(0, 256, (*SIZE, channels), dtype=np.uint8)


def _u16(channels: int) -> np.ndarray:
    values = RNG.integers(0, 65536, (*SIZE, channels), dtype=np.uint16)
    values.flat[:4] = [0, 1, 65534, 65535]  # the ends of the range must map to 0 and 1
    return values


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


def _case_l(path):
    v = _u8(1)[..., 0]
    Image.fromarray(v).save(path)
    return _gray(v / 255), None, EXACT


def _case_la(path):
    v = _u8(2)
    Image.fromarray(v).save(path)
    return _gray(v[..., 0] / 255), v[..., 1] / 255, EXACT


def _case_rgb(path):
    v = _u8(3)
    Image.fromarray(v).save(path)
    return v / 255, None, EXACT


def _case_rgba(path):
    v = _u8(4)
    Image.fromarray(v).save(path)
    return v[..., :3] / 255, v[..., 3] / 255, EXACT


def _palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, SIZE, dtype=np.uint8)
    image = Image.frombytes("P", SIZE[::-1], index.tobytes())
    image.putpalette(palette.flatten().tolist())
    return image, palette, index


def _case_p(path):
    image, palette, index = _palette_image()
    image.save(path)
    return palette[index] / 255, None, EXACT


def _case_p_transparent(path):
    image, palette, index = _palette_image()
    image.save(path, transparency=3)
    return palette[index] / 255, (index != 3).astype(float), EXACT


def _case_pa(path):
    image, palette, index = _palette_image()
    alpha = _u8(1)[..., 0]
    pa = image.convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    pa.save(path)
    return palette[index] / 255, alpha / 255, EXACT


def _case_i16(path):
    v = _u16(1)[..., 0]
    Image.frombytes("I;16", SIZE[::-1], v.astype("<u2").tobytes()).save(path)
    return _gray(v / 65535), None, EXACT


def _case_i16b(path):
    v = _u16(1)[..., 0]
    Image.frombytes("I;16B", SIZE[::-1], v.astype(">u2").tobytes()).save(path)
    return _gray(v / 65535), None, EXACT


def _case_i32(path):
    v = _u16(1)[..., 0].astype(np.int32)
    Image.fromarray(v).save(path)
    return _gray(v / 65535), None, EXACT


def _case_f(path):
    v = RNG.random(SIZE, dtype=np.float32)
    v.flat[:2] = [0.0, 1.0]
    Image.fromarray(v).save(path)
    return _gray(v.astype(np.float64)), None, EXACT


def _case_rgb16(path):
    v = _u16(3)
    _png16(path, v)
    return v / 65535, None, HIGH_BYTE


def _case_rgba16(path):
    v = _u16(4)
    _png16(path, v)
    return v[..., :3] / 65535, v[..., 3] / 65535, HIGH_BYTE


def _case_bilevel(path):
    v = RNG.integers(0, 2, SIZE).astype(bool)
    Image.fromarray(v).convert("1").save(path)
    return _gray(v.astype(float)), None, EXACT


def _case_cmyk(path):
    v = _u8(4)
    Image.frombytes("CMYK", SIZE[::-1], v.tobytes()).save(path)
    c = v / 255.0
    return (1 - c[..., :3]) * (1 - c[..., 3:]), None, HALF_8BIT


def _case_ycbcr(path):
    # Pillow's YCbCr TIFFs do not read back, so YCbCr goes through JPEG (lossless at quality 100 for a
    # flat colour without chroma subsampling, up to the 8-bit rounding and one level of DCT error).
    ycc = (100, 50, 200)
    Image.new("YCbCr", SIZE[::-1], ycc).save(path, quality=100, subsampling=0)
    y, cb, cr = ycc
    rgb = np.array([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)])
    return np.broadcast_to(np.clip(rgb, 0, 255) / 255, (*SIZE, 3)), None, 1.5 / 255


# file name -> (writer, the mode Pillow opens the file in)
CASES = {
    "L.png": (_case_l, "L"),
    "LA.png": (_case_la, "LA"),
    "RGB.png": (_case_rgb, "RGB"),
    "RGBA.png": (_case_rgba, "RGBA"),
    "P.png": (_case_p, "P"),
    "P_transparency.png": (_case_p_transparent, "P"),
    "PA.tif": (_case_pa, "PA"),
    "I16.png": (_case_i16, "I;16"),
    "I16B.tif": (_case_i16b, "I;16B"),
    "I32.tif": (_case_i32, "I"),
    "F.tif": (_case_f, "F"),
    "RGB16.png": (_case_rgb16, "RGB"),
    "RGBA16.png": (_case_rgba16, "RGBA"),
    "bilevel.png": (_case_bilevel, "1"),
    "CMYK.tif": (_case_cmyk, "CMYK"),
    "YCbCr.jpg": (_case_ycbcr, "RGB"),
}


@pytest.fixture(params=sorted(CASES))
def written(request, tmp_path):
    """``(path, expected rgb (H, W, 3), expected alpha (H, W) or None, tolerance)``."""
    path = tmp_path / request.param
    write, opened_mode = CASES[request.param]
    rgb, alpha, tol = write(path)
    with Image.open(path) as image:
        assert image.mode == opened_mode  # the file really exercises that mode
    return path, np.asarray(rgb, dtype=np.float64), alpha, tol


def _close(actual, expected, tol) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= tol


def test_every_mode_reads_with_its_real_range(written):
    path, rgb, alpha, tol = written
    out = read_rgb(path)
    assert out.dtype == np.float32 and out.shape == (*SIZE, 3)
    _close(out, rgb, tol)
    if "16" in path.stem and "RGB" in path.stem:  # Pillow keeps the high byte of 16-bit colour PNGs
        assert np.allclose(out * 255, np.round(out * 255), atol=1e-4)


def test_every_mode_reads_the_same_in_load_image_and_eval(written):
    path, rgb, _, tol = written
    _close(image_mod.load_image(path).permute(1, 2, 0), rgb, tol)
    frames, names = load_frames(path)
    assert names == [str(path)]
    _close(frames[0].permute(1, 2, 0), rgb, tol)


def test_scene_reader_composites_alpha_over_the_background(written):
    path, rgb, alpha, tol = written
    a = np.ones(SIZE) if alpha is None else np.asarray(alpha, dtype=np.float64)
    expected = rgb * a[..., None] + np.asarray(BACKGROUND) * (1 - a[..., None])
    _close(scene_read(path, BACKGROUND).permute(1, 2, 0), expected, 2 * tol)
    rgba = read_rgb(path, alpha=True)
    assert rgba.shape == (*SIZE, 4)
    _close(rgba[..., 3], a, tol)


def test_16_bit_gray_png_is_not_white(tmp_path):
    """The original bug: Pillow's I;16 -> RGB clips to 255, so eval scored identical files 2.6 dB."""
    ramp = np.linspace(0, 65535, SIZE[0] * SIZE[1]).round().astype(np.uint16).reshape(SIZE)
    path = tmp_path / "ramp.png"
    Image.frombytes("I;16", SIZE[::-1], ramp.tobytes()).save(path)
    _close(read_rgb(path)[..., 0], ramp / 65535, 1 / 65535)


@pytest.mark.parametrize(
    ("mode", "values", "message"),
    [("I", [-5, 70000], r"0\.\.65535"), ("F", [-0.5, 1.5], r"\[0, 1\]"), ("F", [np.nan, 0.5], "NaN")],
)
def test_out_of_range_deep_values_are_refused(tmp_path, mode, values, message):
    array = np.resize(np.asarray(values, dtype=np.int32 if mode == "I" else np.float32), SIZE)
    path = tmp_path / f"bad_{mode}.tif"
    Image.fromarray(array).save(path)
    for read in (read_rgb, image_mod.load_image, lambda p: scene_read(p, BACKGROUND), load_frames):
        with pytest.raises(ValueError, match=message) as info:
            read(path)
        assert path.name in str(info.value)


def test_unsupported_mode_is_refused_by_name(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", SIZE[::-1], (50, 10, 20)).save(path)
    with pytest.raises(ValueError, match=r"lab\.tif: unsupported pixel mode 'LAB'"):
        read_rgb(path)
    with pytest.raises(SceneError, match="'LAB'"):
        scene_read(path, BACKGROUND)
    with pytest.raises(InputError, match="'LAB'"):
        load_frames(path)


# ------------------------------------------------------------------------------- sizes and size guards


def test_image_size_is_height_width_without_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (20, 9)).save(path)
    assert read_image_size(path) == (9, 20)
    assert image_mod.image_file_size(path) == (9, 20)
    assert image_mod.image_file_size(None) == tuple(sample_image().shape[1:])
    assert image_mod.image_file_size("sample:coffee") == tuple(sample_image("coffee").shape[1:])
    with pytest.raises(FileNotFoundError, match="data.path"):
        image_mod.image_file_size(tmp_path / "missing.png")


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_degenerate_images_are_refused(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size).save(path)
    with pytest.raises(ValueError, match=rf"tiny\.png.*{size[1]}x{size[0]}.*8 px"):
        image_mod.load_image(path)
    assert image_mod.load_image(path, min_side=1).shape == (3, size[1], size[0])


@pytest.mark.parametrize("pixels", [12 * 12, 20 * 20])  # Pillow's warning band (1x-2x) and its error band
def test_decompression_bomb_is_a_short_error_naming_the_setting(tmp_path, monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    assert set_max_image_pixels(100) is not None
    side = int(pixels**0.5)
    path = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(path)
    readers = (read_rgb, read_image_size, image_mod.load_image, image_mod.image_file_size)
    for read in (*readers, lambda p: scene_read(p, BACKGROUND), load_frames):
        with pytest.raises(ValueError, match=rf"bomb\.png has {pixels} pixels.*data\.max_image_pixels={pixels}"):
            read(path)
    set_max_image_pixels(None)
    assert read_rgb(path).shape == (side, side, 3)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_max_image_pixels_must_be_positive(bad):
    with pytest.raises(ValueError, match="data.max_image_pixels"):
        set_max_image_pixels(bad)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    """A 2000 x 3000 (H x W) JPEG with smooth content."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    y, x = np.mgrid[0:2000, 0:3000]
    rgb = np.stack([x * 255 // 2999, y * 255 // 1999, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def test_big_jpeg_is_decoded_at_reduced_size(big_jpeg, monkeypatch):
    decoded_sizes = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = read_rgb(big_jpeg, min_size=(64, 96))
    assert decoded_sizes == [(375, 250)]  # the decoder ran at 1/8 scale: 2000x3000 was never decoded
    assert 64 <= out.shape[0] < 2000 and 96 <= out.shape[1] < 3000
    # the gradient survives the reduction: left column dark red, right column full red
    assert out[:, 0, 0].max() < 0.1 and out[:, -1, 0].min() > 0.9
    loaded = image_mod.load_image(big_jpeg, min_size=(64, 96))
    assert 64 <= loaded.shape[1] < 2000 and 96 <= loaded.shape[2] < 3000


def test_reduction_keeps_at_least_the_hint(tmp_path):
    path = tmp_path / "grid.png"
    values = RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(values).save(path)
    out = read_rgb(path, min_size=(15, 20))
    assert out.shape == (16, 24, 3)  # factor 4 = min(64 // 15, 96 // 20)
    box_mean = values.reshape(16, 4, 24, 4, 3).mean(axis=(1, 3)) / 255
    _close(out, box_mean, HALF_8BIT)
    assert read_rgb(path, min_size=(100, 100)).shape == (64, 96, 3)  # a larger hint is no reason to upscale


# ------------------------------------------------------------------------------- output permissions


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_outputs_follow_the_umask(tmp_path, umask):
    assert current_umask() == umask
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    frames = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert _mode(write_video(frames, tmp_path / "clip.gif", fps=5)) == file_mode
    assert _mode(save_frame_grid(frames, tmp_path / "grid.png")) == file_mode
    files = write_frames(frames, tmp_path / "frames")
    assert _mode(tmp_path / "frames") == folder_mode
    assert {_mode(f) for f in files} == {file_mode}
    scene = make_sample_scene(num_views=2, num_val=0, size=(8, 8))
    transforms = write_nerfstudio_scene(scene, tmp_path / "scene")
    assert _mode(transforms.parent) == folder_mode and _mode(transforms.parent / "images") == folder_mode
    written = [transforms, *(transforms.parent / "images").iterdir()]
    assert {_mode(f) for f in written} == {file_mode}
