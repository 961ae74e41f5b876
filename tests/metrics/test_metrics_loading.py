"""CLIP / LPIPS loading: offline fallback (one warning, no hang), local checkpoints, preprocessing, config."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from metrics_test_support import TINY_CLIP_NAME, write_fake_lpips_backbone

from csd_exp.metrics import ClipEncoder, EditEvaluator, keys, load_clip, load_lpips
from csd_exp.run import instantiate_clearly
from csd_exp.schema import ConfigError, check_target

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "metrics"
# load_clip as these tests called it before its defaults moved to conf/metrics/default.yaml: downloads allowed
# by the caller, so that HF_HUB_OFFLINE=1 (tests/conftest.py) is what keeps them offline.
DOWNLOADS_ON = {"batch_size": 16, "allow_download": True}


def _warnings(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_missing_bigg_weights_offline_give_none_with_one_warning(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.INFO)
    started = time.perf_counter()
    encoder = load_clip("ViT-bigG-14", "laion2b_s39b_b160k", cache_dir=str(tmp_path / "empty_hf_cache"), **DOWNLOADS_ON)
    assert encoder is None
    assert time.perf_counter() - started < 5.0
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "ViT-bigG-14/laion2b_s39b_b160k" in message and "metrics.clip.pretrained=" in message
    assert "\n" not in message


def test_missing_local_checkpoint_and_none_give_none(caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    assert load_clip("ViT-bigG-14", str(tmp_path / "absent" / "open_clip_pytorch_model.bin"), **DOWNLOADS_ON) is None
    assert "does not exist" in _warnings(caplog)[-1].getMessage()
    assert load_clip("ViT-bigG-14", None, **DOWNLOADS_ON) is None
    assert len(_warnings(caplog)) == 2


def test_configuration_mistakes_raise():
    with pytest.raises(ValueError, match="unknown OpenCLIP architecture"):
        load_clip("ViT-Nonexistent-99", "laion2b_s39b_b160k", **DOWNLOADS_ON)
    with pytest.raises(ValueError, match="neither a known tag"):
        load_clip("ViT-bigG-14", "laion2b_typo", **DOWNLOADS_ON)


def test_tiny_clip_loads_from_a_local_checkpoint(tiny_clip_checkpoint):
    checkpoint, reference_model = tiny_clip_checkpoint
    encoder = load_clip(TINY_CLIP_NAME, str(checkpoint), batch_size=2, allow_download=True)
    assert isinstance(encoder, ClipEncoder)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 40, 56)
    embeddings = encoder.encode_images(images)
    assert embeddings.shape == (3, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    # same weights as the saved model, fed the same preprocessing
    with torch.no_grad():
        expected = F.normalize(reference_model.encode_image(encoder.preprocess(images)), dim=-1)
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)
    text = encoder.encode_text(["a photo of a cat", "a painting of a cat"])
    assert text.shape == (2, 16)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(text[0], text[1])


def test_preprocessing_matches_open_clip_shortest_side_crop(tiny_clip_checkpoint):
    checkpoint, _ = tiny_clip_checkpoint
    encoder = load_clip(TINY_CLIP_NAME, str(checkpoint), **DOWNLOADS_ON)
    assert encoder.image_size == (32, 32) and encoder.resize_mode == "shortest"
    # a 32x96 panorama: shorter side already 32 -> only the central 32x32 square is kept
    panorama = torch.zeros(1, 3, 32, 96)
    panorama[..., 32:64] = 1.0
    pixels = encoder.preprocess(panorama)
    mean, std = encoder.mean.view(3), encoder.std.view(3)
    torch.testing.assert_close(pixels[0, :, 0, 0], (1.0 - mean) / std)
    squash = ClipEncoder(
        encoder.model, encoder.tokenizer, image_size=32, mean=mean.tolist(), std=std.tolist(), resize_mode="squash"
    )
    assert squash.preprocess(panorama).shape == (1, 3, 32, 32)
    longest = ClipEncoder(
        encoder.model, encoder.tokenizer, image_size=32, mean=mean.tolist(), std=std.tolist(), resize_mode="longest"
    )
    padded = longest.preprocess(panorama)
    torch.testing.assert_close(padded[0, :, 0, 16], (0.0 - mean) / std)  # padding row, fill 0


def test_lpips_offline_gives_none_then_loads_from_the_torch_cache(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    caplog.set_level(logging.WARNING)
    assert load_lpips("squeeze") is None
    assert len(_warnings(caplog)) == 1 and "squeezenet1_1" in _warnings(caplog)[0].getMessage()
    write_fake_lpips_backbone(tmp_path / "torch_home")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    lpips = load_lpips("squeeze")
    assert lpips is not None
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 32, 32)
    evaluator = EditEvaluator(None, "squeeze")
    report = evaluator.evaluate(frames, frames, sequence=True)
    assert keys.LPIPS_CONSECUTIVE in report and report[keys.LPIPS_CONSECUTIVE] > 0
    # the per-pair values are torchmetrics' own LPIPS values
    expected = torch.stack([lpips(frames[i : i + 1], frames[i + 1 : i + 2]) for i in range(2)]).mean()
    assert report[keys.LPIPS_CONSECUTIVE] == pytest.approx(expected.item(), rel=1e-4)


def _compose(name: str, **root) -> dict:
    from omegaconf import OmegaConf

    config = OmegaConf.create({**root, "metrics": OmegaConf.load(CONF_DIR / f"{name}.yaml")})
    return OmegaConf.to_container(config, resolve=True)["metrics"]


def test_default_config_builds_and_skips_unavailable_metrics(caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    caplog.set_level(logging.WARNING)
    config = _compose("default", prompt="turn into Van Gogh style painting")
    assert config["clip"]["model_name"] == "ViT-bigG-14"
    assert "directional_text" not in config  # the texts are the run's source_prompt and prompt
    config["clip"]["cache_dir"] = str(tmp_path / "empty_hf_cache")
    evaluator = instantiate_clearly(config)  # as csd_exp.run builds it
    assert evaluator.clip is None and evaluator.lpips is None
    assert len(_warnings(caplog)) == 2  # one for CLIP, one for LPIPS
    torch.manual_seed(0)
    source = torch.rand(2, 3, 16, 16)
    report = evaluator.evaluate(source, source.flip(-1), sequence=True)
    assert set(report) == {keys.FIDELITY_PSNR, keys.FIDELITY_SSIM}
    assert set(evaluator.unavailable) == set(keys.CLIP_KEYS) | {keys.LPIPS_CONSECUTIVE}


def test_none_config_and_tiny_clip_config(tiny_clip_checkpoint):
    evaluator = instantiate_clearly(_compose("none"))
    assert evaluator.clip is None and evaluator.lpips is None
    checkpoint, _ = tiny_clip_checkpoint
    config = _compose("default")
    config["clip"].update(model_name=TINY_CLIP_NAME, pretrained=str(checkpoint), batch_size=2)
    config["lpips_net"] = None
    evaluator = instantiate_clearly(config)
    assert evaluator.clip.batch_size == 2
    torch.manual_seed(0)
    source = torch.rand(3, 3, 24, 24)
    report = evaluator.evaluate(
        source, (source * 0.5).clamp(0, 1), sequence=True, source_text="a photo", target_text="a painting"
    )
    assert set(keys.CLIP_KEYS) <= set(report)
    assert -1.0 <= report[keys.CLIP_DIRECTIONAL] <= 1.0
    # unknown keys are refused before anything is built (the compose-time check csd-exp runs)
    with pytest.raises(ConfigError, match="metrics.lpips is not a setting of EditEvaluator"):
        check_target("metrics", {**_compose("default"), "lpips": "alex"})
    with pytest.raises(ConfigError, match=r"metrics.clip.pretrained_path is not a setting of LoadClip"):
        check_target("metrics", {**_compose("default"), "clip": {**config["clip"], "pretrained_path": "x"}})


def test_a_tag_found_in_the_local_hub_cache_loads_offline(tiny_clip_checkpoint, tmp_path, monkeypatch):
    """The cache-first route: a tag whose weights sit in the HF cache loads with HF_HUB_OFFLINE=1,
    keeping the tag's own normalisation."""
    import shutil

    import open_clip.pretrained

    checkpoint, reference_model = tiny_clip_checkpoint
    tag_mean, tag_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        TINY_CLIP_NAME,
        {"cached_tag": {"url": "", "hf_hub": "csd-exp-test/tiny-clip/", "mean": tag_mean, "std": tag_std}},
    )
    repo_cache = tmp_path / "hub" / "models--csd-exp-test--tiny-clip"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(revision)
    snapshot = repo_cache / "snapshots" / revision
    snapshot.mkdir(parents=True)
    shutil.copy(checkpoint, snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    encoder = load_clip(TINY_CLIP_NAME, "cached_tag", cache_dir=str(tmp_path / "hub"), **DOWNLOADS_ON)
    assert encoder is not None
    torch.testing.assert_close(encoder.mean.view(3), torch.tensor(tag_mean))
    torch.testing.assert_close(encoder.std.view(3), torch.tensor(tag_std))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(reference_model.encode_image((images - 0.5) / 0.25), dim=-1)
    torch.testing.assert_close(encoder.encode_images(images), expected, rtol=1e-5, atol=1e-5)
    # the same tag without the cached file: None, not a download attempt
    assert load_clip(TINY_CLIP_NAME, "cached_tag", cache_dir=str(tmp_path / "other_hub"), **DOWNLOADS_ON) is None


def test_weight_resolvers_say_where_the_weights_are_without_loading(tiny_clip_checkpoint, tmp_path, caplog):
    from csd_exp.metrics.clip_weights import ClipWeights, resolve_clip_weights

    caplog.set_level(logging.WARNING)
    offline = {"cache_dir": None, "allow_download": False}
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_bytes(b"never read")  # resolving names the file; only the loader opens it
    assert resolve_clip_weights(TINY_CLIP_NAME, str(not_a_model), **offline) == ClipWeights(
        TINY_CLIP_NAME, str(not_a_model), f"{TINY_CLIP_NAME}/{not_a_model}"
    )
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "open_clip_config.json").write_text("{}")
    assert resolve_clip_weights(TINY_CLIP_NAME, str(saved), **offline).model_name == f"local-dir:{saved}"
    assert resolve_clip_weights(f"local-dir:{saved}", None, **offline).model_name == f"local-dir:{saved}"
    assert not _warnings(caplog)
    assert resolve_clip_weights(f"local-dir:{tmp_path / 'empty'}", None, **offline) is None
    assert resolve_clip_weights("hf-hub:org/model", None, **offline) is None
    assert resolve_clip_weights(TINY_CLIP_NAME, None, **offline) is None
    assert len(_warnings(caplog)) == 3 and all("CLIP metrics skipped" in r.getMessage() for r in _warnings(caplog))
