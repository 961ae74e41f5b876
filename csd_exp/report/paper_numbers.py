"""The paper's published numbers, once, as data: what ``csd-exp-paper`` prints in its "paper" columns.

Every number is from arXiv v1 of Kim et al., "Collaborative Score Distillation for Consistent Visual
Synthesis" (arXiv:2307.04787), as transcribed in the project's paper notes (§3.3–3.5). Keys are the
method labels our runs carry (``method`` in ``summary.json``'s config) and the ``summary.json`` metric
names that measure what the paper's column measures. Figures 5, 7 and 8 are plots with no numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperNumbers:
    """One table of the paper: where it is, what each column is called there, and its numbers."""

    source: str  # "Table 1 (DAVIS 2017 video editing), arXiv v1"
    columns: dict[str, str]  # our metric name -> the paper's column title
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> value

    def as_paper_column(self) -> dict[str, dict[str, float]]:
        """``method -> metric -> number``, the form of ``csd-exp-report --paper-column``."""
        return {method: dict(values) for method, values in self.numbers.items()}


TABLE1 = PaperNumbers(
    source="Table 1 (video editing on DAVIS 2017), arXiv v1",
    columns={
        "clip/directional": "CLIP Directional Similarity ↑",
        "clip/consistency": "CLIP Image Consistency ↑ (consecutive frames)",
        "lpips/consecutive": "LPIPS ↓ (consecutive frames)",
    },
    numbers={
        "fatezero": {"clip/directional": 0.314, "clip/consistency": 0.948, "lpips/consecutive": 0.267},
        "pix2video": {"clip/directional": 0.230, "clip/consistency": 0.949, "lpips/consecutive": 0.283},
        "csd_edit": {"clip/directional": 0.320, "clip/consistency": 0.957, "lpips/consecutive": 0.236},
    },
)

TABLE2 = PaperNumbers(
    source="Table 2 (3D scene editing against Instruct-NeRF2NeRF, rendered novel views), arXiv v1",
    columns={
        "clip/directional": "CLIP Directional Similarity ↑",
        "clip/consistency": "CLIP Image Consistency ↑ (consecutive views)",
        "lpips/consecutive": "LPIPS ↓ (consecutive views)",
    },
    numbers={
        "in2n": {"clip/directional": 0.230, "clip/consistency": 0.994, "lpips/consecutive": 0.048},
        "csd_edit": {"clip/directional": 0.239, "clip/consistency": 0.995, "lpips/consecutive": 0.043},
    },
)

# The text-to-3D metric names are task=generation3d's (csd_exp/tasks/generation3d/metrics.py): CLIP
# image-text similarity of the colour renders and of the textureless depth renders, FID of the colour
# renders against a reference folder.
TABLE3 = PaperNumbers(
    source="Table 3 (text-to-3D with DeepFloyd IF, 30 DreamFusion prompts), arXiv v1",
    columns={
        "clip/text_similarity": "CLIP Similarity Color ↑",
        "clip/depth_text_similarity": "CLIP Similarity Geo (depth) ↑",
        "fid/rgb": "FID ↓",
    },
    numbers={
        "sds": {"clip/text_similarity": 0.437, "clip/depth_text_similarity": 0.322, "fid/rgb": 259.4},
        "csd": {"clip/text_similarity": 0.447, "clip/depth_text_similarity": 0.345, "fid/rgb": 247.1},
    },
)

# By csd-exp-paper table name (an experiment's ``paper.table``); figures have no numbers.
NUMBERS: dict[str, PaperNumbers] = {"table1": TABLE1, "table2": TABLE2, "table3": TABLE3}
