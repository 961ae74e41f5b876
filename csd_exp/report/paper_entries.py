"""What ``csd-exp-paper`` runs for each of the paper's figures and tables, as data.

An entry is a list of methods and the overrides every job shares. A method is what selects it in the
config (an experiment, other group choices, a few values); ``csd-exp-paper`` writes each method as a
generated experiment (``experiment=<name>``: csd_exp/report/paper_launch.py), so one Hydra multirun covers every
method × swept value × input × seed, in one W&B group, through any Hydra launcher. A method's ``name`` is
the ``method`` label its runs carry (the guidance preset, or a baseline's own label), which is how the
report finds its rows and the paper's numbers.

Adding a method to an entry (e.g. when a baseline task lands) is one more ``Method`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from csd_exp.report.paper_numbers import TABLE1, TABLE2, TABLE3, PaperNumbers

CLIP_DIRECTIONAL = "clip/directional"
CLIP_IMAGE_SIMILARITY = "clip/image_similarity"
CLIP_CONSISTENCY = "clip/consistency"
LPIPS_CONSECUTIVE = "lpips/consecutive"


@dataclass(frozen=True)
class Method:
    name: str  # the runs' method label, and the name of its generated experiment
    title: str  # as the paper names it
    groups: dict[str, str]  # config group -> option; "experiment" is included first, e.g. "paper_3d_table2"
    values: dict[str, Any] = field(default_factory=dict)  # nested config values, e.g. {"task": {"method": "x"}}


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    methods: tuple[Method, ...]
    sweep: tuple[str, ...]  # Hydra overrides of every job; one the user gives for the same key replaces it
    metrics: tuple[str, ...]  # the paper's columns, first in the table
    figure: str  # "scatter" (x / y metrics per method over the swept key), "grid" (outputs) or "bars"
    paper: PaperNumbers | None = None
    scatter: tuple[str, str] = (CLIP_DIRECTIONAL, CLIP_IMAGE_SIMILARITY)  # (x, y) of a "scatter" figure
    shipped_inputs: str | None = None  # a list in csd_exp.conf (conf/paper/), used with --root
    needs_inputs: bool = False  # runs over a list of inputs only (no bundled default input)
    notes: tuple[str, ...] = ()


FIG5 = Entry(
    name="fig5",
    title="Fig. 5: panorama editing, CLIP image similarity against CLIP directional similarity over ω_y",
    methods=(
        Method("csd_edit", "CSD-Edit", {"experiment": "paper_panorama_fig5"}),
        Method(
            "multidiffusion",
            "InstructPix2Pix + MultiDiffusion",
            {"experiment": "paper_panorama_fig5_sampling"},
            {"task": {"method": "multidiffusion"}},
        ),
        Method(
            "downscaled",
            "InstructPix2Pix, downscaled to one window",
            {"experiment": "paper_panorama_fig5_sampling"},
            {"task": {"method": "downscaled"}},
        ),
    ),
    sweep=("guidance.guidance_scale=3.0,5.0,7.5,10.0",),
    metrics=(CLIP_DIRECTIONAL, CLIP_IMAGE_SIMILARITY),
    figure="scatter",
    notes=("The paper gives Fig. 5 as a plot only (32 panoramas x 5 stylisation prompts, ω_s = 1.5).",),
)

FIG7_8 = Entry(
    name="fig7_8",
    title="Figs. 7-8: ablations of CSD-Edit (without SVGD; random-noise baseline instead of the source branch)",
    methods=(
        Method("csd_edit", "CSD-Edit", {"experiment": "paper_panorama_fig5", "guidance": "csd_edit"}),
        Method(
            "csd_edit_no_svgd",
            "CSD-Edit without SVGD",
            {"experiment": "paper_panorama_fig5", "guidance": "csd_edit_no_svgd"},
        ),
        Method(
            "csd_edit_random_noise",
            "CSD-Edit with the random-noise baseline",
            {"experiment": "paper_panorama_fig5", "guidance": "csd_edit_random_noise"},
        ),
    ),
    sweep=("seed=0,1,2",),
    metrics=(CLIP_DIRECTIONAL, CLIP_IMAGE_SIMILARITY),
    figure="grid",
    notes=(
        "Fig. 8 / App. C is the panorama ablation (this entry's default); Fig. 7 is video: add "
        "experiment=paper_video_table1 (or experiment=video_exact_cpu on a CPU).",
    ),
)

TABLE1_ENTRY = Entry(
    name="table1",
    title="Table 1: video editing on DAVIS 2017, CSD-Edit against FateZero and Pix2Video",
    methods=(
        Method("csd_edit", "CSD-Edit", {"experiment": "paper_video_table1"}),
        # The text-to-image baselines run on their tasks' Stable Diffusion (model=sd15) at the paper's
        # 24 frames of 512 px, as CSD-Edit's experiment.
        Method("fatezero", "FateZero", {"task": "video_fatezero", "trainer": "gpu"}, {"data": {"max_frames": 24}}),
        Method("pix2video", "Pix2Video", {"task": "video_pix2video", "trainer": "gpu"}, {"data": {"max_frames": 24}}),
    ),
    sweep=(),
    metrics=(CLIP_DIRECTIONAL, CLIP_CONSISTENCY, LPIPS_CONSECUTIVE),
    figure="bars",
    paper=TABLE1,
    shipped_inputs="paper/davis_table1.yaml",
    needs_inputs=True,
    notes=("Means pool every clip and seed of a method; the paper does not say how it averaged.",),
)

TABLE2_ENTRY = Entry(
    name="table2",
    title="Table 2: 3D scene editing, CSD-Edit against Instruct-NeRF2NeRF",
    methods=(
        Method("csd_edit", "CSD-Edit", {"experiment": "paper_3d_table2"}),
        Method("in2n", "Instruct-NeRF2NeRF", {"experiment": "paper_3d_table2_in2n"}),
    ),
    sweep=(),
    metrics=(CLIP_DIRECTIONAL, CLIP_CONSISTENCY, LPIPS_CONSECUTIVE),
    figure="bars",
    paper=TABLE2,
    notes=("The paper's scenes and prompts for the averages are not stated (Fangzhou is shown).",),
)

TABLE3_ENTRY = Entry(
    name="table3",
    title="Table 3: text-to-3D generation, CSD against SDS on the same seeds",
    methods=(
        Method("csd", "CSD", {"experiment": "paper_t23d_table3"}),
        Method("sds", "SDS", {"experiment": "paper_t23d_table3", "guidance": "sds", "kernel": "identity"}),
    ),
    sweep=(),
    metrics=tuple(TABLE3.columns),
    figure="bars",
    paper=TABLE3,
)

ENTRIES: dict[str, Entry] = {entry.name: entry for entry in (FIG5, FIG7_8, TABLE1_ENTRY, TABLE2_ENTRY, TABLE3_ENTRY)}
