"""The guidance's baseline axis: what is subtracted from the guided prediction to form the residual Δ_i.

A baseline is a class named by ``_target_`` (``guidance.baseline``); the presets name the two of the paper by
their short names, which :func:`make_baseline` maps to the classes here:

==================  ==================  ====================================================  ================
name                class               Δ_i                                                   paper
==================  ==================  ====================================================  ================
``random_noise``    :class:`RandomNoise`  ε̂(x_t^i; y) − ε^i                                  Eq. 5, Eq. 8
``source_branch``   :class:`SourceBranch` ε̂^{ω_y,ω_s}(x_t^i; x̃, y) − ε̂^{ω_s}(x̃_t^i; x̃)      Eq. 9 (CSD-Edit)
==================  ==================  ====================================================  ================

A new guidance method whose residual differs (DDS with a source text, NFSD, a learned baseline) is one subclass
of :class:`Baseline` and one YAML naming it by ``_target_``; t, ε, the kernel and everything after the combiner
stay the guidance's.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor


class Baseline:
    """What :class:`csd_exp.distill.Guidance` subtracts from the guided prediction (one ``predict`` per step).

    ``uses_source``: the baseline reads the particles' ``source_latents`` and conditions a source branch, so
    ``guidance.source_prompt`` applies to it (the guidance refuses a source prompt otherwise) and tasks
    without a source (text-to-3D) refuse it.

    ``name``: the short name the method labels and the compose-time check read from the source
    (csd_exp/guidance_names.py): a class declaring ``name = "source_branch"`` is labelled and checked as CSD-Edit's
    source branch (``csd_edit``, ``dds``, ``official_scaling``), one declaring none by its class name. A subclass
    inherits it: one whose residual differs from its base's declares its own.
    """

    uses_source: bool = False

    def predict(
        self, prior, noisy_latents: Tensor, noise: Tensor, t: int, cond, source_latents: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(guided target prediction, baseline) of every particle, as float32; Δ = target − baseline.

        ``noisy_latents`` = add_noise(latents, ``noise``, t); ``cond`` is the prior's conditioning of the
        step's prompt; ``source_latents`` the particles' sources x̃ (None where the task has none).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))


class RandomNoise(Baseline):
    """Δ_i = ε̂(x_t^i; y) − ε^i: the ε that noised the particles is the baseline (SDS Eq. 5, CSD Eq. 8)."""

    name = "random_noise"

    def predict(self, prior, noisy_latents, noise, t, cond, source_latents):
        prediction = prior.predict_noise(noisy_latents, t, cond)
        return prediction.target.float(), noise.float()


class SourceBranch(Baseline):
    """Δ_i = ε̂^{ω_y,ω_s}(x_t^i; x̃, y) − ε̂^{ω_s}(x̃_t^i; x̃): the prediction of the source x̃ noised with the
    same t and ε (CSD-Edit, Eq. 9); with ``guidance.source_prompt`` the source branch is DDS-style."""

    name = "source_branch"
    uses_source = True

    def predict(self, prior, noisy_latents, noise, t, cond, source_latents):
        if source_latents is None:
            raise ValueError(
                "baseline 'source_branch' needs source_latents (the source x~ to noise with the "
                f"same t and eps), got None for latents of shape {tuple(noisy_latents.shape)}"
            )
        if source_latents.shape != noisy_latents.shape:
            raise ValueError(
                f"source_latents must match latents {tuple(noisy_latents.shape)}, got {tuple(source_latents.shape)}"
            )
        source_noisy = prior.add_noise(source_latents.detach(), noise, t)
        prediction = prior.predict_noise(noisy_latents, t, cond, source_noisy_latents=source_noisy)
        if prediction.source is None:
            raise ValueError(f"prior {type(prior).__name__} returned no source prediction for baseline 'source_branch'")
        return prediction.target.float(), prediction.source.float()


#: The short names the presets and ``guidance.baseline=<name>`` overrides use: the annotation of
#: ``Guidance(baseline=...)`` that the compose-time check reads (tests/distill/test_baselines.py keeps it
#: equal to :data:`BASELINES`).
BaselineName = Literal["random_noise", "source_branch"]
BASELINES: dict[str, type[Baseline]] = {"random_noise": RandomNoise, "source_branch": SourceBranch}


def make_baseline(baseline: str | Baseline) -> Baseline:
    """A :class:`Baseline` from itself or its short name (see :data:`BASELINES`)."""
    if isinstance(baseline, Baseline):
        return baseline
    if isinstance(baseline, str) and baseline in BASELINES:
        return BASELINES[baseline]()
    raise ValueError(
        f"baseline must be one of {tuple(BASELINES)} or a csd_exp.distill.baselines.Baseline (a config node with "
        f"its _target_), got {baseline!r}"
    )
