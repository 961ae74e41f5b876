"""task=video_fatezero: the CLI end to end on the bundled clip and a frame folder, resume by replay, the
attention store's memory guard, and the bad-input errors (model group, blend / eq words)."""

from __future__ import annotations

import json

import pytest
import torch
from framework_support import FAST, compose_config, run_cli

from csd_exp.data.video_write import write_frames
from csd_exp.priors.attention_control import VideoAttention

TINY = ["task=video_fatezero", "model=tiny_sd", "task.frame_size=8", "data.max_frames=3"]
PROMPTS = ["source_caption=a photo of a city street", "prompt=a watercolor photo of a city street"]
#: The keys task=video's summary.json has (csd_exp/run.py), and its metrics for a prior without modes.
SUMMARY_KEYS = {"status", "metrics", "seed", "steps", "wall_time_s", "versions", "device", "world_size", "outputs"}
VIDEO_METRICS = {"fidelity/psnr", "fidelity/ssim", "consistency/warp_error"}


def test_the_cli_runs_two_steps_on_the_bundled_clip_and_on_a_frame_folder(tmp_path):
    """One CLI sweep over the two inputs (one process: the imports are paid once). One DDIM step each way:
    step 1 inverts (storing the maps), step 2 edits with every fusion on."""
    write_frames(torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(0)), tmp_path / "clip")
    sweep = tmp_path / "sweep"
    fusion = [
        "task.num_inference_steps=1",
        "task.cross_replace_steps=1.0",
        "task.self_replace_steps=1.0",
        "task.blend_words=[street]",
        "task.eq_params={words:[watercolor],values:[2]}",
    ]
    args = [
        "-m",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        *PROMPTS,
        *FAST,
        *fusion,
        f"data.path=sample:pan,{tmp_path / 'clip'}",
    ]
    result = run_cli(args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 2
    import imageio.v3 as iio

    for out, metrics in zip(runs, (VIDEO_METRICS, VIDEO_METRICS - {"consistency/warp_error"})):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        assert SUMMARY_KEYS <= set(summary) and set(summary["metrics"]) == metrics  # no known motion for a folder
        assert summary["config"]["method"] == "fatezero"
        for name in ("edited.mp4", "edited.gif", "source.mp4", "edited_grid.png", "edited_frames/frame_00002.png"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert (out / "checkpoints" / "last.ckpt").is_file()
    assert iio.imread(runs[1] / "edited_frames" / "frame_00000.png").shape == (20, 30, 3)  # the folder's size


def _task(tmp_path, *overrides):
    from csd_exp.run import build_task

    task = build_task(compose_config([*TINY, *PROMPTS, *overrides], tmp_path))
    task.configure_particles(torch.device("cpu"))
    return task


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")  # steps called without a Trainer
def test_a_resumed_run_replays_the_steps_before_it_and_ends_identical(tmp_path):
    """Inversion and the attention store are not checkpointed: the first step after a resume replays the
    deterministic steps before it, so the edit equals the uninterrupted one bit for bit."""
    options = ["task.num_inference_steps=2", "task.blend_words=[street]", "task.self_replace_steps=1.0"]
    whole = _task(tmp_path / "a", *options)
    for index in range(4):
        whole.training_step(index, index)
    resumed = _task(tmp_path / "b", *options)  # a fresh process that loaded the checkpoint of step 3
    resumed.training_step(3, 0)
    assert torch.equal(whole.latents, resumed.latents)
    assert not torch.equal(whole.latents, whole.source_latents) and whole.store is None  # edited; store freed


def test_the_attention_store_stops_early_when_it_would_outgrow_memory(tmp_path, monkeypatch):
    import csd_exp.tasks.video.fatezero as fatezero

    monkeypatch.setattr(fatezero, "default_memory_budget", lambda: 10_000)
    task = _task(tmp_path, "task.num_inference_steps=4", "task.attention_store_device=cpu")
    with pytest.raises(
        ValueError, match=r"attention store would need .* MiB .*data.max_frames.*attention_store_device=cpu"
    ):
        for index in range(4):
            task._advance(index, log_step=False)
    assert task.store is None  # the maps are dropped, not kept while the error propagates


@pytest.mark.parametrize("task", ["video_fatezero", "video_pix2video"])
@pytest.mark.parametrize("model", ["ip2p", "exact", "tiny_ip2p"])
def test_a_model_that_is_not_stable_diffusion_text_to_image_is_refused_at_compose_time(task, model, tmp_path):
    from csd_exp.schema import ConfigError, validate_composed

    cfg = compose_config([f"task={task}", f"model={model}"], tmp_path)
    method = task.removeprefix("video_")
    with pytest.raises(ConfigError, match=rf"method={method} needs a .* but model={model} is an instruction one"):
        validate_composed(cfg)


def test_the_cli_names_the_model_groups_that_work(tmp_path):
    result = run_cli(["task=video_fatezero", "model=exact", f"paths.output_dir={tmp_path}"], timeout=120)
    assert result.returncode != 0
    assert "model=sd15, model=sd21, model=tiny_sd" in result.stderr


def test_python_callers_get_the_same_error_from_the_task(tmp_path):
    from csd_exp.priors import ExactScorePrior
    from csd_exp.tasks.video.fatezero import require_text_to_image_prior

    with pytest.raises(ValueError, match="model=sd15, model=sd21, model=tiny_sd"):
        require_text_to_image_prior(ExactScorePrior(), "video_fatezero")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["task.blend_words=[car]"],
            r"task.blend_words: 'car' is not a word .* its words are: a, photo, of, a, city, street",
        ),
        (["task.eq_params={words:[ink],values:[5]}"], r"task.eq_params.words: 'ink' .* a, watercolor, photo"),
        (["task.temporal_attention_frames=[next]"], "first, previous, self, middle, last"),
        (["model.max_rows_per_call=2"], "max_rows_per_call=2: set it to at least 3"),
    ],
)
def test_bad_fatezero_input_fails_before_any_step(overrides, message, tmp_path):
    from csd_exp.run import build_task

    with pytest.raises(ValueError, match=message):
        build_task(compose_config([*TINY, *PROMPTS, *overrides], tmp_path))


# ------------------------------------------------------------------------------ official_release (issue 23)
#: The switches official_release sets, each with (the release's value, ours): the task attribute that shows it.
RELEASE_SWITCHES = {
    "clip_groupnorm": ("true", "false"),
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
#: 4 latent px per side are too few for the store's levels to differ; 32 (64 px frames) makes level 0 hold
#: 32² = 1024 queries, the most FateZero stores. 10 steps as experiment=video_fatezero_tiny_cpu; blend words on.
EDIT = [
    "task.frame_size=32",
    "task.num_inference_steps=10",
    "task.blend_words=[street]",
    "task.cross_replace_steps=0.75",
]


def _mechanisms(task) -> dict:
    """What each listed mechanism resolved to, read from the built task (whose UNet hooks are then removed)."""
    control = task.attention
    found = {
        "clip_groupnorm": bool(control.clip_norms),
        "timesteps": list(task.timesteps),
        "clean_level": float(task.alpha_bar(None, torch.zeros(()))),
        "blend_layers": task.blend_layers,
        "refine_padding": task.fusion.mapper.tolist(),
        "cross_steps": task.fusion.cross_steps,
        "store_min_level": task.store_min_level,
        "temporal": (control.temporal_frames, control.temporal_min_level, control.temporal_min_channels),
        "explicit_attention": (control.explicit_max_queries, task.released_attention),
        "per_clip_time_embedding": bool(control.time_projections),
        "decode_arithmetic": task.decode_arithmetic,
        "latent_layout": task.latent_layout,
    }
    control.remove()
    return found


_PRIORS: dict = {}


def _built(tmp_path, *overrides):
    """The task as build_task makes it, on one tiny prior shared by these tests (loading it is the slow part),
    with its attention control installed (as configure_particles would, without encoding the clip)."""
    from csd_exp.run import instantiate_clearly
    from csd_exp.tasks import RunInputs

    cfg = compose_config([*TINY, *PROMPTS, *EDIT, *overrides], tmp_path)
    key = repr(cfg.model)
    if key not in _PRIORS:
        _PRIORS.clear()
        _PRIORS[key] = instantiate_clearly(cfg.model)
    guidance = instantiate_clearly(cfg.guidance) if "_target_" in cfg.guidance else None
    inputs = RunInputs.from_config(cfg)
    task = instantiate_clearly(cfg.task, prior=_PRIORS[key], guidance=guidance, inputs=inputs, _convert_="all")
    task.attention = VideoAttention(
        task.prior.unet,
        temporal_frames=task.temporal_frames,
        temporal_min_level=task.temporal_min_level,
        temporal_min_channels=task.temporal_min_channels,
        clip_groupnorm=task.clip_groupnorm,
        explicit_max_queries=task.explicit_attention_max_queries,
        per_clip_time_embedding=task.per_clip_time_embedding,
    )
    return task


def test_official_release_changes_exactly_the_listed_mechanisms_and_each_switch_alone_undoes_one(tmp_path):
    ours = _mechanisms(_built(tmp_path / "ours"))
    released_task = _built(tmp_path / "released", "task.official_release=true")
    released = _mechanisms(released_task)
    assert ours["timesteps"] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert released["timesteps"] == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert ours["clean_level"] == 1.0
    assert released["clean_level"] == float(released_task.prior.alphas_cumprod[0])
    assert (ours["clip_groupnorm"], released["clip_groupnorm"]) == (False, True)
    # the tiny UNet's cross-attention: down_blocks.1 (2 layers, level 1), mid, up_blocks.0 (3, level 1):
    # down[2:4] is empty, up[:3] takes the three up layers; ours: the coarsest down / up layers (all five)
    assert ours["blend_layers"] is None
    assert released["blend_layers"] == [
        f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)
    ]
    assert (ours["cross_steps"], released["cross_steps"]) == (7, 8)  # int(0.75 · 10), int(0.75 · 11)
    assert (ours["store_min_level"], released["store_min_level"]) == (1, 0)  # 32² queries fit FateZero's 1024
    assert ours["temporal"] == (("first", "previous"), 1, None)
    assert released["temporal"] == (("middle",), 0, 640)
    # "a photo of a city street" (8 ids) -> "a watercolor photo of a city street" (9 ids): the first padding
    # position, 9, takes source 9 (released) or source 8 (shifted: the source's first padding)
    assert (ours["refine_padding"][9], released["refine_padding"][9]) == (8, 9)
    assert (ours["explicit_attention"], released["explicit_attention"]) == ((0, False), (1024, True))
    assert (ours["per_clip_time_embedding"], released["per_clip_time_embedding"]) == (False, True)
    assert ours.keys() == released.keys() and all(ours[k] != released[k] for k in ours)
    assert released_task.release_deviations() == []  # summary.json / W&B: as released
    ours_task = _built(tmp_path / "ours_notes")
    ours_task.attention.remove()
    assert len(ours_task.release_deviations()) == len(RELEASE_SWITCHES) + 1  # every switch and the temporal layers
    mechanism_of = {
        "clip_groupnorm": "clip_groupnorm",
        "timestep_spacing": "timesteps",
        "clean_level": "clean_level",
        "blend_layers": "blend_layers",
        "refine_padding": "refine_padding",
        "cross_replace_count": "cross_steps",
        "stored_maps": "store_min_level",
        "attention_product": "explicit_attention",
        "time_embedding_rows": "per_clip_time_embedding",
        "decode_arithmetic": "decode_arithmetic",
        "latent_layout": "latent_layout",
    }
    for switch, (_, our_value) in RELEASE_SWITCHES.items():
        one_task = _built(tmp_path / switch, "task.official_release=true", f"task.{switch}={our_value}")
        notes = one_task.release_deviations()
        one = _mechanisms(one_task)
        assert {k for k in released if one[k] != released[k]} == {mechanism_of[switch]}, switch
        assert one[mechanism_of[switch]] == ours[mechanism_of[switch]], switch
        assert [note.split("=")[0] for note in notes] == [f"task.{switch}"]  # marked, and only that


@pytest.mark.parametrize(
    "overrides, temporal",
    [
        (["task.temporal_attention_frames=[first]"], (("first",), 1, None)),
        (["task.temporal_attention_min_level=0"], (("first", "previous"), 0, None)),
        (["task.temporal_attention_frames=[middle]", "task.temporal_attention_min_level=2"], (("middle",), 2, None)),
    ],
)
def test_explicit_temporal_attention_replaces_the_releases_choice_entirely(overrides, temporal, tmp_path):
    for official in ("true", "false"):
        task = _built(tmp_path / official, f"task.official_release={official}", *overrides)
        assert _mechanisms(task)["temporal"] == temporal


def test_the_releases_sparse_causal_choice_selects_layers_by_channels():
    """least_sc_channel 640: on the tiny UNet (32 / 64 channels) no layer; a channel floor of 64 takes the
    self-attention layers of the 64-channel blocks (all the tiny UNet has), at every level."""
    unet = _tiny_unet(down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D"))
    rows = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    embeds = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for channels, expected in ((640, 0), (64, 4)):
        control = VideoAttention(unet, temporal_frames=["middle"], temporal_min_channels=channels)
        with control.clip(3, (8, 8)):
            unet(rows, 10, encoder_hidden_states=embeds)
        assert len(control.temporal_layers()) == expected
        control.remove()


def _tiny_unet(down, up, mid="UNetMidBlock2DCrossAttn"):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=down,
            up_block_types=up,
            mid_block_type=mid,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
    return unet.double().eval()


def test_clip_groupnorm_takes_statistics_over_every_frame_of_each_clip_as_a_float64_reference():
    """Rows (G·F, C, H, W) in groups of F frames: each group normalised as one (C, F, H, W) tensor. float32
    input; the reference in float64: unit-scale data, so 1e-5 is ~100 float32 roundings."""
    from csd_exp.priors.attention_control import clip_group_norm

    g, f, c, h, w, groups = 2, 3, 8, 5, 4, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g * f, c, h, w, generator=gen) * torch.linspace(0.5, 3, g * f)[:, None, None, None] + 1
    norm = torch.nn.GroupNorm(groups, c, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.bias.copy_(torch.randn(c, generator=gen))
    out = clip_group_norm(x, f, norm)
    ref = torch.empty(g * f, c, h, w, dtype=torch.float64)
    x64 = x.double()
    per = c // groups
    for clip in range(g):
        frames = slice(clip * f, (clip + 1) * f)
        for k in range(groups):
            chans = slice(k * per, (k + 1) * per)
            values = x64[frames, chans]
            mean, var = values.mean(), values.var(unbiased=False)
            ref[frames, chans] = (values - mean) / torch.sqrt(var + norm.eps)
    ref = ref * norm.weight.double()[:, None, None] + norm.bias.double()[:, None, None]
    assert (out.double() - ref).abs().max() < 1e-5
    per_frame = norm(x)
    assert (per_frame.double() - ref).abs().max() > 0.1  # the frames' scales differ: per-frame statistics differ


def test_clip_groupnorm_is_installed_on_every_resnet_norm_and_the_output_norm_and_removed():
    unet = _tiny_unet(down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D"))
    rows = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    embeds = torch.randn(4, 77, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        plain = unet(rows, 10, encoder_hidden_states=embeds).sample
        control = VideoAttention(unet, temporal_frames=["self"], clip_groupnorm=True)
        resnets = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
        assert len(control.clip_norms) == 2 * len(resnets) + 1 and unet.conv_norm_out in control.clip_norms
        assert torch.allclose(unet(rows, 10, encoder_hidden_states=embeds).sample, plain, atol=1e-12, rtol=0)
        with control.clip(2, (8, 8)):  # two clips of 2 frames: statistics over each pair
            coupled = unet(rows, 10, encoder_hidden_states=embeds).sample
            first_clip = unet(rows[:2], 10, encoder_hidden_states=embeds[:2]).sample
        assert (coupled - plain).abs().max() > 1e-3
        assert torch.allclose(coupled[:2], first_clip, atol=1e-12, rtol=0)  # clips do not see each other
        control.remove()
        assert not control.clip_norms and "forward" not in vars(unet.conv_norm_out)
        assert torch.equal(unet(rows, 10, encoder_hidden_states=embeds).sample, plain)


def test_leading_timesteps_are_ddims_leading_spacing_with_offset_one():
    from diffusers import DDIMScheduler

    from csd_exp.tasks.sampling import leading_timesteps

    assert leading_timesteps(1000, 10) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert leading_timesteps(1000, 50)[:2] == [981, 961] and leading_timesteps(1000, 50)[-1] == 1
    for steps in (1, 7, 10, 50):
        scheduler = DDIMScheduler(steps_offset=1, timestep_spacing="leading")
        scheduler.set_timesteps(steps)
        assert leading_timesteps(1000, steps) == scheduler.timesteps.tolist()


def test_the_clean_level_in_one_ddim_step_each_way(tmp_path):
    """Last editing step (to the clean level) and first inversion step (from it), against the DDIM formula
    by hand in float64 with ᾱ_clean = alphas_cumprod[0] (release) or 1 (ours)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 4, 4, 4, generator=gen, dtype=torch.float64)
    for clean_level in ("alphas_cumprod_0", "one"):
        task = _built(tmp_path / clean_level, "task.official_release=true", f"task.clean_level={clean_level}")
        task.attention.remove()
        task.attention = None
        a = task.prior.alphas_cumprod.float().double()  # the table the task reads, in float64
        clean = float(a[0]) if clean_level == "alphas_cumprod_0" else 1.0
        last, t = task.num_steps - 1, task.timesteps[-1]
        x0 = (x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()
        expected = clean**0.5 * x0 + (1 - clean) ** 0.5 * eps
        assert torch.allclose(task.sampling_step(x, eps, last), expected, atol=1e-12, rtol=0)
        task.source_latents, task.state = x.float(), None
        task.noise = lambda state, t, prompts, hook, temporal: [eps.float()]
        task._inversion_step(0)
        x0_clean = (x - (1 - clean) ** 0.5 * eps) / clean**0.5
        inverted = a[t].sqrt() * x0_clean + (1 - a[t]).sqrt() * eps
        assert torch.allclose(task.state.double(), inverted, atol=1e-5, rtol=0)  # float32 state
    assert float(a[0]) < 1 - 1e-4  # the two levels differ


def test_the_refine_mappers_padding_and_the_cross_replace_count():
    from csd_exp.priors.attention_fusion import FusionSettings, refinement_mapping

    source, target = [49406, 10, 20, 49407], [49406, 10, 30, 20, 49407]  # a word inserted
    mapper, alphas = refinement_mapping(source, target, 8, "released")
    assert mapper.tolist() == [0, 1, 2, 2, 3, 5, 6, 7] and alphas.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    mapper, _ = refinement_mapping(source, target, 8, "shifted")
    assert mapper.tolist() == [0, 1, 2, 2, 3, 4, 5, 6]
    assert FusionSettings(num_steps=4, cross_replace_steps=0.8, cross_count_of_n_plus_1=True).cross_steps == 4
    assert FusionSettings(num_steps=4, cross_replace_steps=0.8).cross_steps == 3


def test_the_released_blend_layers_on_sd_layout_and_small_unets():
    from csd_exp.priors.attention_control import AttentionLayer, attention_layers
    from csd_exp.priors.attention_fusion import released_blend_layers

    def layer(name, place, level):
        return AttentionLayer(f"{name}.attn2.processor", place, True, 320, level)

    # SD-1.x's cross-attention layers at 512 px (levels 0, 1, 2 down; 2, 1, 0 up; two / three per block)
    sd = [layer(f"down{lv}_{i}", "down", lv) for lv in (0, 1, 2) for i in (0, 1)]
    sd += [layer("mid", "mid", 3)] + [layer(f"up{lv}_{i}", "up", lv) for lv in (2, 1, 0) for i in (0, 1, 2)]
    chosen = released_blend_layers({x.name: x for x in sd}, store_min_level=1)
    assert chosen == [x.name for x in sd if x.level == 2]  # = the coarsest down / up layers there
    # a UNet with cross-attention in both down blocks: call order, shorter slices, mixed levels
    unet = _tiny_unet(down=("CrossAttnDownBlock2D",) * 2, up=("CrossAttnUpBlock2D",) * 2)
    layers = attention_layers(unet)
    control = VideoAttention(unet, temporal_frames=["self"])
    zeros = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad(), control.clip(1, (8, 8)):
        unet(zeros, 10, encoder_hidden_states=torch.zeros(1, 77, 32, dtype=torch.float64))
    control.remove()
    assert {n: control.levels[n] for n in layers} == {n: x.level for n, x in layers.items()}  # static = seen

    def up(block, i):
        return f"up_blocks.{block}.attentions.{i}.transformer_blocks.0.attn2.processor"

    assert released_blend_layers(layers, 0) == [up(0, 0), up(0, 1), up(1, 0)]  # down[2:4] of 2 layers: none
    assert released_blend_layers(layers, 1) == [up(0, 0), up(0, 1)]  # the level-0 layers are not stored


def test_a_blend_mask_from_layers_of_two_resolutions_repeats_the_coarse_maps_up():
    """The release would fail to concatenate them (spatial_blend.py 99); here the heads of all layers are
    pooled after a nearest resize to the finest grid: a hand-made case where each layer marks one cell."""
    from csd_exp.priors.attention_control import AttentionLayer
    from csd_exp.priors.attention_fusion import blend_mask

    fine = torch.zeros(1, 2, 16, 3)  # 4x4 grid, 2 heads, word token 1
    fine[0, :, 0, 1] = 1.0  # top-left cell
    coarse = torch.zeros(1, 2, 4, 3)  # 2x2 grid
    coarse[0, :, 3, 1] = 2.0  # bottom-right quarter = the 2x2 bottom-right cells of the fine grid
    maps = {"a": fine, "b": coarse}
    layers = {n: AttentionLayer(n, "up", True) for n in maps}
    mask = blend_mask(maps, layers, [1], (4, 4), 0, 0.3, blend_layers=["a", "b"])
    # mean over 4 heads: 0.5 top-left, 1.0 bottom-right quarter; the 3x3 max-pool spreads each; / max; > 0.3
    pooled = torch.zeros(4, 4)
    pooled[0, 0] = 0.5
    pooled[2:, 2:] = 1.0
    pooled = torch.nn.functional.max_pool2d(pooled[None, None], 3, 1, 1)[0, 0]
    assert torch.equal(mask[0, 0, :, 0], (pooled.flatten() > 0.3).float())


def test_official_release_refuses_a_unet_where_the_released_slices_select_no_blend_layer(tmp_path):
    from csd_exp.priors.attention_control import attention_layers
    from csd_exp.priors.attention_fusion import released_blend_layers

    unet = _tiny_unet(down=("DownBlock2D", "DownBlock2D"), up=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(
        ValueError, match=r"selects no layer .* are: mid_block.attentions.0.transformer_blocks.0.attn2 \(level 1\)"
    ):
        released_blend_layers(attention_layers(unet), 0)
    # the tiny pipeline at 256 px: FateZero stores only maps of <= 32² queries (level >= 2 there), and its
    # cross-attention is at level 1: refused when the task is built, before any step
    with pytest.raises(
        ValueError,
        match=r"selects no layer .*up_blocks.0.attentions.2.transformer_blocks.0.attn2 \(level 1\).*coarsest",
    ):
        _built(tmp_path, "task.official_release=true", "task.frame_size=128")
    _built(
        tmp_path / "ok", "task.official_release=true", "task.frame_size=128", "task.blend_layers=coarsest"
    ).attention.remove()


# ------------------------------------------- the release's float32 order of operations (issue 23, acceptance)
# official_release makes our float32 arithmetic follow the release's order where the two compute the same
# values differently (measured against the release: frames equal to 1.3e-6, docs/baselines.md). Each check:
# our path against the release's order written out here by hand, on tiny float32 tensors. The same ops on
# the same shapes round the same, so equality is exact (torch.equal), not a tolerance.


def _float32_unet():
    return _tiny_unet(down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D")).float()


def _release_attention(attn, query, key, value):
    """diffusers 0.11's / FateZero's ``_attention`` (``prompt_attention/attention_register.py`` 24-53): heads
    into the batch, baddbmm(q, kᵀ, α = scale), softmax, bmm, heads back, the output projection."""

    def to_batch(x):  # reshape_heads_to_batch_dim
        b, t, c = x.shape
        return x.reshape(b, t, attn.heads, c // attn.heads).permute(0, 2, 1, 3).reshape(b * attn.heads, t, -1)

    q, k, v = to_batch(query), to_batch(key), to_batch(value)
    empty = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype)
    probs = torch.baddbmm(empty, q, k.transpose(-1, -2), beta=0, alpha=attn.scale).softmax(dim=-1)
    out = torch.bmm(probs, v)
    b = out.shape[0] // attn.heads
    out = out.reshape(b, attn.heads, out.shape[1], out.shape[2]).permute(0, 2, 1, 3)
    return attn.to_out[0](out.reshape(b, out.shape[1], -1))


def test_the_explicit_attention_product_is_the_releases_order_of_operations(monkeypatch):
    """A sparse-causal self-attention layer (frame i reads the middle frame, FateZero's ``SparseCausalAttention``
    with ['mid']) and a cross-attention layer, 2 clips of 3 frames at 4x4 positions: with
    ``explicit_max_queries`` bit-equal to the release's order; without it, the fused kernel is what runs."""
    import csd_exp.priors.attention_control as control_module

    unet = _float32_unet()
    block = unet.down_blocks[1].attentions[0].transformer_blocks[0]
    gen = torch.Generator().manual_seed(0)
    frames, clips, tokens = 3, 2, 16  # level 1 of an 8x8 latent
    hidden = torch.randn(clips * frames, tokens, 64, generator=gen)
    text = torch.randn(clips * frames, 77, 32, generator=gen)
    calls = []
    fused = control_module.F.scaled_dot_product_attention
    monkeypatch.setattr(
        control_module.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    control = VideoAttention(unet, temporal_frames=["middle"], explicit_max_queries=tokens)
    with torch.no_grad(), control.clip(frames, (8, 8)):
        self_out, cross_out = block.attn1(hidden), block.attn2(hidden, encoder_hidden_states=text)
    assert calls == []
    attn1, attn2 = block.attn1, block.attn2
    with torch.no_grad():
        key, value = attn1.to_k(hidden), attn1.to_v(hidden)
        middle = [(frames - 1) // 2] * frames  # the release: key[:, frame_index] of (b, f, d, c), concatenated
        key = key.reshape(clips, frames, tokens, -1)[:, middle].reshape(clips * frames, tokens, -1)
        value = value.reshape(clips, frames, tokens, -1)[:, middle].reshape(clips * frames, tokens, -1)
        assert torch.equal(self_out, _release_attention(attn1, attn1.to_q(hidden), key, value))
        assert torch.equal(cross_out, _release_attention(attn2, attn2.to_q(hidden), attn2.to_k(text), attn2.to_v(text)))
    control.remove()
    control = VideoAttention(unet, temporal_frames=["middle"])  # ours: the fused kernel where no map is kept
    with torch.no_grad(), control.clip(frames, (8, 8)):
        block.attn1(hidden)
    assert calls == [1]
    control.remove()


def test_the_time_embedding_runs_once_per_clip_as_in_the_releases_pseudo_3d_unet():
    """The release's UNet sees (b, c, f, h, w): its timestep MLP and every ResNet's time projection get one row
    per clip, repeated over the frames (``models/resnet.py`` 369-377). Ours with ``per_clip_time_embedding``:
    the same rows into the same modules; outside a clip, and without the switch, every row."""
    unet = _float32_unet()
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(4, 4, 8, 8, generator=gen)
    embeds = torch.randn(4, 77, 32, generator=gen)
    seen = {}

    def record(name):
        return lambda module, args, output: seen.__setitem__(name, (args[0].shape[0], output))

    projection = unet.down_blocks[0].resnets[0].time_emb_proj
    handles = [
        unet.time_embedding.register_forward_hook(record("mlp")),
        projection.register_forward_hook(record("proj")),
    ]
    control = VideoAttention(unet, temporal_frames=["self"], per_clip_time_embedding=True)
    assert unet.time_embedding in control.time_projections and projection in control.time_projections
    with torch.no_grad():
        with control.clip(2, (8, 8)):  # two clips of two frames
            unet(rows, 10, encoder_hidden_states=embeds)
        assert seen["mlp"][0] == 4 and seen["proj"][0] == 4  # the hooks see the rows going in (all 4)
        t_emb = unet.time_proj(torch.tensor([10, 10]))  # the release: one row per clip
        emb = type(unet.time_embedding).forward(unet.time_embedding, t_emb)
        assert torch.equal(seen["mlp"][1], emb.repeat_interleave(2, 0))
        proj = torch.nn.functional.linear(torch.nn.functional.silu(emb), projection.weight, projection.bias)
        assert torch.equal(seen["proj"][1], proj.repeat_interleave(2, 0))
        calls = []
        inner = unet.time_embedding.linear_1.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
        with control.clip(2, (8, 8)):
            unet(rows, 10, encoder_hidden_states=embeds)
        unet(rows, 10, encoder_hidden_states=embeds)  # outside a clip: per row
        assert calls == [2, 4]
        inner.remove()
    control.remove()
    for handle in handles:
        handle.remove()
    assert "forward" not in vars(unet.time_embedding) and "forward" not in vars(projection)


def test_clip_groupnorm_is_the_releases_groupnorm_on_the_5d_clip_bit_for_bit():
    """The release normalises the (b, c, f, h, w) view of the rows (``rearrange("(b f) c h w -> b c f h w")``,
    then ``GroupNorm``); ours equals that exactly, not only to float64 (the test above)."""
    from csd_exp.priors.attention_control import clip_group_norm

    g, f, c, h, w = 2, 3, 8, 5, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g * f, c, h, w, generator=gen) * 3 + 1
    norm = torch.nn.GroupNorm(4, c, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.bias.copy_(torch.randn(c, generator=gen))
        clip5d = x.reshape(g, f, c, h, w).permute(0, 2, 1, 3, 4)
        released = norm(clip5d).permute(0, 2, 1, 3, 4).reshape(g * f, c, h, w)
        assert torch.equal(clip_group_norm(x, f, norm), released)


def test_the_text_encoders_attention_is_transformers_4_25s_order_inside_the_context():
    """CLIP text attention as transformers 4.25 computes it (the release's pin): q scaled before bmm(q, kᵀ),
    the causal mask of finfo.min added, softmax, bmm; the whole tiny encoder against that order by hand,
    and the library's own attention back after the context."""
    from csd_exp.priors.attention_release import released_text_attention
    from csd_exp.priors.tiny import tiny_text_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = tiny_text_encoder(100).eval()
    ids = torch.randint(0, 98, (2, 77), generator=torch.Generator().manual_seed(1))

    def attention_4_25(attn, h):
        b, t, c = h.shape
        heads, d = attn.num_heads, c // attn.num_heads

        def shape(x):
            return x.view(b, t, heads, d).transpose(1, 2).contiguous().view(b * heads, t, d)

        q, k, v = shape(attn.q_proj(h) * attn.scale), shape(attn.k_proj(h)), shape(attn.v_proj(h))
        mask = torch.empty(b, t, t).fill_(torch.tensor(torch.finfo(torch.float32).min)).triu_(1).unsqueeze(1)
        weights = (torch.bmm(q, k.transpose(1, 2)).view(b, heads, t, t) + mask).view(b * heads, t, t)
        out = torch.bmm(torch.nn.functional.softmax(weights, dim=-1), v)
        return attn.out_proj(out.view(b, heads, t, d).transpose(1, 2).reshape(b, t, c))

    model = getattr(encoder, "text_model", encoder)  # transformers 5: the layers sit on the model itself
    with torch.no_grad():
        h = model.embeddings(input_ids=ids)
        for layer in model.encoder.layers:
            h = h + attention_4_25(layer.self_attn, layer.layer_norm1(h))
            h = h + layer.mlp(layer.layer_norm2(h))
        by_hand = model.final_layer_norm(h)
        library = encoder(ids)[0]
        with released_text_attention(encoder):
            released = encoder(ids)[0]
        assert torch.equal(released, by_hand)
        assert torch.allclose(library, by_hand, atol=1e-5, rtol=0)  # the same attention, rounded otherwise:
        assert not torch.equal(library, by_hand)  # (the test would pass without the context if they agreed)
        assert not any("forward" in vars(m) for m in encoder.modules())
        assert torch.equal(encoder(ids)[0], library)


def test_the_vaes_attention_is_diffusers_0_11s_order_inside_the_context():
    """The VAE's mid-block attention as diffusers 0.11's ``AttentionBlock`` (group norm, q / k / v,
    baddbmm(q, kᵀ, α = 1/√d), softmax, bmm, projection, + residual); the processors found come back after."""
    from diffusers import AutoencoderKL

    from csd_exp.priors.attention_release import released_vae_attention

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
        ).eval()
    attn = vae.encoder.mid_block.attentions[0]
    before = {name: type(p) for name, p in vae.attn_processors.items()}
    x = torch.randn(2, 64, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        library = attn(x)
        with released_vae_attention(vae):
            released = attn(x)
        b, c, h, w = x.shape
        tokens = attn.group_norm(x).view(b, c, h * w).transpose(1, 2)
        by_hand = _release_attention(attn, attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens))
        by_hand = by_hand.transpose(-1, -2).reshape(b, c, h, w) + x
        assert torch.equal(released, by_hand) and not torch.equal(library, by_hand)
    assert {name: type(p) for name, p in vae.attn_processors.items()} == before


def test_the_released_decode_and_contiguous_source_latents(tmp_path):
    """decode_arithmetic=times_inverse_scale: frames = D(z · (1/s)) / 2 + 0.5 (the release's decode_latents);
    divide_by_scale: the prior's (D(z / s) + 1) / 2. And latent_layout=contiguous: the source latents are
    contiguous (the release's layout) whatever the frames' layout; as_encoded keeps the frames' layout."""
    from csd_exp.priors.attention_release import released_vae_attention

    task = _built(tmp_path / "a", "task.official_release=true")
    task.attention.remove()
    prior, vae = task.prior, task.prior.vae
    latents = torch.randn(task.latents.shape, generator=torch.Generator().manual_seed(0))
    task.latents.data.copy_(latents)
    with torch.no_grad(), released_vae_attention(vae):
        released = (vae.decode(latents * (1.0 / prior.vae_scaling_factor)).sample / 2 + 0.5).clamp(0, 1)
        ours = prior.decode(latents)
    assert torch.equal(task.edited_frames(), released) and not torch.equal(released, ours)
    divided = _built(tmp_path / "b", "task.official_release=true", "task.decode_arithmetic=divide_by_scale")
    divided.attention.remove()
    divided.latents.data.copy_(latents)
    assert torch.equal(divided.edited_frames(), ours)
    frames = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(1)).permute(0, 3, 1, 2)  # H, W, C
    source, _ = task.encode_sources(frames)
    assert source.is_contiguous() and not frames.is_contiguous()
    as_encoded = _built(tmp_path / "c", "task.official_release=true", "task.latent_layout=as_encoded")
    as_encoded.attention.remove()
    assert not as_encoded.encode_sources(frames)[0].is_contiguous()  # what the switch changes
