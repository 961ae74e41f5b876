"""experiment=generation3d_janus_exact_cpu, the open text-to-3D question (docs/coupling.md section 9): its three
arms (SDS, CSD with the latent RBF, CSD with the feature kernel) are paired by seed, differing only in the kernel.

(That the experiment composes and runs 2 steps is the glob smoke test, tests/test_framework.py.)
"""

from __future__ import annotations

import pytest
import torch
from framework_support import compose_config
from omegaconf import OmegaConf

EXPERIMENT = "experiment=generation3d_janus_exact_cpu"
ARMS = {"sds": ["guidance=sds"], "csd": [], "csd_feature": ["kernel=feature_rbf"]}


def _flat(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def test_the_three_arms_differ_only_in_the_kernel(tmp_path):
    """Same prior (view bias), field, renders, cameras, schedule, steps and seed: a per-seed difference between
    arms is the coupling's alone."""
    flat = {
        arm: _flat(OmegaConf.to_container(compose_config([EXPERIMENT, *extra], tmp_path), resolve=True))
        for arm, extra in ARMS.items()
    }
    keys = set().union(*flat.values())
    differing = {key for key in keys if len({repr(flat[arm].get(key, "<absent>")) for arm in ARMS}) > 1}
    assert differing, "the arms compose to one configuration"
    allowed_prefixes = ("kernel.", "guidance.kernel.")
    assert {k for k in differing if not k.startswith(allowed_prefixes)} == {"method", "run_name"}
    assert [flat[arm]["method"] for arm in ARMS] == ["sds", "csd", "csd"]
    assert [flat[arm]["kernel._target_"].rsplit(".", 1)[1] for arm in ARMS] == [
        "IdentityKernel",
        "RBFKernel",
        "FeatureRBFKernel",
    ]


@pytest.fixture(scope="module")
def first_steps(tmp_path_factory):
    """Step 0 of every arm at the experiment's own sizes (one step costs about 0.1 s on a CPU thread)."""
    from csd_exp.run import build_task

    steps = {}
    for arm, extra in ARMS.items():
        task = build_task(compose_config([EXPERIMENT, *extra], tmp_path_factory.mktemp(arm)))
        task.setup("fit")
        cameras, prompts = task.step_cameras(0)
        steps[arm] = (cameras, prompts, task.distillation_step(0))
    return steps


def test_the_arms_draw_the_same_cameras_and_timestep_and_only_the_coupling_differs(first_steps):
    sds_cameras, sds_prompts, sds = first_steps["sds"]
    for arm in ("csd", "csd_feature"):
        cameras, prompts, out = first_steps[arm]
        assert torch.equal(cameras.cameras.c2w, sds_cameras.cameras.c2w) and prompts == sds_prompts, arm
        assert out.t == sds.t, arm
        assert out.gradients.shape == sds.gradients.shape == (4, 3, 16, 16), arm
        # the coupling moves the views' gradients: with B = 4 different views no kernel is the identity
        assert not torch.allclose(out.gradients, sds.gradients), arm
