"""Tests for csd_exp.data.video: I/O round trips, frame selection, exact synthetic motion, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import csd_exp.data.video as video
import csd_exp.data.video_write as video_write
from csd_exp.data import (
    ClipMotion,
    VideoClip,
    check_fits_in_memory,
    frame_grid,
    load_photo,
    make_pan_clip,
    read_video,
    resize_frames,
    restore_size,
    sample_clip,
    save_frame_grid,
    warp_frame,
    write_frames,
    write_video,
)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return 10 * np.log10(1.0 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def clip() -> VideoClip:
    return sample_clip()[0]


def _save_rgb(path: Path, height: int, width: int, value: int = 128) -> None:
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["mp4", "mov", "webm"])
def test_lossy_video_round_trip(clip: VideoClip, tmp_path: Path, ext: str) -> None:
    path = write_video(clip.frames, tmp_path / f"clip.{ext}", fps=12.5)
    back = read_video(path)
    assert back.frames.shape == clip.frames.shape
    assert back.frames.dtype == torch.float32
    assert 0.0 <= back.frames.min() and back.frames.max() <= 1.0
    assert back.fps == pytest.approx(12.5)
    assert back.source == str(path)
    assert back.frame_names == [f"frame_{i:05d}" for i in range(12)]
    assert psnr(back.frames, clip.frames) > 28.0
    # Each frame is closer to its own source frame than to the next one: frame order survives.
    for i in range(11):
        assert psnr(back.frames[i], clip.frames[i]) > psnr(back.frames[i], clip.frames[i + 1]) + 3


def test_gif_round_trip_keeps_every_frame(clip: VideoClip, tmp_path: Path) -> None:
    frames = torch.cat([clip.frames[:3], clip.frames[2:3], clip.frames[2:3]])  # repeated frames too
    back = read_video(write_video(frames, tmp_path / "clip.gif", fps=10))
    assert back.frames.shape == frames.shape
    assert back.fps == pytest.approx(10.0)
    assert psnr(back.frames, frames) > 28.0


def test_png_folder_round_trip_is_exact_to_8_bits(clip: VideoClip, tmp_path: Path) -> None:
    paths = write_frames(clip.frames, tmp_path / "frames")
    assert [p.name for p in paths] == [f"frame_{i:05d}.png" for i in range(12)]
    back = read_video(tmp_path / "frames", fps=24)
    assert back.frame_names == [p.name for p in paths]
    assert back.fps == 24
    assert (back.frames - clip.frames).abs().max() <= 0.5 / 255 + 1e-6
    assert _leftovers(tmp_path) == ["frames"]


def test_write_frames_into_existing_folder_replaces_files(clip: VideoClip, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    write_frames(clip.frames[:4], folder)
    write_frames(clip.frames[4:6], folder)
    back = read_video(folder)
    assert back.num_frames == 4
    assert (back.frames[:2] - clip.frames[4:6]).abs().max() <= 0.5 / 255 + 1e-6
    assert _leftovers(tmp_path) == ["frames"]


def test_odd_size_mp4_is_padded_by_edge_repeat(tmp_path: Path) -> None:
    small, _ = sample_clip(num_frames=4, frame_size=(33, 47))
    back = read_video(write_video(small.frames, tmp_path / "odd.mp4"))
    assert back.size == (34, 48)
    assert psnr(back.frames[:, :, :33, :47], small.frames) > 28.0
    # The added row repeats the last one (up to compression).
    assert (back.frames[:, :, 33] - back.frames[:, :, 32]).abs().mean() < 0.03


def test_reads_the_real_gif_bundled_with_scikit_image() -> None:
    import skimage.data

    gif = Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif"
    clip = read_video(gif)
    assert clip.frames.shape == (24, 3, 25, 14)
    assert clip.fps == pytest.approx(1000 / 70)
    assert clip.frames.std() > 0.05


def test_folder_frames_sort_naturally_and_ignore_other_files(tmp_path: Path) -> None:
    for value, name in [(10, "f10.png"), (2, "f2.jpg"), (1, "f1.png"), (3, "F3.webp")]:
        _save_rgb(tmp_path / name, 8, 6, value * 20)
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub").mkdir()
    clip = read_video(tmp_path)
    assert clip.frame_names == ["f1.png", "f2.jpg", "F3.webp", "f10.png"]
    levels = (clip.frames.mean(dim=(1, 2, 3)) * 255).round()
    assert levels[[0, 1, 3]].tolist() == [20.0, 40.0, 200.0]
    assert abs(levels[2].item() - 60) <= 2  # webp default is lossy


def test_grayscale_and_rgba_frames_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 4), 100, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((5, 4, 4), 50, np.uint8)).save(tmp_path / "b.png")
    clip = read_video(tmp_path)
    assert clip.frames.shape == (2, 3, 5, 4)
    assert torch.allclose(clip.frames[0], torch.full((3, 5, 4), 100 / 255))


# ---------------------------------------------------------------------------------------------------
# Frame selection
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "stride", "max_frames", "expected"),
    [(0, 1, None, list(range(12))), (2, 3, None, [2, 5, 8, 11]), (1, 2, 3, [1, 3, 5]), (11, 1, 5, [11])],
)
def test_frame_selection_in_folder(clip, tmp_path, start, stride, max_frames, expected) -> None:
    write_frames(clip.frames, tmp_path / "f")
    sub = read_video(tmp_path / "f", start=start, stride=stride, max_frames=max_frames)
    assert sub.frame_names == [f"frame_{i:05d}.png" for i in expected]
    assert (sub.frames - clip.frames[expected]).abs().max() <= 0.5 / 255 + 1e-6
    assert sub.fps == pytest.approx(10.0 / stride)


def test_frame_selection_in_mp4(clip: VideoClip, tmp_path: Path) -> None:
    path = write_video(clip.frames, tmp_path / "c.mp4", fps=10)
    sub = read_video(path, start=1, stride=4, max_frames=2)
    assert sub.frame_names == ["frame_00001", "frame_00005"]
    assert sub.fps == pytest.approx(2.5)
    full = read_video(path)
    assert torch.equal(sub.frames, full.frames[[1, 5]])


# ---------------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------------


def test_resize_and_restore(clip: VideoClip) -> None:
    big = resize_frames(clip.frames, 96, 80)
    assert big.shape == (12, 3, 96, 80)
    assert big.min() >= 0 and big.max() <= 1
    back = restore_size(big, clip.size)
    assert back.shape == clip.frames.shape
    assert psnr(back, clip.frames) > 30.0
    single = resize_frames(clip.frames[0], 32, 32, mode="bilinear")
    assert single.shape == (3, 32, 32)


def test_resize_is_antialiased() -> None:
    # Every 7th pixel of a 63x63 checkerboard is 0 or 1: only a low-pass filter gives grey.
    checker = ((torch.arange(63)[:, None] + torch.arange(63)[None, :]) % 2).float().expand(1, 3, 63, 63)
    small = resize_frames(checker, 9, 9)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.02)


# ---------------------------------------------------------------------------------------------------
# Synthetic clip with exact motion
# ---------------------------------------------------------------------------------------------------


def test_default_sample_clip() -> None:
    clip, motion = sample_clip()
    assert isinstance(motion, ClipMotion)
    assert clip.frames.shape == (12, 3, 64, 64)
    assert clip.source.startswith("skimage:astronaut")
    assert motion.flow.shape == (11, 2, 64, 64)
    assert motion.valid.shape == (11, 1, 64, 64) and motion.valid.dtype == torch.bool
    assert motion.source_xy.shape == (12, 2, 64, 64)
    assert torch.allclose(motion.flow[:, 0], torch.tensor(1.5))
    assert torch.allclose(motion.flow[:, 1], torch.tensor(0.5))
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
    again, _ = sample_clip()
    assert torch.equal(clip.frames, again.frames)


def test_integer_pan_warps_exactly() -> None:
    clip, motion = make_pan_clip("astronaut", 6, (48, 40), pixels_per_frame=(2, -1))
    assert torch.equal(motion.flow[:, 0], torch.full((5, 48, 40), 2.0))
    assert torch.equal(motion.flow[:, 1], torch.full((5, 48, 40), -1.0))
    # Pixels whose source lies in frame i: all but the last 2 columns and the first row.
    expected = torch.zeros(48, 40, dtype=torch.bool)
    expected[1:, :-2] = True
    assert torch.equal(motion.valid[:, 0], expected.expand(5, -1, -1))
    warped = warp_frame(clip.frames[:-1], motion.flow)
    mask = motion.valid.expand_as(warped)
    assert (warped - clip.frames[1:]).abs()[mask].max() < 1e-5


@pytest.mark.parametrize("name", ["pan", "zoom"])
def test_flow_maps_sampling_positions_exactly(name: str) -> None:
    """Bilinear warping reproduces any affine map exactly, so this checks the flow to float precision."""
    _, motion = sample_clip(name)
    warped_xy = warp_frame(motion.source_xy[:-1].double(), motion.flow.double())
    mask = motion.valid.expand_as(warped_xy)
    assert (warped_xy - motion.source_xy[1:].double()).abs()[mask].max() < 1e-4


@pytest.mark.parametrize("name", ["pan", "zoom"])
def test_warping_frame_i_reproduces_frame_i_plus_1(name: str) -> None:
    clip, motion = sample_clip(name)
    mask = motion.valid.expand(-1, 3, -1, -1)

    def error(flow: torch.Tensor) -> float:
        warped = warp_frame(clip.frames[:-1], flow)
        return (warped - clip.frames[1:]).abs()[mask].mean().item()

    right = error(motion.flow)
    assert right < 0.02  # residual is re-interpolation of sub-pixel samples only
    assert right < 0.4 * error(torch.zeros_like(motion.flow))
    assert right < 0.4 * error(-motion.flow)


def test_zoom_flow_points_outward_from_centre() -> None:
    _, motion = make_pan_clip("coffee", 3, 32, pixels_per_frame=(0, 0), zoom_per_frame=1.25)
    # Zooming in: a pixel of frame i + 1 comes from nearer the centre of frame i.
    assert torch.allclose(motion.flow[0, 0, 0, 0], torch.tensor((1 / 1.25 - 1) * -15.5))
    assert motion.valid.all()


def test_pan_that_leaves_the_photo_is_refused() -> None:
    photo = load_photo("chelsea")
    assert photo.shape == (3, 300, 451)
    with pytest.raises(ValueError, match=r"frame \d+ leaves the 300x451 photo"):
        make_pan_clip(photo, 10, 64, pixels_per_frame=(60, 0))


def test_warp_frame_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same size"):
        warp_frame(torch.zeros(3, 8, 8), torch.zeros(2, 8, 9))


# ---------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------


def test_frame_grid_layout_and_saving(tmp_path: Path) -> None:
    frames = torch.arange(5, dtype=torch.float32).div(10).view(5, 1, 1, 1).expand(5, 3, 4, 6)
    grid = frame_grid(frames, rows=2, padding=1, pad_value=1.0)
    assert grid.shape == (3, 2 * 4 + 1, 3 * 6 + 2)
    assert torch.all(grid[:, 5:9, 7:13] == 0.4)  # frame 4: row 1, column 1
    assert torch.all(grid[:, 5:9, 14:20] == 1.0)  # empty cell
    assert torch.all(grid[:, 4] == 1.0)  # gap row
    assert frame_grid(frames).shape == (3, 8, 18)  # 3 columns x 2 rows by default
    path = save_frame_grid(frames, tmp_path / "grid.png", rows=1)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (4, 30, 3)
    assert saved[0, 6 * 3, 0] == round(0.3 * 255)
    with pytest.raises(ValueError, match="cannot hold 5 frames"):
        frame_grid(frames, rows=2, cols=2)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")


def test_empty_folder_and_folder_without_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no frames in folder .*\.png"):
        read_video(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no frames in folder"):
        read_video(tmp_path)


@pytest.mark.parametrize("name", ["broken.mp4", "broken.webm", "broken.gif"])
def test_corrupt_video_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ValueError, match=f"cannot read video file .*{name}"):
        read_video(path)


def test_truncated_mp4(clip: VideoClip, tmp_path: Path) -> None:
    data = write_video(clip.frames, tmp_path / "ok.mp4").read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.mp4"):
        read_video(path)


def test_corrupt_frame_in_folder(tmp_path: Path) -> None:
    _save_rgb(tmp_path / "0.png", 4, 4)
    (tmp_path / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read frame .*1\.png"):
        read_video(tmp_path)


def test_single_frame_where_two_are_required(tmp_path: Path, clip: VideoClip) -> None:
    _save_rgb(tmp_path / "only.png", 4, 4)
    assert read_video(tmp_path).num_frames == 1
    with pytest.raises(ValueError, match="1 frame.*at least 2 are required"):
        read_video(tmp_path, min_frames=2)
    gif = write_video(clip.frames[:1], tmp_path / "one.gif")
    with pytest.raises(ValueError, match="one.gif gives 1 frame"):
        read_video(gif, min_frames=2)


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    _save_rgb(tmp_path / "a1.png", 8, 6)
    _save_rgb(tmp_path / "a2.png", 8, 6)
    _save_rgb(tmp_path / "a3.png", 7, 6)
    _save_rgb(tmp_path / "a4.png", 5, 5)
    with pytest.raises(ValueError, match=r"a3\.png is 7x6 .* first frame a1\.png is 8x6"):
        read_video(tmp_path)


@pytest.mark.parametrize("name", ["clip.avi", "frame.png", "noext"])
def test_unsupported_file_lists_supported_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ValueError, match=r"unsupported video file .*supported: .*\.mp4.*\.gif.*\.png"):
        read_video(path)


def test_unsupported_output_extension(clip: VideoClip, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"supported: \.mp4"):
        write_video(clip.frames, tmp_path / "x.avi")
    assert _leftovers(tmp_path) == []


def test_start_beyond_the_clip(clip: VideoClip, tmp_path: Path) -> None:
    write_frames(clip.frames[:3], tmp_path / "f")
    with pytest.raises(ValueError, match=r"start=3 is beyond the end of .*f, which has 3 frame"):
        read_video(tmp_path / "f", start=3)
    for ext in ("mp4", "webm"):  # frame count known up front / found while decoding
        path = write_video(clip.frames[:3], tmp_path / f"c.{ext}")
        with pytest.raises(ValueError, match=rf"start=7 is beyond the end of .*c\.{ext}, which has 3 frame"):
            read_video(path, start=7)


@pytest.mark.parametrize("kwargs", [{"start": -1}, {"stride": 0}, {"max_frames": 0}, {"min_frames": 0}])
def test_invalid_selection_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        read_video(tmp_path, **kwargs)


def test_non_finite_frames_are_not_written(tmp_path: Path) -> None:
    frames = torch.full((2, 3, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        write_video(frames, tmp_path / "x.mp4")
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# Memory guard
# ---------------------------------------------------------------------------------------------------


def test_check_fits_in_memory_reports_how_many_frames_fit() -> None:
    frame_bytes = 3 * 10 * 20 * 4
    assert check_fits_in_memory(5, 10, 20, budget_bytes=5 * frame_bytes) == 5 * frame_bytes
    with pytest.raises(ValueError, match="at most 5 frames fit"):
        check_fits_in_memory(6, 10, 20, budget_bytes=5 * frame_bytes + 7)
    assert check_fits_in_memory(2, 8, 8) == 2 * 3 * 8 * 8 * 4  # default budget: half the free RAM


@pytest.mark.parametrize("source", ["folder", "mp4", "webm"])
def test_reading_refuses_clips_that_do_not_fit(clip: VideoClip, tmp_path: Path, source: str) -> None:
    if source == "folder":
        path = tmp_path / "f"
        write_frames(clip.frames, path)
    else:
        path = write_video(clip.frames, tmp_path / f"c.{source}")
    per_frame = 3 * 64 * 64 * (1 + 4)  # uint8 decode buffer + float32 output
    with pytest.raises(ValueError, match="at most 4 frames fit"):
        read_video(path, memory_budget_bytes=4 * per_frame + 1)
    assert read_video(path, max_frames=4, memory_budget_bytes=4 * per_frame + 1).num_frames == 4


def test_known_frame_count_is_refused_before_decoding_the_clip(clip, tmp_path, monkeypatch) -> None:
    path = write_video(clip.frames, tmp_path / "c.mp4")  # mp4 stores its frame count
    converted = []
    real_convert = video._to_rgb_uint8
    monkeypatch.setattr(video, "_to_rgb_uint8", lambda frame: converted.append(1) or real_convert(frame))
    with pytest.raises(ValueError, match="at most 4 frames fit"):
        read_video(path, memory_budget_bytes=4 * 3 * 64 * 64 * 5 + 1)
    assert len(converted) == 1


# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------


def test_failing_video_writer_leaves_no_partial_file(clip, tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")

    def half_then_fail(frames, path, *args):
        Path(path).write_bytes(b"half an mp4")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_write, "_encode", half_then_fail)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(clip.frames, target)
    assert target.read_bytes() == b"previous result"
    assert _leftovers(tmp_path) == ["out.mp4"]
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(clip.frames, tmp_path / "new.gif")
    assert _leftovers(tmp_path) == ["out.mp4"]


def test_failing_frame_writer_leaves_no_partial_folder(clip, tmp_path, monkeypatch) -> None:
    written = []
    real_save = video_write.write_png

    def fail_on_third(image, path):
        if len(written) == 2:
            raise OSError("disk full")
        real_save(image, path)
        written.append(path)

    monkeypatch.setattr(video_write, "write_png", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        write_frames(clip.frames, tmp_path / "frames")
    assert _leftovers(tmp_path) == []
    written[:] = ["a", "b"]  # the next save fails
    with pytest.raises(OSError, match="disk full"):
        save_frame_grid(clip.frames, tmp_path / "grid.png")
    assert _leftovers(tmp_path) == []
