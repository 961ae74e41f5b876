"""Region editing (App. B.1): window weights from any layout, CSD-Edit as the one-region case, early errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from csd_exp.data import ImageSource
from csd_exp.data.images import save_image
from csd_exp.distill import Guidance
from csd_exp.priors import ExactScorePrior
from csd_exp.tasks import PanoramaRegionTask, PanoramaTask, RunInputs, WindowGrid
from csd_exp.tasks.panorama.region import Region, normalised_weights, region_coverage, window_overlaps

POP_ART, NIGHT, VINTAGE, SUNSET = (
    "turn it into a pop-art painting",
    "make it night",
    "make it vintage",
    "make it sunset",
)
HALVES = [
    {"prompt": POP_ART, "box": [0.0, 0.0, 1.0, 0.5], "units": "fraction"},
    {"prompt": NIGHT, "box": [0.0, 0.5, 1.0, 0.5], "units": "fraction"},
]


def _weights(regions, image_size, canvas, grid, scale=1):
    coverage = torch.stack([region_coverage(region, image_size, canvas) for region in regions])
    boxes = [(top * scale, left * scale, grid.size * scale, grid.size * scale) for top, left in grid.origins]
    return coverage, normalised_weights(window_overlaps(coverage, grid, scale), boxes, canvas)


def test_pixel_coverage_and_window_weights_on_a_hand_computed_layout():
    # A 4 x 10 px canvas, windows of 4 at stride 2 (columns 0, 2, 4, 6). Region 0 ends half-way through
    # pixel column 3 (a 3.5 px box); region 1 starts there (35 % of 10 px, as a fraction).
    regions = [Region(0, POP_ART, box=(0, 0, 4, 3.5), units="pixels"), Region(1, NIGHT, box=(0, 0.35, 1, 0.65))]
    coverage, weights = _weights(regions, (4, 10), (4, 10), WindowGrid(4, 10, 4, 2))
    assert coverage[0, 0].tolist() == [1, 1, 1, 0.5, 0, 0, 0, 0, 0, 0]
    assert coverage[1, 3].tolist() == [0, 0, 0, 0.5, 1, 1, 1, 1, 1, 1]
    expected = [[3.5 / 4, 0.5 / 4], [1.5 / 4, 2.5 / 4], [0, 1], [0, 1]]
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_overlapping_regions_share_a_window_and_pixel_boxes_follow_the_resize():
    # Image 200 x 640 px on a 8 x 24 canvas: the pixel box [0, 0, 200, 320] is the canvas' left half.
    regions = [Region(0, POP_ART, box=(0, 0, 1, 1)), Region(1, NIGHT, box=(0, 0, 200, 320), units="pixels")]
    coverage, weights = _weights(regions, (200, 640), (8, 24), WindowGrid(8, 24, 8, 4))
    assert coverage[1].sum() == 8 * 12 and coverage[1][:, 12:].sum() == 0
    # windows at columns 0, 4, 8, 12, 16: the left half's overlap is 1, 1, 0.5, 0, 0 of each window
    torch.testing.assert_close(weights[:, 1], torch.tensor([0.5, 0.5, 1 / 3, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5, dtype=torch.float64))


def test_four_equal_strips_of_the_official_canvas_give_its_weight_table():
    # csdedit_image_region.py: 1920 x 512 px = 240 x 64 latent px (VAE factor 8), 12 windows of 64 at stride
    # 16; window j spans latent columns [16 j, 16 j + 64), strip k spans [60 k, 60 k + 60).
    regions = [Region(k, POP_ART, box=(0, k / 4, 1, 0.25)) for k in range(4)]
    _, weights = _weights(regions, (512, 1920), (512, 1920), WindowGrid(64, 240, 64, 16), scale=8)
    overlap = lambda j, k: max(0, min(16 * j + 64, 60 * k + 60) - max(16 * j, 60 * k)) / 64
    expected = torch.tensor([[overlap(j, k) for k in range(4)] for j in range(12)], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert weights[0].tolist() == [0.9375, 0.0625, 0, 0] and weights[4].tolist() == [0, 0.875, 0.125, 0]


def _guidance():
    return Guidance("source_branch", kernel="rbf", guidance_scale=1.5, image_guidance_scale=1.5)  # CSD-Edit


def _task(cls=PanoramaRegionTask, data=None, **overrides):
    kwargs = dict(
        prompt=POP_ART,
        data=data or ImageSource(path="sample:rocket", short_side=32),
        window_size=16,
        window_stride=8,
        windows_per_step=3,
        seed=5,
    )
    kwargs.update(overrides)
    kwargs["inputs"] = RunInputs(**{k: kwargs.pop(k) for k in ("prompt", "seed", "max_steps") if k in kwargs})
    task = cls(ExactScorePrior(), _guidance(), optimizer=lambda params: torch.optim.SGD(params, lr=1.0), **kwargs)
    task.setup("fit")
    return task


def test_one_region_over_the_whole_image_is_csd_edit_bit_for_bit():
    plain = _task(PanoramaTask)
    region = _task(regions=[{"box": [0, 0, 1, 1]}])  # no prompt: the run's
    for step in range(3):
        a, b = plain.distillation_step(step), region.distillation_step(step)
        a.loss.backward()
        b.loss.backward()
        assert torch.equal(a.gradients, b.gradients) and a.diagnostics == b.diagnostics
    assert torch.equal(plain.canvas.grad, region.canvas.grad)
    assert region.final_result().mode_names == plain.final_result().mode_names


def _write(tmp_path, name, image):
    return str(save_image(image, tmp_path / name))


def test_three_regions_on_a_non_default_image_size(tmp_path):
    generator = torch.Generator().manual_seed(0)
    image = _write(tmp_path, "wide.png", torch.rand(3, 90, 300, generator=generator))
    mask = torch.zeros(3, 90, 300)
    mask[:, :, 100:200] = 1.0  # white = the middle third
    regions = [
        {"prompt": VINTAGE, "box": [0, 0, 90, 100], "units": "pixels"},
        {"prompt": SUNSET, "mask": _write(tmp_path, "middle.png", mask)},
        {"prompt": NIGHT, "box": [0.0, 2 / 3, 1.0, 1 / 3]},
    ]
    task = _task(data=ImageSource(path=image, short_side=24), window_size=8, window_stride=4, regions=regions)
    assert (task.grid.height, task.grid.width, len(task.grid)) == (24, 80, 95)
    torch.testing.assert_close(task.region_weights.sum(dim=1), torch.ones(95))
    assert task.prompts == [VINTAGE, SUNSET, NIGHT] and task.prompt_weights.shape == (95, 3)
    middle = task.grid.origins.index((0, 36))  # latent columns 36..44 lie in the mask's 33.3..66.7
    assert task.region_weights[middle].tolist() == [0.0, 1.0, 0.0]
    for step in range(2):
        task.distillation_step(step).loss.backward()
    metrics = task.final_result().metrics
    for k, modes in enumerate((["sepia", "cyanotype"], ["orange_glow", "pink_glow"], ["midnight_blue", "teal"])):
        assert 0.0 < metrics[f"region/{k}/consistency/mode_agreement"] <= 1.0
        assert all(f"region/{k}/consistency/mode_fraction/{mode}" in metrics for mode in modes)
    assert task.mode_responsibilities() is None  # instructions with different modes: per region only


class _NotLoaded(ImageSource):
    """An image source whose pixels must not be read: the region checks come first."""

    def load(self, min_size=None):
        raise AssertionError("the image was loaded before the regions were checked")


def _refused(regions, data=None, **overrides):
    data = data or _NotLoaded(path="sample:rocket", short_side=8)
    with pytest.raises(ValueError) as error:
        _task(data=data, regions=regions, **{"window_size": 8, "window_stride": 4, **overrides})
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_window_no_region_covers_is_named_with_its_pixel_box():
    # Canvas 8 x 24, windows every 4 px: the one at column 8 lies between the two quarters.
    message = _refused([{"box": [0, 0, 1, 0.25]}, {"prompt": NIGHT, "box": [0, 0.75, 1, 0.25]}])
    assert "window 2" in message and "[0, 8, 8, 8]" in message and "8x24 px canvas" in message
    assert "cover" in message


@pytest.mark.parametrize(
    "box, units",
    [([0.0, 0.6, 1.0, 0.5], "fraction"), ([0, 600, 200, 100], "pixels"), ([-0.1, 0, 0.5, 0.5], "fraction")],
)
def test_a_region_outside_the_image_names_the_image_size(box, units):
    message = _refused([{"box": box, "units": units}])
    assert "outside the 200x640 px" in message and f"({units})" in message


def test_an_unknown_instruction_is_the_priors_own_error():
    message = _refused([{"prompt": "make it purple", "box": [0, 0, 1, 1]}])
    assert "does not know the instruction 'make it purple'" in message


def test_a_mask_of_the_wrong_size_names_both_sizes(tmp_path):
    mask = _write(tmp_path, "small.png", torch.ones(3, 100, 320))
    message = _refused([{"mask": mask}])
    assert "100x320" in message and "200x640" in message


@pytest.mark.parametrize(
    "regions, needle",
    [
        ([{"box": [0, 0, 1, 1], "mask": "m.png"}], "exactly one of box"),
        ([{"bx": [0, 0, 1, 1]}], "unknown key"),
        ([{"box": [0, 0, 1]}], "4 finite numbers"),
        ([{"box": [0, 0, 1, 1], "units": "percent"}], "fraction, pixels"),
        ([], "non-empty list"),
    ],
)
def test_malformed_regions_are_refused_naming_the_fix(regions, needle):
    assert needle in _refused(regions)


def test_a_forced_canvas_must_tile():
    assert "multiples of 4 px" in _refused(None, canvas_size=[10, 24])


def test_the_experiment_runs_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "csd_exp.cli",
            "experiment=panorama_region_exact_cpu",
            "debug=smoke",
            f"paths.output_dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    metrics = summary["metrics"]
    for k, mode in ((0, "hue_72"), (1, "teal")):
        assert 0.0 < metrics[f"region/{k}/consistency/mode_agreement"] <= 1.0
        assert f"region/{k}/consistency/mode_fraction/{mode}" in metrics
    assert "consistency/mode_agreement" not in metrics and "fidelity/psnr" in metrics
    assert (run_dir / "edited.png").is_file()
    layout = json.loads((run_dir / "regions.json").read_text())
    assert [window["weights"] for window in layout["windows"]][2] == [0.5, 0.5]
