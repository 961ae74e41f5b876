"""Schemas of the zero-shot video baselines' tasks (task=video_fatezero, task=video_pix2video), listed in
:data:`csd_exp.schema.nodes.TARGET_SCHEMAS`. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from csd_exp.schema.checks import MAX_SEED, Node, NonNegativeFloat, NonNegativeInt, PositiveInt, Probability, Range


@dataclass
class ZeroShotVideoTaskSchema:
    """What FateZero and Pix2Video both take (csd_exp/tasks/video_fatezero.py): the run's inputs, as
    ``nodes.TaskInputsSchema``, then their shared knobs."""

    prompt: str
    source_prompt: str
    seed: Annotated[int, Range(min=0, max=MAX_SEED)]
    max_steps: int
    data: Node
    frame_size: PositiveInt
    num_inference_steps: PositiveInt
    guidance_scale: float
    temporal_attention_frames: list
    temporal_attention_blocks: list
    temporal_attention_min_level: NonNegativeInt


@dataclass
class VideoFateZeroTaskSchema(ZeroShotVideoTaskSchema):
    cross_replace_steps: Probability
    self_replace_steps: Probability
    is_replace_controller: bool
    blend_words: list | None
    blend_th: Probability
    eq_params: Node | None
    attention_store_device: str | None
    temporal_attention_frames: list | None
    temporal_attention_min_level: NonNegativeInt | None
    official_release: bool
    clip_groupnorm: bool | None
    timestep_spacing: Literal["leading", "linspace"] | None
    clean_level: Literal["alphas_cumprod_0", "one"] | None
    blend_layers: Literal["released", "coarsest"] | None
    refine_padding: Literal["released", "shifted"] | None
    cross_replace_count: Literal["n_plus_1", "n"] | None
    stored_maps: Literal["max_1024_tokens", "level1"] | None


@dataclass
class VideoPix2VideoTaskSchema(ZeroShotVideoTaskSchema):
    latent_update_weight: NonNegativeFloat
    latent_update_steps: NonNegativeInt
