"""Stable metric names: used verbatim as keys of ``summary.json["metrics"]`` and in logs.

Never rename these; tables and plots in ``experiments/`` and users' scripts read them. Tasks may
prefix them (``final/``, ``val/``) when logging; the evaluator and the eval command never do.
"""

CLIP_DIRECTIONAL = "clip/directional"
CLIP_IMAGE_SIMILARITY = "clip/image_similarity"
CLIP_CONSISTENCY = "clip/consistency"
CLIP_TEXT_SIMILARITY = "clip/text_similarity"
LPIPS_CONSECUTIVE = "lpips/consecutive"
FIDELITY_PSNR = "fidelity/psnr"
FIDELITY_SSIM = "fidelity/ssim"
SEAM_ERROR = "consistency/seam_error"
WARP_ERROR = "consistency/warp_error"
MODE_AGREEMENT = "consistency/mode_agreement"
# exact-score prior only (csd_exp.metrics.ideal): each particle against the clean edit of its source
IDEAL_PSNR = "fidelity/ideal_psnr"
IDEAL_SSIM = "fidelity/ideal_ssim"
IDEAL_PSNR_MAJORITY = "fidelity/ideal_psnr_majority"
IDEAL_SSIM_MAJORITY = "fidelity/ideal_ssim_majority"
IDEAL_KEYS = (IDEAL_PSNR, IDEAL_SSIM, IDEAL_PSNR_MAJORITY, IDEAL_SSIM_MAJORITY)

# new keys go last: ALL_METRIC_KEYS is the row order of csd-exp-eval's table, which then stays as it was
CLIP_KEYS = (CLIP_DIRECTIONAL, CLIP_IMAGE_SIMILARITY, CLIP_CONSISTENCY, CLIP_TEXT_SIMILARITY)
LPIPS_KEYS = (LPIPS_CONSECUTIVE,)
WEIGHT_FREE_KEYS = (FIDELITY_PSNR, FIDELITY_SSIM, SEAM_ERROR, WARP_ERROR, MODE_AGREEMENT)
ALL_METRIC_KEYS = CLIP_KEYS + LPIPS_KEYS + WEIGHT_FREE_KEYS

# Which direction is better, for tables and plots.
HIGHER_IS_BETTER = {
    CLIP_DIRECTIONAL: True,
    CLIP_IMAGE_SIMILARITY: True,
    CLIP_CONSISTENCY: True,
    CLIP_TEXT_SIMILARITY: True,
    LPIPS_CONSECUTIVE: False,
    FIDELITY_PSNR: True,
    FIDELITY_SSIM: True,
    SEAM_ERROR: False,
    WARP_ERROR: False,
    MODE_AGREEMENT: True,
    IDEAL_PSNR: True,
    IDEAL_SSIM: True,
    IDEAL_PSNR_MAJORITY: True,
    IDEAL_SSIM_MAJORITY: True,
}
