"""One copy of each constraint: a constructor's annotation is what refuses a bad value, for a config (the
compose-time check, before torch loads) and for a Python caller (``@checked``) alike."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from framework_support import compose_check_verdicts
from omegaconf import OmegaConf

from csd_exp.ast_signatures import read_signature
from csd_exp.distill import (
    ConsensusKernel,
    FeatureRBFKernel,
    Guidance,
    IdentityKernel,
    RBFKernel,
    ReleasedCoupling,
    TimestepSchedule,
)
from csd_exp.schema import ConfigError, check_value

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_argument_names_the_owner_the_parameter_the_value_and_the_constraint():
    with pytest.raises(ValueError, match=r"^RBFKernel: bandwidth_multiplier=-1\.0 is not allowed: input should be "):
        RBFKernel(bandwidth_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"^TimestepSchedule: annealing='cosine' is not allowed: input should be 'co"):
        TimestepSchedule(0.02, 0.5, "cosine")  # positional arguments are checked too


def _released(release_fraction):
    return ReleasedCoupling(ConsensusKernel(), IdentityKernel(normalize_by_count=True), release_fraction)


# (constructor, its _target_, parameter, a value to refuse, a value to accept)
CASES = [
    (lambda v: TimestepSchedule(max_steps=v), "csd_exp.distill.TimestepSchedule", "max_steps", 0, 5),
    (
        lambda v: TimestepSchedule(num_train_timesteps=v),
        "csd_exp.distill.TimestepSchedule",
        "num_train_timesteps",
        1,
        2,
    ),
    (lambda v: TimestepSchedule(step_scale_from=v), "csd_exp.distill.TimestepSchedule", "step_scale_from", 1.0, 0.5),
    (_released, "csd_exp.distill.ReleasedCoupling", "release_fraction", 1.5, 1),
    (lambda v: FeatureRBFKernel(channels=v), "csd_exp.distill.FeatureRBFKernel", "channels", [], [4]),
    (lambda v: FeatureRBFKernel(channels=v), "csd_exp.distill.FeatureRBFKernel", "channels", [4, 0], (4, 8)),
    (lambda v: ConsensusKernel(target_coupling=v), "csd_exp.distill.ConsensusKernel", "target_coupling", True, 8),
    (lambda v: RBFKernel(gamma=v, bandwidth="fixed"), "csd_exp.distill.RBFKernel", "gamma", float("inf"), 0.5),
]


@pytest.mark.parametrize("build, target, parameter, bad, good", CASES)
def test_python_callers_and_configs_get_the_same_verdict(build, target, parameter, bad, good):
    annotation = read_signature(target).parameters[parameter]  # what the compose-time check reads
    with pytest.raises(ConfigError, match=parameter):
        check_value(parameter, bad, annotation)
    with pytest.raises(ValueError, match=f"{parameter}=.* is not allowed"):
        build(bad)
    check_value(parameter, good, annotation)
    build(good)


def test_hydra_lists_objects_and_dtypes_pass_as_before():
    kernel = FeatureRBFKernel(channels=OmegaConf.create([4, 8]))  # Hydra passes a config's list as a ListConfig
    assert kernel.channels == (4, 8)
    # Parameters annotated with classes a config cannot hold (kernels, schedules, dtypes) are the callers' own.
    schedule = ReleasedCoupling(ConsensusKernel(compute_dtype=torch.float64), RBFKernel(), 0.5)
    assert schedule.early.compute_dtype == torch.float64
    guidance = Guidance("random_noise", schedule, TimestepSchedule(), guidance_scale=7, image_guidance_scale=1)
    assert (guidance.guidance_scale, guidance.image_guidance_scale) == (7.0, 1.0)
    with pytest.raises(ValueError, match="compute_dtype"):  # a dtype's range stays a check of its own
        RBFKernel(compute_dtype=torch.float16)


def test_the_guidance_scales_have_no_signature_default():
    """ω_y and ω_s come from conf/config.yaml in a run; a Python caller passes them (no unreachable default)."""
    from csd_exp import priors

    owners = [Guidance.__init__] + [
        cls.make_conditioning
        for cls in vars(priors).values()
        if isinstance(cls, type) and issubclass(cls, priors.ScorePrior) and "make_conditioning" in vars(cls)
    ]
    assert len(owners) >= 7  # Guidance, the base and the six priors
    for function in owners:
        parameters = inspect.signature(function).parameters
        for name in ("guidance_scale", "image_guidance_scale"):
            assert parameters[name].default is inspect.Parameter.empty, (function.__qualname__, name)
    assert priors.Conditioning.__dataclass_fields__["image_guidance_scale"].default is dataclasses.MISSING


# The values the constructors used to refuse by hand and now state on their signatures: the compose-time check
# refuses them too, before torch is imported.
REFUSED = {
    "schedule.max_steps=0": "schedule.max_steps=0 is not allowed",
    "kernel.release_fraction=1.5": "kernel.release_fraction=1.5 is not allowed",
    "kernel.channels=[]": "kernel.channels=[] is not allowed",
    "model.view_bias=-1.0": "model.view_bias=-1.0 is not allowed",
    "model.supersample=0": "model.supersample=0 is not allowed",
}


def test_the_compose_check_refuses_what_the_constructors_refused_by_hand_before_torch_loads():
    video, generation = ["experiment=video_exact_cpu"], ["experiment=generation3d_exact_cpu"]
    runs = [
        [*video, "+schedule.max_steps=0"],
        [*video, "kernel=consensus_release", "kernel.release_fraction=1.5"],
        [*generation, "kernel=feature_rbf", "kernel.channels=[]"],
        [*generation, "model.view_bias=-1.0"],
        [*generation, "model.supersample=0"],
        [*generation, "kernel=feature_rbf", "kernel.channels=[8]"],  # accepted
    ]
    messages, torch_loaded = compose_check_verdicts(runs)
    for key, expected in REFUSED.items():
        assert messages[key] is not None and expected in messages[key], (key, messages[key])
    assert messages["kernel.channels=[8]"] is None
    assert torch_loaded is False


def test_every_marker_on_a_checked_constructor_is_readable():
    """A marker the source reader cannot read (an f-string in a ``Field`` description, a name it cannot follow)
    would silently check nothing, for a config and a Python caller alike: every ``Annotated`` / ``Literal`` and
    every alias of one on a ``@checked`` function must resolve."""
    import ast
    from typing import Any

    from csd_exp.arguments import _union_members
    from csd_exp.ast_source import Unresolved, annotation_of, load, symbol_of

    root = REPO_ROOT / "csd_exp"
    checked_functions = 0
    unreadable = []
    for path in root.rglob("*.py"):
        module_name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or "checked" not in [ast.unparse(d) for d in node.decorator_list]:
                continue
            checked_functions += 1
            module = load(module_name)
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            for argument in arguments:
                for member in _union_members(argument.annotation) if argument.annotation is not None else []:
                    marker = isinstance(member, ast.Subscript) and ast.unparse(member.value) in ("Annotated", "Literal")
                    if isinstance(member, ast.Name):
                        try:
                            marker = isinstance(symbol_of(member, module), tuple)  # an alias: ``X = Annotated[...]``
                        except Unresolved:
                            marker = False
                    if marker and annotation_of(member, module) is Any:
                        unreadable.append(f"{module_name}.{node.name}({argument.arg}: {ast.unparse(member)})")
    assert checked_functions >= 15
    assert unreadable == []
