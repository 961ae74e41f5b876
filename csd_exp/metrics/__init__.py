"""Edit-quality metrics of the CSD paper's tables, as torchmetrics ``Metric``s (correct under DDP).

Metric keys (stable; used verbatim in ``summary.json["metrics"]``; see ``keys.py``):

================================  ==========================================================  ======
key                               definition                                                  better
================================  ==========================================================  ======
``clip/directional``              mean_f cos(E_I(edit_f) − E_I(src_f), E_T(y_tgt) − E_T(y_src))  higher
``clip/image_similarity``         mean_f cos(E_I(src_f), E_I(edit_f))                          higher
``clip/consistency``              mean_f cos(E_I(edit_f), E_I(edit_{f+1}))                     higher
``clip/text_similarity``          mean_f cos(E_I(edit_f), E_T(y_tgt)); no source needed       higher
``lpips/consecutive``             mean_f LPIPS(edit_f, edit_{f+1}) (torchmetrics, alex)        lower
``fidelity/psnr``                 mean_f PSNR(edit_f, src_f), data range 1                     higher
``fidelity/ssim``                 mean_f SSIM(edit_f, src_f), data range 1                     higher
``consistency/seam_error``        added jump across window borders (``consistency.py``)       lower
``consistency/warp_error``        masked flow-warp MSE between consecutive frames             lower
``consistency/mode_agreement``    fraction of particles in the majority exact-prior mode      higher
================================  ==========================================================  ======

Images are float tensors (F, 3, H, W) in [0, 1]. CLIP is OpenCLIP ViT-bigG-14 / laion2b_s39b_b160k
by default (paper App. D; the tag is UNCONFIRMED). Without weights (offline, not cached) ``load_clip``
and ``load_lpips`` return None after one warning and those keys are absent, never 0. Which texts
``clip/directional`` compares (captions or instruction) is an open question of the paper; see
``ClipDirectionalSimilarity``. A result with no source (generation, e.g. text-to-3D) is scored with
``EditEvaluator.evaluate(None, edited, ...)``, which returns only the keys that need no source.
"""

from csd_exp.metrics import keys
from csd_exp.metrics.clip import (
    ClipConsistency,
    ClipDirectionalSimilarity,
    ClipEncoder,
    ClipImageSimilarity,
    ClipTextSimilarity,
    ImageTextEncoder,
    directional_similarity,
    load_clip,
)
from csd_exp.metrics.consistency import (
    ModeAgreement,
    SeamError,
    WarpError,
    seam_errors,
    warp_errors,
    window_border_lines,
)
from csd_exp.metrics.evaluator import EditEvaluator
from csd_exp.metrics.fidelity import SourcePSNR, SourceSSIM
from csd_exp.metrics.keys import ALL_METRIC_KEYS, HIGHER_IS_BETTER
from csd_exp.metrics.lpips import LPIPS_NETS, ConsecutiveFrameLPIPS, load_lpips

__all__ = [
    "ALL_METRIC_KEYS",
    "HIGHER_IS_BETTER",
    "LPIPS_NETS",
    "ClipConsistency",
    "ClipDirectionalSimilarity",
    "ClipEncoder",
    "ClipImageSimilarity",
    "ClipTextSimilarity",
    "ConsecutiveFrameLPIPS",
    "EditEvaluator",
    "ImageTextEncoder",
    "ModeAgreement",
    "SeamError",
    "SourcePSNR",
    "SourceSSIM",
    "WarpError",
    "directional_similarity",
    "keys",
    "load_clip",
    "load_lpips",
    "seam_errors",
    "warp_errors",
    "window_border_lines",
]
