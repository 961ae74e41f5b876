"""``csd-exp-eval`` on generated folders, videos and images; bad inputs give errors naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from metrics_test_support import TINY_CLIP_NAME, write_fake_lpips_backbone

from csd_exp.eval import load_frames, main
from csd_exp.metrics import keys


def _frames(count: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients plus a little noise, uint8 (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for index in range(count):
        red = 0.5 + 0.4 * np.sin((xs + 2 * index) / 7.0)
        green = 0.5 + 0.4 * np.cos(ys / 5.0)
        blue = np.full_like(xs, 0.3 + 0.1 * index / max(count, 1))
        image = np.stack([red, green, blue], axis=-1) + 0.02 * rng.standard_normal((height, width, 3))
        frames.append((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(frames)


def _write_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        # natural order: frame_2 must come before frame_10
        iio.imwrite(folder / f"frame_{index * 5}.png", frame)
    return folder


def _run(tmp_path: Path, *arguments: str) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    code = main([*arguments, "--out", str(out)])
    summary_path = out / "summary.json"
    return code, (json.loads(summary_path.read_text()) if summary_path.exists() else None)


def test_folders_with_tiny_clip_and_lpips_give_every_sequence_key(tmp_path, tiny_clip_checkpoint, monkeypatch):
    checkpoint, _ = tiny_clip_checkpoint
    write_fake_lpips_backbone(tmp_path / "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    source = _write_folder(tmp_path / "source", _frames(12))
    edited = _write_folder(tmp_path / "edited", _frames(12)[..., ::-1])  # channel swap as the "edit"
    code, summary = _run(
        tmp_path,
        "--source",
        str(source),
        "--edited",
        str(edited),
        "--source-text",
        "a photo",
        "--target-text",
        "a blue painting",
        "--clip-model",
        TINY_CLIP_NAME,
        "--clip-pretrained",
        str(checkpoint),
        "--lpips-net",
        "squeeze",
    )
    assert code == 0
    expected = set(keys.CLIP_KEYS) | {keys.LPIPS_CONSECUTIVE, keys.FIDELITY_PSNR, keys.FIDELITY_SSIM}
    assert set(summary["metrics"]) == expected
    assert set(summary["unavailable"]) == {keys.SEAM_ERROR, keys.WARP_ERROR, keys.MODE_AGREEMENT}
    inputs = summary["inputs"]
    assert inputs["num_frames"] == 12 and (inputs["height"], inputs["width"]) == (32, 48)
    assert [Path(name).name for name in inputs["source_frames"][:3]] == ["frame_0.png", "frame_5.png", "frame_10.png"]
    assert inputs["target_text"] == "a blue painting" and inputs["sequence"] is True
    assert summary["settings"]["clip_pretrained"] == str(checkpoint)


def test_offline_default_skips_clip_and_lpips_but_scores_the_rest(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    frames = _frames(4)
    source = _write_folder(tmp_path / "source", frames)
    edited = _write_folder(tmp_path / "edited", np.roll(frames, 1, axis=2))
    flow = np.zeros((3, 2, 32, 48), dtype=np.float32)
    np.save(tmp_path / "flow.npy", flow)
    code, summary = _run(
        tmp_path,
        "--source",
        str(source),
        "--edited",
        str(edited),
        "--target-text",
        "make it red",
        "--flow",
        str(tmp_path / "flow.npy"),
        "--windows",
        "0,0,32,24;0,12,32,24;0,24,32,24",
    )
    assert code == 0
    assert set(summary["metrics"]) == {keys.FIDELITY_PSNR, keys.FIDELITY_SSIM, keys.WARP_ERROR, keys.SEAM_ERROR}
    for key in (*keys.CLIP_KEYS, keys.LPIPS_CONSECUTIVE):
        assert key not in summary["metrics"] and key in summary["unavailable"]
    assert summary["settings"]["clip_model"] is None


def test_video_against_gif_and_resize(tmp_path):
    frames = _frames(6, height=32, width=48)
    video = tmp_path / "source.mp4"
    iio.imwrite(video, frames, plugin="pyav", codec="libx264", fps=8)
    gif = tmp_path / "edited.gif"
    iio.imwrite(gif, _frames(6, height=40, width=40, seed=1), duration=100, loop=0)
    loaded, names = load_frames(video)
    assert loaded.shape == (6, 3, 32, 48) and names[0].endswith("source.mp4#0")
    assert load_frames(gif)[0].shape == (6, 3, 40, 40)

    code = main(
        [
            "--source",
            str(video),
            "--edited",
            str(gif),
            "--target-text",
            "x",
            "--clip-pretrained",
            "none",
            "--lpips-net",
            "none",
            "--out",
            str(tmp_path / "no_resize"),
        ]
    )
    assert code == 2  # sizes differ and no --resize
    code, summary = _run(
        tmp_path,
        "--source",
        str(video),
        "--edited",
        str(gif),
        "--target-text",
        "x",
        "--clip-pretrained",
        "none",
        "--lpips-net",
        "none",
        "--resize",
        "24x36",
    )
    assert code == 0
    assert (summary["inputs"]["height"], summary["inputs"]["width"]) == (24, 36)
    assert summary["inputs"]["resized_to"] == [24, 36]
    assert summary["unavailable"][keys.CLIP_DIRECTIONAL] == "--clip-pretrained none"


def test_single_panorama_images_with_windows(tmp_path):
    source = _frames(1, height=32, width=96)[0]
    edited = source.copy()
    edited[:, 48:] = np.clip(edited[:, 48:].astype(int) + 40, 0, 255).astype(np.uint8)  # a seam at x = 48
    iio.imwrite(tmp_path / "source.png", source)
    iio.imwrite(tmp_path / "edited.jpg", edited, quality=95)
    code, summary = _run(
        tmp_path,
        "--source",
        str(tmp_path / "source.png"),
        "--edited",
        str(tmp_path / "edited.jpg"),
        "--target-text",
        "x",
        "--clip-pretrained",
        "none",
        "--lpips-net",
        "none",
        "--windows",
        "0,0,32,48;0,48,32,48",
    )
    assert code == 0
    assert summary["inputs"]["sequence"] is False and summary["inputs"]["num_frames"] == 1
    assert summary["metrics"][keys.SEAM_ERROR] > 0.05
    assert keys.CLIP_CONSISTENCY in summary["unavailable"]


def _refuse_constant(name: str):
    raise ValueError(f"summary.json holds {name}, which is not JSON")


def test_identical_images_write_valid_json_with_the_infinite_psnr_as_null(tmp_path):
    iio.imwrite(tmp_path / "source.png", _frames(1)[0])
    out = tmp_path / "out"
    arguments = ["--source", str(tmp_path / "source.png"), "--edited", str(tmp_path / "source.png")]
    code = main(
        [*arguments, "--target-text", "x", "--clip-pretrained", "none", "--lpips-net", "none", "--out", str(out)]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_refuse_constant)
    assert summary["metrics"][keys.FIDELITY_PSNR] is None
    assert summary["non_finite"] == {keys.FIDELITY_PSNR: "inf: identical images (zero error)"}
    assert summary["metrics"][keys.FIDELITY_SSIM] == 1.0  # the finite metrics are kept as they are


def test_bad_inputs_name_the_file(tmp_path, capsys):
    good = _write_folder(tmp_path / "good", _frames(3))
    short = _write_folder(tmp_path / "short", _frames(2))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    broken = _write_folder(tmp_path / "broken", _frames(3))
    (broken / "frame_5.png").write_bytes(b"this is not a png")
    mixed = _write_folder(tmp_path / "mixed", _frames(3))
    iio.imwrite(mixed / "frame_99.png", _frames(1, height=16, width=16)[0])
    common = ["--target-text", "x", "--clip-pretrained", "none", "--lpips-net", "none", "--out", str(tmp_path / "o")]

    cases = [
        (short, f"{good} has 3 frames but {short} has 2"),
        (empty, f"folder {empty} holds no frames"),
        (broken, f"cannot read image {broken / 'frame_5.png'}"),
        (mixed, f"frame {mixed / 'frame_99.png'} is 16x16"),
        (tmp_path / "missing.mp4", f"{tmp_path / 'missing.mp4'} does not exist"),
    ]
    for edited, message in cases:
        assert main(["--source", str(good), "--edited", str(edited), *common]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    assert main(["--source", str(good), "--edited", str(tmp_path / "clip.mp4"), *common]) == 2
    assert f"cannot read video {tmp_path / 'clip.mp4'}" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_console_script_offline_logs_one_line_per_skipped_model(tmp_path):
    source = tmp_path / "a.png"
    iio.imwrite(source, _frames(1)[0])
    script = Path(sys.executable).with_name("csd-exp-eval")
    assert script.exists(), "the package's console script is not installed in this environment"
    environment = {
        key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    environment.update({"HF_HOME": str(tmp_path / "hf_home"), "TORCH_HOME": str(tmp_path / "torch_home")})
    completed = subprocess.run(
        [
            str(script),
            "--source",
            str(source),
            "--edited",
            str(source),
            "--target-text",
            "x",
            "--lpips-net",
            "none",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    warning_lines = [line for line in completed.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning_lines) == 1 and "ViT-bigG-14/laion2b_s39b_b160k" in warning_lines[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert keys.CLIP_DIRECTIONAL not in summary["metrics"]
    # an identical "edit": PSNR is infinite, written as null with its reason (summary.json is strict JSON)
    assert summary["metrics"][keys.FIDELITY_PSNR] is None
    assert summary["non_finite"][keys.FIDELITY_PSNR].startswith("inf")
    assert "clip/directional" in completed.stdout and "skipped" in completed.stdout
