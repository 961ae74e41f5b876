"""``csd-exp-eval``: score any source / edited pair with the same metrics and keys as a CSD run.

For baselines produced elsewhere (FateZero, Pix2Video, Instruct-NeRF2NeRF renders, IP2P outputs),
so that they land in the same table as our runs::

    csd-exp-eval --source data/lucia/ --edited fatezero/lucia.mp4 \\
        --source-text "" --target-text "make it a painting of Claude Monet" --resize 512x512 --out runs/fatezero_lucia

PATH (``--source`` / ``--edited``) is an image file, a folder of frames (png/jpg/..., natural sort
order: ``frame_2`` before ``frame_10``) or a video (mp4/webm/mov/mkv/avi through PyAV, gif through
Pillow). Both must have the same number of frames; sizes must match unless ``--resize HxW`` resizes
both. Writes ``OUT/summary.json`` (``"metrics"`` under the keys of ``csd_exp.metrics.keys``, plus
``"inputs"``, ``"unavailable"`` with the reason for each metric left out, and ``"settings"``) and
prints a table. ``summary.json`` is strict JSON: a non-finite value (the PSNR of identical images is
infinite) is written as null, with its reason under ``"non_finite"`` (``{"fidelity/psnr": "inf: identical
images (zero error)"}``). Unreadable or mismatched inputs stop with an error naming the file (exit code 2).

The hub is treated as offline (``HF_HUB_OFFLINE=1``) unless ``--allow-download`` is given, so a
machine without the CLIP weights reports the weight-free metrics instead of waiting on the network.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from csd_exp.infra.summary import json_safe

logger = logging.getLogger("csd_exp.eval")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


class InputError(ValueError):
    """A problem with the files given on the command line; the message names the file."""


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _to_rgb_float(array: np.ndarray, origin: str) -> torch.Tensor:
    """(H, W), (H, W, 1|3|4) uint8/uint16/float -> (3, H, W) float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"{origin}: unsupported pixel layout {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        scaled = array.astype(np.float32)
    else:
        raise InputError(f"{origin}: unsupported pixel type {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1).clamp(0.0, 1.0)


def _read_image(path: Path) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] through the project's one image reader (16-bit and float files scaled right)."""
    from csd_exp.data.images import read_rgb

    try:
        array = read_rgb(path, what="image")
    except ValueError as error:  # the message already names the file
        raise InputError(str(error)) from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _read_video(path: Path) -> torch.Tensor:
    import imageio.v3 as iio

    try:
        if path.suffix.lower() == ".gif":
            frames = iio.imread(path, index=None)
        else:
            frames = iio.imread(path, plugin="pyav")
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot read video {path}: {error}") from error
    frames = np.asarray(frames)
    if frames.ndim == 3:  # one frame (H, W, C) or greyscale frames (F, H, W)
        frames = frames[None] if frames.shape[-1] in (3, 4) else frames[..., None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise InputError(f"video {path} has no frames (decoded shape {frames.shape})")
    return torch.stack([_to_rgb_float(frame, f"{path} frame {index}") for index, frame in enumerate(frames)])


def load_frames(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """Read an image, a folder of frames or a video as (F, 3, H, W) in [0, 1]; also return the frame names."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(
            (item for item in path.iterdir() if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural_key,
        )
        if not files:
            raise InputError(f"folder {path} holds no frames ({', '.join(IMAGE_SUFFIXES)})")
        frames = []
        for file in files:
            frame = _read_image(file)
            if frames and frame.shape != frames[0].shape:
                raise InputError(
                    f"frame {file} is {frame.shape[2]}x{frame.shape[1]} (WxH) but {files[0]} is "
                    f"{frames[0].shape[2]}x{frames[0].shape[1]}; all frames of a folder must have one size"
                )
            frames.append(frame)
        return torch.stack(frames), [str(file) for file in files]
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path)[None], [str(path)]
    if suffix in VIDEO_SUFFIXES:
        frames = _read_video(path)
        return frames, [f"{path}#{index}" for index in range(frames.shape[0])]
    raise InputError(
        f"{path}: unknown file type {suffix!r}; expected an image ({IMAGE_SUFFIXES}), a video "
        f"({VIDEO_SUFFIXES}) or a folder of frames"
    )


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 512x512, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _parse_windows(text: str) -> list[tuple[int, int, int, int]]:
    windows = []
    for part in filter(None, (chunk.strip() for chunk in text.split(";"))):
        values = [value.strip() for value in part.split(",")]
        if len(values) != 4 or not all(re.fullmatch(r"\d+", value) for value in values):
            raise argparse.ArgumentTypeError(f"window {part!r} must be 'top,left,height,width' in pixels")
        windows.append(tuple(int(value) for value in values))
    if not windows:
        raise argparse.ArgumentTypeError("no windows given")
    return windows


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from csd_exp.data.resample import resize_frames

    if tuple(frames.shape[-2:]) == size:
        return frames
    return resize_frames(frames, *size, mode="bilinear")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csd-exp-eval",
        description="Score a source / edited pair (image, folder of frames or video) with csd-exp's metrics.",
    )
    parser.add_argument("--source", required=True, help="source image, folder of frames, or video")
    parser.add_argument("--edited", required=True, help="edited image, folder of frames, or video")
    parser.add_argument(
        "--source-text", default="", help="y_source for clip/directional ('' in instruction mode, or a source caption)"
    )
    parser.add_argument(
        "--target-text", required=True, help="y_target for clip/directional (the instruction, or a target caption)"
    )
    parser.add_argument("--out", default=".", help="folder for summary.json (created; default: current folder)")
    # Unset options keep conf/metrics/default.yaml's values, the node a run builds its evaluator from.
    parser.add_argument("--clip-model", default=None, help="OpenCLIP architecture (default: ViT-bigG-14)")
    parser.add_argument(
        "--clip-pretrained",
        default=None,
        help="open_clip tag, local checkpoint file/folder, or 'none' to skip CLIP (default: laion2b_s39b_b160k)",
    )
    parser.add_argument(
        "--lpips-net", default=None, choices=("alex", "vgg", "squeeze", "none"), help="LPIPS backbone (default: alex)"
    )
    parser.add_argument(
        "--resize", type=_parse_size, default=None, metavar="HxW", help="resize both inputs to HEIGHTxWIDTH"
    )
    parser.add_argument(
        "--sequence",
        choices=("auto", "yes", "no"),
        default="auto",
        help="score consecutive-frame consistency (auto: when there are 2 or more frames)",
    )
    parser.add_argument(
        "--windows",
        type=_parse_windows,
        default=None,
        metavar="T,L,H,W;...",
        help="panorama windows in pixels (after --resize) for consistency/seam_error",
    )
    parser.add_argument(
        "--flow",
        default=None,
        metavar="FILE.npy",
        help="flow (F-1, 2, H, W) in pixels mapping frame i+1 to frame i, for consistency/warp_error",
    )
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--clip-batch-size", type=int, default=None, help="images per CLIP forward (default: 8)")
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let open_clip download missing weights (otherwise HF_HUB_OFFLINE=1)",
    )
    return parser


def _format_table(metrics: dict[str, float], unavailable: dict[str, str]) -> str:
    from csd_exp.metrics.keys import ALL_METRIC_KEYS, HIGHER_IS_BETTER

    rows = [("metric", "value", "better")]
    for key in ALL_METRIC_KEYS:
        if key in metrics:
            rows.append((key, f"{metrics[key]:.4f}", "higher" if HIGHER_IS_BETTER[key] else "lower"))
    for key in ALL_METRIC_KEYS:
        if key in unavailable:
            rows.append((key, "-", f"skipped: {unavailable[key]}"))
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    return "\n".join(f"{name:<{width}}  {value:>{value_width}}  {note}" for name, value, note in rows)


def metrics_node(args: argparse.Namespace):
    """The run's ``metrics`` node (conf/metrics/default.yaml) with this command line's settings."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    node = OmegaConf.create((files("csd_exp.conf") / "metrics" / "default.yaml").read_text())
    node.device = args.device
    if args.lpips_net is not None:
        node.lpips_net = None if args.lpips_net == "none" else args.lpips_net
    if args.clip_pretrained is not None and str(args.clip_pretrained).lower() == "none":
        node.clip = None
        return node
    settings = {
        "model_name": args.clip_model,
        "pretrained": args.clip_pretrained,
        "batch_size": args.clip_batch_size,
        "allow_download": args.allow_download,
    }
    node.clip.merge_with({key: value for key, value in settings.items() if value is not None})
    return node


def run(args: argparse.Namespace) -> dict:
    """Score the pair described by parsed ``args``; write and return the summary dict."""
    if not args.allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from csd_exp import __version__
    from csd_exp.metrics.keys import CLIP_CONSISTENCY, LPIPS_CONSECUTIVE, MODE_AGREEMENT, SEAM_ERROR, WARP_ERROR

    source, source_names = load_frames(args.source)
    edited, edited_names = load_frames(args.edited)
    if source.shape[0] != edited.shape[0]:
        raise InputError(
            f"{args.source} has {source.shape[0]} frames but {args.edited} has {edited.shape[0]}; "
            "the frames must correspond one to one"
        )
    if args.resize is not None:
        source, edited = _resize(source, args.resize), _resize(edited, args.resize)
    elif source.shape[-2:] != edited.shape[-2:]:
        raise InputError(
            f"{args.source} frames are {source.shape[-1]}x{source.shape[-2]} (WxH) but {args.edited} frames are "
            f"{edited.shape[-1]}x{edited.shape[-2]}; pass --resize HxW to compare them at one size"
        )
    sequence = {"yes": True, "no": False, "auto": source.shape[0] >= 2}[args.sequence]
    if sequence and source.shape[0] < 2:
        raise InputError(f"--sequence yes needs at least 2 frames; {args.source} has {source.shape[0]}")

    flow = None
    if args.flow is not None:
        try:
            flow = torch.from_numpy(np.load(args.flow)).float()
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read flow {args.flow}: {error}") from error
        expected = (source.shape[0] - 1, 2, *source.shape[-2:])
        if tuple(flow.shape) != expected:
            raise InputError(f"flow {args.flow} has shape {tuple(flow.shape)}, expected (F-1, 2, H, W) = {expected}")

    from csd_exp.run import instantiate_clearly

    node = metrics_node(args)  # built as a run builds its evaluator
    evaluator = instantiate_clearly(node, source_text=args.source_text, target_text=args.target_text)
    clip, lpips_net = evaluator.clip, node.lpips_net
    if node.clip is None:
        evaluator.unavailable.update(
            {key: "--clip-pretrained none" for key in evaluator.unavailable if key.startswith("clip/")}
        )
    try:
        metrics = evaluator.evaluate(source, edited, sequence=sequence, motion=flow, windows=args.windows)
    except ValueError as error:
        raise InputError(f"{args.edited}: {error}") from error

    unavailable = dict(evaluator.unavailable)
    if not sequence:
        for key in (CLIP_CONSISTENCY, LPIPS_CONSECUTIVE):
            unavailable.setdefault(key, "not a sequence (one frame, or --sequence no)")
    if args.windows is None:
        unavailable.setdefault(SEAM_ERROR, "no --windows")
    if flow is None:
        unavailable.setdefault(WARP_ERROR, "no --flow")
    unavailable.setdefault(MODE_AGREEMENT, "needs the exact-score prior's mode responsibilities")
    unavailable = {key: reason for key, reason in unavailable.items() if key not in metrics}

    import open_clip
    import torchmetrics

    summary = {
        "metrics": metrics,
        "unavailable": unavailable,
        "inputs": {
            "source": str(Path(args.source).resolve()),
            "edited": str(Path(args.edited).resolve()),
            "num_frames": int(source.shape[0]),
            "height": int(source.shape[-2]),
            "width": int(source.shape[-1]),
            "resized_to": list(args.resize) if args.resize is not None else None,
            "source_frames": source_names,
            "edited_frames": edited_names,
            "source_text": args.source_text,
            "target_text": args.target_text,
            "sequence": sequence,
            "windows": [list(window) for window in args.windows] if args.windows else None,
            "flow": str(Path(args.flow).resolve()) if args.flow else None,
        },
        "settings": {
            "clip_model": node.clip.model_name if clip is not None else None,
            "clip_pretrained": node.clip.pretrained if clip is not None else None,
            "lpips_net": lpips_net if evaluator.lpips is not None else None,
        },
        "versions": {
            "csd_exp": __version__,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "open_clip": open_clip.__version__,
        },
    }
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    except OSError as error:
        raise InputError(f"cannot write {out_dir / 'summary.json'}: {error}") from error
    print(_format_table(metrics, unavailable))
    print(f"wrote {out_dir / 'summary.json'}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as error:
        print(f"csd-exp-eval: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
