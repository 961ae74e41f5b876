"""Tiny random-weight Stable Diffusion / InstructPix2Pix pipelines, built offline from constructor arguments.

They exercise the real code path (``from_pretrained`` on a pipeline folder, VAE, CLIP text encoder, UNet)
in milliseconds: UNet2DConditionModel with block_out_channels (32, 64) (8 input channels for
InstructPix2Pix), AutoencoderKL (32, 64) (so 2 image pixels per latent pixel), a 32-wide CLIP text encoder
and a real CLIP BPE tokenizer whose files are written from the vocabulary open_clip ships (no download).
Weights are seeded; building never touches the global random state.

``build_tiny_consistency_decoder(folder)`` saves a tiny ``ConsistencyDecoderVAE`` that reads the tiny VAE's
latents (``model.decoder=consistency``, ``model.decoder_path=folder``).

``tiny_instruct_pix2pix_prior(cache_dir)`` / ``tiny_stable_diffusion_prior(cache_dir)`` build the folder
once (in a temporary folder renamed into place, so concurrent processes never see a half-written one) and
load the prior through the same ``from_pretrained`` path users take with real checkpoints.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .base import SD_BETA_END, SD_BETA_START, SD_NUM_TRAIN_TIMESTEPS

if TYPE_CHECKING:
    from csd_exp.priors.base import TorchDtypeName
    from csd_exp.priors.deepfloyd_if import DeepFloydIFPrior
    from csd_exp.priors.instruct_pix2pix import InstructPix2PixPrior
    from csd_exp.priors.stable_diffusion import StableDiffusionPrior
    from csd_exp.schema.fields import PositiveInt, Seed

TINY_FORMAT_VERSION = 1
CLIP_MAX_LENGTH = 77
CLIP_NUM_MERGES = 49152 - 256 - 2  # merges CLIP uses from its BPE file (48,894)
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
TINY_HIDDEN_SIZE = 32
TINY_BLOCK_OUT_CHANNELS = (32, 64)
LATENT_CHANNELS = 4


# -- tokenizer -----------------------------------------------------------------------------------------
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE alphabet: every byte maps to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return {byte: mapping[byte] for byte in printable + [b for b in range(256) if b not in printable]}


def _open_clip_bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip (open-clip-torch) is needed for its bundled CLIP BPE vocabulary")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(folder: str | os.PathLike) -> Path:
    """Write CLIP's ``vocab.json`` / ``merges.txt`` from open_clip's bundled BPE file and save a
    ``CLIPTokenizer`` (model_max_length 77) in ``folder``; token ids match open_clip's."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_open_clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]
    alphabet = list(_byte_to_unicode().values())
    vocab = alphabet + [token + "</w>" for token in alphabet] + ["".join(m) for m in merges]
    vocab += [START_TOKEN, END_TOKEN]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)
    tokenizer.save_pretrained(folder)
    return folder


def clip_tokenizer(folder: str | os.PathLike):
    """The offline CLIP tokenizer in ``folder`` (written there first if absent)."""
    from transformers import CLIPTokenizer

    if not (Path(folder) / "vocab.json").exists():
        write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)


# -- components ----------------------------------------------------------------------------------------
def tiny_text_encoder(
    vocab_size: int,
    hidden_size: int = TINY_HIDDEN_SIZE,
    num_hidden_layers: int = 2,
    intermediate_size: int = 37,
    num_attention_heads: int = 4,
):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def tiny_components(folder_for_tokenizer: str | os.PathLike, *, in_channels: int, seed: int = 0) -> dict:
    """Seeded tiny UNet, VAE, text encoder, tokenizer and scheduler (``in_channels`` 8 for IP2P, 4 for SD)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = clip_tokenizer(folder_for_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=LATENT_CHANNELS,
            layers_per_block=2,
            block_out_channels=TINY_BLOCK_OUT_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TINY_HIDDEN_SIZE,
            attention_head_dim=4,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=LATENT_CHANNELS,
            block_out_channels=TINY_BLOCK_OUT_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=32,
        )
        text_encoder = tiny_text_encoder(len(tokenizer))
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer)


def tiny_consistency_decoder(seed: int = 0):
    """A seeded tiny ``ConsistencyDecoderVAE`` for the tiny VAE's latents (4 channels, 2x, same scaling factor):
    encoder and decoder UNet with block_out_channels (32, 64), one layer per block."""
    from diffusers import ConsistencyDecoderVAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = ConsistencyDecoderVAE(
            latent_channels=LATENT_CHANNELS,
            sample_size=32,
            encoder_block_out_channels=TINY_BLOCK_OUT_CHANNELS,
            encoder_down_block_types=("DownEncoderBlock2D",) * 2,
            encoder_layers_per_block=1,
            decoder_block_out_channels=TINY_BLOCK_OUT_CHANNELS,
            decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2,
            decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
            decoder_layers_per_block=1,
        )
    return decoder.eval()


def build_tiny_consistency_decoder(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save :func:`tiny_consistency_decoder` in ``folder`` (a ``model.decoder_path`` for the tiny pipelines)."""
    folder = Path(folder)
    tiny_consistency_decoder(seed).save_pretrained(folder)
    return folder


def _schedule_kwargs() -> dict:
    return dict(
        num_train_timesteps=SD_NUM_TRAIN_TIMESTEPS,
        beta_start=SD_BETA_START,
        beta_end=SD_BETA_END,
        beta_schedule="scaled_linear",
    )


def build_tiny_ip2p(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet, Euler-ancestral) in ``folder``."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        parts = tiny_components(tokenizer_dir, in_channels=2 * LATENT_CHANNELS, seed=seed)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **parts,
        scheduler=EulerAncestralDiscreteScheduler(**_schedule_kwargs()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` (4-channel UNet, DDIM) in ``folder``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        parts = tiny_components(tokenizer_dir, in_channels=LATENT_CHANNELS, seed=seed)
    scheduler = DDIMScheduler(**_schedule_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        **parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)
    return folder


def _cached_build(cache_dir: str | os.PathLike, name: str, build, seed: int) -> Path:
    """``cache_dir/<name>_seed<seed>_v<version>``, built once: into a temporary sibling renamed into place,
    so two processes never see a half-written folder (the loser of the race discards its copy)."""
    cache_dir = Path(os.path.expanduser(str(cache_dir)))
    final = cache_dir / f"{name}_seed{seed}_v{TINY_FORMAT_VERSION}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        build(staging / "pipeline", seed=seed)
        try:
            os.rename(staging / "pipeline", final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def tiny_instruct_pix2pix_prior(cache_dir: str | os.PathLike, seed: Seed = 0, **prior_kwargs) -> InstructPix2PixPrior:
    """An :class:`InstructPix2PixPrior` on the tiny pipeline in ``cache_dir`` (built there if absent)."""
    from .instruct_pix2pix import InstructPix2PixPrior

    folder = _cached_build(cache_dir, "tiny_ip2p", build_tiny_ip2p, seed)
    return InstructPix2PixPrior(str(folder), **prior_kwargs)


def tiny_stable_diffusion_prior(cache_dir: str | os.PathLike, seed: Seed = 0, **prior_kwargs) -> StableDiffusionPrior:
    """A :class:`StableDiffusionPrior` on the tiny pipeline in ``cache_dir`` (built there if absent)."""
    from .stable_diffusion import StableDiffusionPrior

    folder = _cached_build(cache_dir, "tiny_sd", build_tiny_sd, seed)
    return StableDiffusionPrior(str(folder), **prior_kwargs)


# -- DeepFloyd IF stage I --------------------------------------------------------------------------------
#: Words of the tiny T5 vocabulary (DreamFusion-style prompts and the view suffixes); any other lower-case
#: ASCII text falls back to single characters, anything else to <unk>.
TINY_T5_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "it", "into", "photo", "dslr", "render", "view", "front",
    "side", "back", "overhead", "bottom", "top", "hamburger", "turn", "make", "painting", "red", "blue", "green",
)  # fmt: skip
TINY_T5_HIDDEN_SIZE = 32


def tiny_t5_tokenizer():
    """A ``T5Tokenizer`` (transformers' tokenizers-backed Unigram class, which ``IFPipeline`` loads), tiny vocabulary.

    No T5 vocabulary can be had offline (T5's ``spiece.model`` comes from the hub, and sentencepiece is not
    installed), so the Unigram pieces are written here: T5's special tokens (<pad> 0, </s> 1, <unk> 2), the
    words of :data:`TINY_T5_WORDS` with the word-start marker, then every lower-case letter, digit and ASCII
    punctuation mark with and without it (log-probabilities −5 for words, −10 for characters, so known words
    win). It tokenizes like T5 (Metaspace pre-tokenizer, </s> appended) with another vocabulary.
    """
    import string

    from transformers import T5Tokenizer

    from .deepfloyd_if import IF_MAX_LENGTH

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    pieces += [("▁" + word, -5.0) for word in TINY_T5_WORDS]
    characters = string.ascii_lowercase + string.digits + string.punctuation
    pieces += [(c, -10.0) for c in characters]
    pieces += [("▁" + c, -10.5) for c in characters if "▁" + c not in {p for p, _ in pieces}]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=IF_MAX_LENGTH)


def tiny_if_components(seed: int = 0) -> dict:
    """Seeded tiny IF stage I parts: a T5 encoder (d_model 32, gated-GELU as T5 v1.1), a 3-in / 6-out UNet with
    IF's block types (text projection of the T5 states, pooled text embedding added to the time embedding,
    scale-shift ResNets), IF's DDPM scheduler (cosine betas, learned-range variance) and the tiny tokenizer."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=TINY_T5_HIDDEN_SIZE,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=3,
            out_channels=6,
            layers_per_block=1,
            block_out_channels=TINY_BLOCK_OUT_CHANNELS,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            cross_attention_dim=TINY_T5_HIDDEN_SIZE,
            encoder_hid_dim=TINY_T5_HIDDEN_SIZE,
            encoder_hid_dim_type="text_proj",
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            attention_head_dim=8,
            resnet_time_scale_shift="scale_shift",
            act_fn="gelu",
            norm_num_groups=8,
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=SD_NUM_TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    )
    return dict(unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler)


def build_tiny_if(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny ``IFPipeline`` (stage I: T5, 3-in / 6-out UNet, DDPM) in ``folder``, no safety checker or
    watermarker."""
    from diffusers import IFPipeline

    folder = Path(folder)
    pipe = IFPipeline(
        **tiny_if_components(seed),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def tiny_deepfloyd_if_prior(
    cache_dir: str | os.PathLike,
    seed: Seed = 0,
    torch_dtype: TorchDtypeName | torch.dtype = "float32",
    max_rows_per_call: PositiveInt | None = None,
) -> DeepFloydIFPrior:
    """A :class:`DeepFloydIFPrior` on the tiny IF pipeline in ``cache_dir`` (built there if absent), loaded through
    ``IFPipeline.from_pretrained`` like a real checkpoint."""
    from .deepfloyd_if import DeepFloydIFPrior

    folder = _cached_build(cache_dir, "tiny_if", build_tiny_if, seed)
    return DeepFloydIFPrior(str(folder), torch_dtype=torch_dtype, max_rows_per_call=max_rows_per_call)
