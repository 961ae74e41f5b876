"""FateZero as released (github.com/ChenyangQiQi/FateZero at 9b6cb7b): the behaviours ``task.official_release``
picks for ``task=video_fatezero`` (:mod:`csd_exp.tasks.video.fatezero`), and the switch of each. The release's
files and lines are listed in docs/baselines.md."""

from __future__ import annotations

from csd_exp.priors.attention_control import level_shape

#: FateZero's released zero-shot style / attribute configs (``config/style/*.yaml``: ``SparseCausalAttention_index:
#: ['mid']``, ``least_sc_channel: 640``): frame i attends to the middle frame only, in layers of >= 640 channels.
RELEASED_TEMPORAL_FRAMES = ("middle",)
RELEASED_TEMPORAL_MIN_CHANNELS = 640
#: Our choice without the release: frame 0 and frame i − 1, layers at level >= 1.
DEFAULT_TEMPORAL_FRAMES = ("first", "previous")
DEFAULT_TEMPORAL_MIN_LEVEL = 1
#: FateZero stores (and fuses) the attention maps whose queries have at most 32² positions
#: (``prompt_attention/attention_store.py`` 83, ``attention_util.py`` 104).
RELEASED_STORE_MAX_TOKENS = 32**2


def released_store_min_level(latent_hw: tuple[int, int]) -> int:
    """The finest level whose attention maps FateZero stores: queries of at most 32² positions."""
    level = 0
    while level_shape(latent_hw, level)[0] * level_shape(latent_hw, level)[1] > RELEASED_STORE_MAX_TOKENS:
        level += 1
    return level


#: ``attention_product=explicit``: the layers FateZero's controlled attention computes as baddbmm → softmax →
#: bmm (``prompt_attention/attention_register.py`` 24-53): queries of at most 32² positions; larger ones go to
#: xformers where it is installed (its GPU setup, 95-98; here: the fused kernel), the explicit product on CPU.
RELEASED_EXPLICIT_MAX_QUERIES = RELEASED_STORE_MAX_TOKENS


#: switch -> (the release's value, ours); None in the config follows ``official_release``.
RELEASE_SWITCHES = {
    "clip_groupnorm": (True, False),
    "timestep_spacing": ("leading", "linspace"),
    "clean_level": ("alphas_cumprod_0", "one"),
    "blend_layers": ("released", "coarsest"),
    "refine_padding": ("released", "shifted"),
    "cross_replace_count": ("n_plus_1", "n"),
    "stored_maps": ("max_1024_tokens", "level1"),
    "attention_product": ("explicit", "fused"),
    "time_embedding_rows": ("per_clip", "per_row"),
    "decode_arithmetic": ("times_inverse_scale", "divide_by_scale"),
    "latent_layout": ("contiguous", "as_encoded"),
}


def resolve_release_switches(
    official: bool, *, temporal_attention_frames=None, temporal_attention_min_level=None, **switches
) -> dict:
    """Each switch's value: the explicit one, else the release's (``official``) or ours. The temporal layers:
    frames or min_level given replace the release's choice (the middle frame in layers of >= 640 channels)
    entirely; the one not given takes our default."""
    resolved = {}
    for name, value in switches.items():
        released, ours = RELEASE_SWITCHES[name]
        value = (released if official else ours) if value is None else value
        if value not in (released, ours):
            raise ValueError(f"task.{name}={value} is not one of {released}, {ours} (or null: official_release)")
        resolved[name] = value
    frames, min_level, min_channels = temporal_attention_frames, temporal_attention_min_level, None
    if frames is None and min_level is None and official:
        frames, min_level, min_channels = RELEASED_TEMPORAL_FRAMES, 0, RELEASED_TEMPORAL_MIN_CHANNELS
    resolved["temporal_attention_frames"] = DEFAULT_TEMPORAL_FRAMES if frames is None else frames
    resolved["temporal_attention_min_level"] = DEFAULT_TEMPORAL_MIN_LEVEL if min_level is None else min_level
    resolved["temporal_attention_min_channels"] = min_channels
    return resolved
