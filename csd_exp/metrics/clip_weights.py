"""Where the CLIP metrics' weights come from: one small resolver per source, none of which loads a model.

``resolve_clip_weights(model_name, pretrained, ...)`` picks the resolver and returns ``ClipWeights`` (what
``open_clip.create_model`` is given) or None after the one-line skip note (``notes.note_skipped``):

- ``weights_from_hub_name``: an ``hf-hub:org/repo`` model name, fetched by open_clip (never offline);
- ``weights_from_local_dir``: a folder with ``open_clip_config.json`` (``local-dir:FOLDER``, or a folder
  given as ``pretrained``);
- ``weights_from_tag``: an open_clip tag (``laion2b_s39b_b160k``) whose file is in the local cache (Hugging
  Face hub cache, or ``~/.cache/clip`` for URL tags), or left to open_clip to download when downloads are on;
- ``weights_from_checkpoint``: a local checkpoint file for the architecture ``model_name``.

``clip_encoder.load_clip`` is the one loader over them. An unknown architecture or tag is a configuration
error and raises ``ValueError``; missing weights are not (the CLIP metrics are then absent, never 0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csd_exp.metrics.notes import DOCS, note_skipped

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ClipWeights:
    """What ``open_clip.create_model`` is given: the model name (an architecture, ``local-dir:`` or
    ``hf-hub:``), the weights (a file, a tag to download, or None when the name holds them), and the tag's
    settings a file path would lose (``force_preprocess_cfg`` / ``force_quick_gelu``)."""

    model_name: str
    pretrained: str | None
    description: str
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)


def skip_note(what: str) -> None:
    """One line: which CLIP weights are missing and the key that provides them; the rest is in the docs."""
    note_skipped(
        logger,
        f"CLIP metrics skipped: {what}; give metrics.clip.pretrained=PATH (csd-exp eval: --clip-pretrained), "
        f"see {DOCS}",
    )


def hub_offline(allow_download: bool) -> bool:
    """Downloads are off: ``allow_download`` is false, or the Hugging Face hub is offline (``HF_HUB_OFFLINE``)."""
    if not allow_download:
        return True
    from huggingface_hub import constants

    env_value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.is_offline_mode() or env_value in ("1", "true", "yes", "on")


def weights_from_hub_name(model_name: str, *, allow_download: bool) -> ClipWeights | None:
    """``hf-hub:org/repo``: open_clip fetches config and weights, so only with downloads on."""
    if hub_offline(allow_download):
        skip_note(f"{model_name} cannot be fetched with HF_HUB_OFFLINE=1")
        return None
    return ClipWeights(model_name, None, model_name)


def weights_from_local_dir(folder: str | Path, description: str | None = None) -> ClipWeights | None:
    """A saved open_clip model folder (``open_clip_config.json`` plus weights), through ``local-dir:``."""
    folder = Path(folder).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        skip_note(f"no open_clip_config.json in {folder}")
        return None
    return ClipWeights(f"local-dir:{folder}", None, description or f"local-dir:{folder}")


def cached_tag_file(tag_config: Mapping[str, Any], cache_dir: str | None) -> str | None:
    """Path of a tag's weights in the local cache, or None; never touches the network."""
    if tag_config.get("file"):
        return tag_config["file"] if os.path.isfile(tag_config["file"]) else None
    hf_hub = tag_config.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo_id, filename = os.path.split(hf_hub)
        candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth", ".pt")):
            candidates.insert(0, os.path.splitext(filename)[0] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_config.get("url", "")
    if url:
        clip_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        candidate = os.path.join(clip_cache, os.path.basename(url))
        if os.path.isfile(candidate):
            return candidate
    return None


def weights_from_tag(
    model_name: str, tag: str, tag_config: Mapping[str, Any], *, cache_dir: str | None, allow_download: bool
) -> ClipWeights | None:
    """An open_clip tag: its cached file, else the tag itself for open_clip to download (downloads on only).

    A file path loses the tag's preprocessing and activation settings, so they are passed on explicitly."""
    cached = cached_tag_file(tag_config, cache_dir)
    if cached is None and hub_offline(allow_download):
        skip_note(f"weights {model_name}/{tag} are not cached and downloads are off")
        return None
    create_kwargs: dict[str, Any] = {}
    preprocess = {key: tag_config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_config}
    if preprocess:
        create_kwargs["force_preprocess_cfg"] = preprocess
    if tag_config.get("quick_gelu", False):
        create_kwargs["force_quick_gelu"] = True
    return ClipWeights(model_name, cached or tag, f"{model_name}/{tag}", create_kwargs)


def weights_from_checkpoint(model_name: str, path: str | Path) -> ClipWeights | None:
    """A local checkpoint file for ``model_name`` (or a saved model folder); None with the note when absent."""
    description = f"{model_name}/{path}"
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            skip_note(f"no open_clip_config.json in checkpoint folder {path}")
            return None
        return ClipWeights(f"local-dir:{path}", None, description)
    if path.is_file():
        return ClipWeights(model_name, str(path), description)
    skip_note(f"CLIP checkpoint {path} does not exist")
    return None


def looks_like_path(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.startswith(("~", ".")) or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def resolve_clip_weights(
    model_name: str, pretrained: str | None, *, cache_dir: str | None, allow_download: bool
) -> ClipWeights | None:
    """The resolver for ``model_name`` / ``pretrained`` (module docstring); None after one note without weights.

    ``pretrained=None`` with a plain architecture means no CLIP weights are configured: random weights would
    give numbers that look real and mean nothing."""
    if model_name.startswith("hf-hub:"):
        return weights_from_hub_name(model_name, allow_download=allow_download)
    if model_name.startswith("local-dir:"):
        return weights_from_local_dir(model_name[len("local-dir:") :], description=model_name)
    if pretrained is None:
        skip_note(f"no CLIP weights configured for {model_name} (pretrained=None)")
        return None
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if open_clip.get_model_config(model_name) is None:
        raise ValueError(
            f"unknown OpenCLIP architecture {model_name!r}; known ones include "
            f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-'))[:300]}..."
        )
    tag_config = get_pretrained_cfg(model_name, pretrained)
    if tag_config:
        return weights_from_tag(model_name, pretrained, tag_config, cache_dir=cache_dir, allow_download=allow_download)
    if looks_like_path(pretrained):
        return weights_from_checkpoint(model_name, pretrained)
    tags = list_pretrained_tags_by_model(model_name)
    raise ValueError(
        f"pretrained={pretrained!r} is neither a known tag of {model_name} ({', '.join(tags) or 'none'}) "
        "nor a path to a checkpoint"
    )
