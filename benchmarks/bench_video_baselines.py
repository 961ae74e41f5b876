"""Peak memory and time per frame of the zero-shot video baselines against the CSD-Edit video step.

For N frames of the bundled clip, with the tiny random-weight pipelines (offline; the code path is real, the
sizes are not Stable Diffusion's):

* ``fatezero`` (task=video_fatezero): DDIM inversion with the attention store, then editing with fusion;
* ``pix2video`` (task=video_pix2video): inversion, then editing with anchor / previous-frame attention and the
  latent update;
* ``csd_edit`` (task=video, InstructPix2Pix, guidance=csd_edit): one CSD-Edit update of all N frames.

Time per frame is the wall time of the whole method (2 × steps UNet calls for the baselines, ``--csd-steps``
updates for CSD-Edit) divided by N and by the steps it took, so the columns compare one UNet pass per frame.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU it is not measured (``n/a``) and the
attention store's size (what FateZero keeps beyond a sampler) is reported instead.

Run: ``python -m benchmarks.bench_video_baselines [--frames 4 8] [--steps 10] [--frame-size 16]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import default_device, run_tables

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["source_prompt=a photo of a city street", "prompt=a watercolor photo of a city street"]


def _task(overrides: list[str], out: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from csd_exp.run import build_task

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return build_task(cfg)


def _measure(run, device: torch.device) -> tuple[float, float | None]:
    """(seconds, peak MiB or None) of ``run()``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None)


def bench(frames: int, steps: int, csd_steps: int, frame_size: int, cache: Path, device: torch.device) -> list[tuple]:
    common = [f"data.max_frames={frames}", f"task.frame_size={frame_size}", f"paths.cache_dir={cache}", *PROMPTS]
    rows = []
    for name, overrides in (
        ("fatezero", ["task=video_fatezero", "model=tiny_sd", "task.blend_words=[street]"]),
        ("pix2video", ["task=video_pix2video", "model=tiny_sd"]),
    ):
        task = _task([*overrides, *common, f"task.num_inference_steps={steps}"], cache / name)
        task.prior.to_device(device)
        task.configure_particles(device)
        store_peak = []

        def run(task=task, store_peak=store_peak):
            for index in range(2 * steps):
                task._advance(index, log_step=False)
                store = getattr(task, "store", None)
                store_peak.append(store.total_bytes if store is not None else 0)

        with torch.no_grad():
            seconds, peak = _measure(run, device)
        rows.append((name, frames, seconds / (frames * 2 * steps), peak, max(store_peak) / 2**20))
    task = _task(["task=video", "model=tiny_ip2p", "guidance=csd_edit", *common], cache / "csd")
    task.prior.to_device(device)
    task.to(device)
    task.configure_particles(device)

    def csd(task=task):
        for step in range(csd_steps):
            out = task.distillation_step(step)
            out.loss.backward()
            task.latents.grad = None

    seconds, peak = _measure(csd, device)
    rows.append(("csd_edit", frames, seconds / (frames * csd_steps), peak, 0.0))
    return rows


def frames_table(frames: int, steps: int, csd_steps: int, frame_size: int, cache: Path, device) -> None:
    for name, n, per_frame, peak, store in bench(frames, steps, csd_steps, frame_size, cache, device):
        shown = "n/a" if peak is None else f"{peak:.1f}"
        print(f"| {name} | {n} | {1000 * per_frame:.2f} | {shown} | {store:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the baselines (each way)")
    parser.add_argument("--csd-steps", type=int, default=10, help="CSD-Edit updates timed")
    parser.add_argument("--frame-size", type=int, default=16, help="latent px per frame side")
    args = parser.parse_args(argv)
    device = default_device()
    print(f"device {device}; tiny random-weight pipelines, {args.frame_size}x{args.frame_size} latents")
    print("| method | frames | ms per frame per UNet pass | peak CUDA MiB | attention store MiB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        sizes = (args.steps, args.csd_steps, args.frame_size, Path(cache), device)
        return run_tables(
            "bench_video_baselines",
            [(f"{frames} frames", functools.partial(frames_table, frames, *sizes)) for frames in args.frames],
        )


if __name__ == "__main__":
    sys.exit(main())
