"""A still image with transparency: a warning by default, ``data.alpha_background`` composites it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from framework_support import compose_config
from PIL import Image

from csd_exp.data import ImageSource
from csd_exp.schema import ConfigError, validate_composed


def _rgba(path, opaque: bool = False):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 32, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    if not opaque:
        pixels[:, :16, 3] = 0  # the left half transparent, the rest half transparent
        pixels[:, 16:, 3] = 128
    Image.fromarray(pixels).save(path)  # (H, W, 4) uint8: RGBA
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def test_transparency_warns_and_keeps_the_colours_beneath(tmp_path, caplog):
    pixels = _rgba(tmp_path / "logo.png")
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.images"):
        image = ImageSource(path=str(tmp_path / "logo.png")).load()
    assert "transparent pixels" in caplog.text and "data.alpha_background=" in caplog.text
    torch.testing.assert_close(image, pixels[:3], rtol=0, atol=0)  # what was edited before: alpha dropped


def test_an_opaque_rgba_file_reads_silently(tmp_path, caplog):
    pixels = _rgba(tmp_path / "opaque.png", opaque=True)
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.images"):
        image = ImageSource(path=str(tmp_path / "opaque.png")).load()
    assert caplog.text == ""
    torch.testing.assert_close(image, pixels[:3], rtol=0, atol=0)


@pytest.mark.parametrize(
    "background, colour", [("white", (1, 1, 1)), ("black", (0, 0, 0)), ("#FF8000", (1, 128 / 255, 0))]
)
def test_alpha_background_composites_the_image_on_it(tmp_path, caplog, background, colour):
    pixels = _rgba(tmp_path / "logo.png")
    with caplog.at_level(logging.WARNING, logger="csd_exp.data.images"):
        image = ImageSource(path=str(tmp_path / "logo.png"), alpha_background=background).load()
    assert caplog.text == ""
    rgb, alpha = pixels[:3], pixels[3:]
    expected = rgb * alpha + torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) * (1 - alpha)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)  # float32 rounding of values in [0, 1]
    fully_transparent = image[:, :, :16]
    torch.testing.assert_close(
        fully_transparent, torch.tensor(colour).float().view(3, 1, 1).expand_as(fully_transparent)
    )


@pytest.mark.parametrize("value", ["pink", "#ff80", "ff8000"])
def test_a_bad_background_is_refused_at_compose_time_and_by_the_source(tmp_path, value):
    cfg = compose_config(["experiment=panorama_exact_cpu", f"data.alpha_background='{value}'"], tmp_path)
    with pytest.raises(ConfigError, match=r"data.alpha_background=.* white, black or '#rrggbb'"):
        validate_composed(cfg)
    with pytest.raises(ValueError, match="alpha_background=.* white, black or"):
        ImageSource(path="sample:rocket", alpha_background=value)


def test_a_hex_background_passes_the_schema(tmp_path):
    validate_composed(compose_config(["experiment=panorama_exact_cpu", "data.alpha_background='#00ff00'"], tmp_path))
