"""The schema package on its own: light to import, optional for a new ``_target_``, the guidance rules on
plain configs (with and without Hydra's record of the group choices), and the reader of constructor signatures
that the checks are made of (source read with ast, never imported)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from framework_support import REPO_ROOT, compose_config

from csd_exp.schema import ConfigError, read_signature, validate_composed, validate_config


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The default composed config (panorama, csd_edit) as plain containers, as validate_config takes it."""
    from omegaconf import OmegaConf

    cfg = compose_config([], tmp_path_factory.mktemp("run"))
    return OmegaConf.to_container(cfg, resolve=True)


def test_importing_the_schema_imports_no_torch_and_no_omegaconf():
    heavy = "{'torch', 'omegaconf', 'hydra'}"
    code = f"import sys, csd_exp.schema; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"


# A compose-time check of several jobs (every task family, and the rules that read classes), in a fresh
# interpreter; prints the heavy packages it imported.
_CHECK_WITHOUT_HEAVY_IMPORTS = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path("tests").resolve()))
from framework_support import compose_config
from csd_exp.schema import ConfigError, validate_composed
jobs = [[], ["task=video"], ["task=scene3d"], ["method=in2n", "experiment=scene3d_exact_cpu"],
        ["task=video_fatezero", "model=tiny_sd"], ["task=panorama_sampling"], ["task=generation3d", "guidance=csd",
        "kernel=feature_rbf"], ["task=video_fatezero", "model=exact"], ["kernel=feature_rbf"],
        ["task.window_sampler=balanced"]]
refused = 0
for overrides in jobs:
    try:
        validate_composed(compose_config(overrides, Path(sys.argv[1])))
    except ConfigError:
        refused += 1
print(refused, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "pytorch_lightning", "diffusers"}))
"""


def test_the_compose_time_check_imports_no_torch_lightning_or_diffusers(tmp_path):
    """The constraints live on constructors whose modules import torch; the check reads their source instead."""
    result = subprocess.run(
        [sys.executable, "-c", _CHECK_WITHOUT_HEAVY_IMPORTS, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["3", "[]"], result.stdout  # three jobs refused, no heavy package imported


def test_the_run_inputs_are_checked_once_at_the_top_and_text_to_3d_takes_no_caption(plain, tmp_path):
    """prompt, source_caption, seed and trainer.max_steps reach every task as one RunInputs (csd_exp.run.build_task):
    checked as top-level keys, no longer settings of a task's node; a task that declares takes_caption = False
    (text-to-3D) refuses a caption at compose time."""
    for key, value, needle in (("seed", -1, "seed=-1"), ("source_caption", 3, "source_caption=3")):
        cfg = copy.deepcopy(plain)
        cfg[key] = value
        with pytest.raises(ConfigError, match=needle):
            validate_config(cfg)
    for key in ("seed", "inputs"):  # inputs: the object build_task passes, not a config setting either
        cfg = copy.deepcopy(plain)
        cfg["task"][key] = 0
        with pytest.raises(ConfigError, match=rf"task\.{key} is not a setting of PanoramaTask"):
            validate_config(cfg)
    validate_composed(compose_config(["task=generation3d"], tmp_path))
    with pytest.raises(ConfigError, match=r"task=(generation3d|Generation3DTask) edits no source, so source_caption="):
        validate_composed(compose_config(["task=generation3d", "source_caption=a ball"], tmp_path))


def test_a_task_without_a_schema_entry_is_left_to_its_constructor(plain):
    cfg = copy.deepcopy(plain)
    cfg["task"] = {"_target_": "my_lab.tasks.SuperResolutionTask", "scale": 4, "prompt": "x"}
    cfg["data"] = {"path": "img.png", "tile": 128}  # keys no data schema lists
    assert read_signature(cfg["task"]["_target_"]) is None  # no source found: nothing to check against

    validate_config(cfg)


def test_a_guidance_or_kernel_without_a_schema_entry_is_left_to_its_constructor(plain):
    cfg = copy.deepcopy(plain)
    cfg["kernel"] = {"_target_": "my_lab.kernels.LaplaceKernel", "scale": 2.0}
    cfg["guidance"]["kernel"] = cfg["kernel"]
    validate_config(cfg, {"guidance": "csd_edit", "kernel": "laplace"})
    cfg["guidance"] = {"_target_": "my_lab.VariationalGuidance", "lora_rank": 4}
    validate_config(cfg)


def test_sds_with_an_rbf_kernel_is_named_csd_only_when_the_preset_is_known(plain):
    cfg = copy.deepcopy(plain)
    cfg["guidance"]["baseline"] = "random_noise"  # with the default RBF kernel: what guidance=csd composes to
    validate_config(cfg, {})
    validate_config(cfg, {"guidance": "csd", "kernel": "rbf"})
    # An overriding kernel relabels the run (csd_exp/methods.py: csd or csd_edit_random_noise), never refuses it.
    validate_config(cfg, {"guidance": "sds", "kernel": "rbf"})


@pytest.mark.parametrize(
    "baseline, kernel, allowed",
    [
        ("source_branch", {"normalize_by_count": True}, True),
        ("source_branch", {"normalize_by_count": False}, False),
        ("random_noise", {"normalize_by_count": True}, False),
        ("source_branch", None, False),  # the RBF kernel of the default config
    ],
)
def test_official_scaling_only_on_the_no_svgd_path(plain, baseline, kernel, allowed):
    cfg = copy.deepcopy(plain)
    cfg["guidance"].update(baseline=baseline, official_scaling=True)
    if kernel is not None:
        cfg["kernel"] = cfg["guidance"]["kernel"] = {"_target_": "csd_exp.distill.IdentityKernel", **kernel}
    if allowed:
        validate_config(cfg)
    else:
        with pytest.raises(ConfigError, match=r"guidance\.official_scaling=true .*kernel=identity_mean"):
            validate_config(cfg)


def test_messages_name_the_guidance_by_its_axes_without_hydra(plain):
    cfg = copy.deepcopy(plain)
    cfg["guidance"]["kernel"] = {}
    with pytest.raises(ConfigError, match="guidance=source_branch baseline with no kernel .*add kernel=rbf"):
        validate_config(cfg)


def test_metrics_is_an_evaluator_node_or_empty(plain):
    """``metrics`` is built by ``_target_`` (checked by its schema); an empty node is allowed and builds none."""
    cfg = copy.deepcopy(plain)
    assert cfg["metrics"]["_target_"] == "csd_exp.metrics.EditEvaluator"
    assert cfg["metrics"]["clip"]["batch_size"] == 8  # the YAML's value is the default
    cfg["metrics"] = {}
    validate_config(cfg)
    cfg["metrics"] = {"lpips_net": "alex"}
    with pytest.raises(ConfigError, match="metrics sets lpips_net but names no _target_; use metrics=default"):
        validate_config(cfg)
    cfg["metrics"] = copy.deepcopy(plain["metrics"])
    cfg["metrics"]["clip"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match=r"metrics\.clip\.precision"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------ the signature reader
READER_MODULE = """
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import not_installed_heavy_package as heavy  # never executed: the reader only parses this file

if TYPE_CHECKING:
    from pydantic import Field

    from csd_exp.schema.fields import PositiveInt, Seed

MODES = ("fast", "exact")
Mode = Literal[MODES]


class Base:
    uses_guidance = True

    def __init__(self, prior: heavy.Prior, *, size: PositiveInt = 8, seed: Seed = 0):
        pass


class Sampler(Base):
    uses_guidance = False

    def __init__(self, prior, mode: Mode, ratio: Annotated[float, Field(gt=0, le=1)] | heavy.Tensor = 1.0, **kwargs):
        super().__init__(prior, **kwargs)


def build(path: str, **options) -> Sampler:
    return Sampler(None, **options)


def opaque(**options):
    return heavy.make(**options)
"""


@pytest.fixture
def reader_module(tmp_path, monkeypatch):
    from csd_exp import ast_signatures as signatures
    from csd_exp import ast_source as source

    (tmp_path / "reader_probe.py").write_text(READER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for cache in (source.module_file, source.load, source.find, signatures.read_signature):
        cache.cache_clear()
    yield "reader_probe"
    assert "reader_probe" not in sys.modules, "the reader must never import the module it reads"


def test_the_reader_turns_markers_into_types_and_follows_kwargs(reader_module):
    from csd_exp.schema import check_target

    signature = read_signature(f"{reader_module}.Sampler")
    assert set(signature.parameters) == {"prior", "size", "seed", "mode", "ratio"} and not signature.open
    check_target("task", {"_target_": f"{reader_module}.Sampler", "mode": "fast", "ratio": 0.5, "size": 3})
    for key, value, needle in [
        ("mode", "slow", "'fast' or 'exact'"),
        ("ratio", 1.5, "less than or equal to 1"),  # the union dropped the class a config cannot hold
        ("size", 0, "greater than or equal to 1"),  # forwarded through **kwargs to Base
        ("seed", 2**32, "less than or equal to 4294967295"),
        ("size", 2.0, "valid integer"),  # strict: no float for an integer
    ]:
        with pytest.raises(ConfigError, match=rf"task\.{key}={value!r} is not allowed: .*{needle}"):
            check_target("task", {"_target_": f"{reader_module}.Sampler", key: value})
    with pytest.raises(
        ConfigError, match=r"task\.sise is not a setting of Sampler; its settings are: prior, size, seed, mode, ratio"
    ):
        check_target("task", {"_target_": f"{reader_module}.Sampler", "sise": 3})


def test_the_reader_follows_a_builder_and_stays_open_where_it_cannot(reader_module):
    from csd_exp.ast_signatures import class_attribute, is_a
    from csd_exp.ast_source import find

    assert set(read_signature(f"{reader_module}.build").parameters) >= {"path", "mode", "size"}
    assert read_signature(f"{reader_module}.opaque").open  # **options go where the reader cannot follow
    sampler = find(f"{reader_module}.Sampler")
    assert is_a(f"{reader_module}.build", sampler) and not is_a(f"{reader_module}.Base", sampler)
    assert class_attribute(f"{reader_module}.Sampler", "uses_guidance") is False
    assert class_attribute(f"{reader_module}.Base", "uses_guidance") is True


def test_a_model_node_s_family_and_latent_factor_come_from_the_class_it_builds(tmp_path):
    """Through the package's re-export and a tiny factory's return annotation to the class (DeepFloyd IF is in
    pixel space: its ``latent_scale_factor`` 1 wins over the hub id's default 8 and the tiny VAE's 2)."""
    from csd_exp.ast_source import module_constant
    from csd_exp.prior_families import latent_factor, prior_family

    def facts(target: str, **node):
        return prior_family({"_target_": target, **node}), latent_factor({"_target_": target, **node})

    assert facts("csd_exp.priors.DeepFloydIFPrior", pretrained_model_name_or_path="DeepFloyd/IF") == (
        "text_to_image",
        1,
    )
    assert facts("csd_exp.priors.tiny_deepfloyd_if_prior", cache_dir="c") == ("text_to_image", 1)
    assert facts("csd_exp.priors.tiny_stable_diffusion_depth_prior", cache_dir="c") == ("depth", 2)
    assert facts("csd_exp.priors.tiny_instruct_pix2pix_prior", cache_dir="c") == ("instruction", 2)
    assert facts("csd_exp.priors.StableDiffusionPrior", pretrained_model_name_or_path="hub/id") == ("text_to_image", 8)
    assert facts("csd_exp.priors.ExactScorePrior", downsample=4) == ("instruction", 4)
    assert facts("my_lab.priors.Unknown") == (None, None) and prior_family(None) is None
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"block_out_channels": [4, 8, 16]}')
    assert (
        latent_factor({"_target_": "csd_exp.priors.StableDiffusionPrior", "pretrained_model_name_or_path": tmp_path})
        == 4
    )
    assert module_constant("csd_exp.priors.tiny", "TINY_BLOCK_OUT_CHANNELS") == (32, 64)
    assert module_constant("csd_exp.priors.tiny", "tiny_stable_diffusion_prior", "none") == "none"  # a function


def test_the_reader_names_the_parameters_a_constructor_requires(reader_module):
    """What a config node must set (the rule "a guidance that takes a kernel needs one" reads it)."""
    from csd_exp.ast_signatures import required_parameters

    assert required_parameters(f"{reader_module}.Sampler") == {"prior", "mode"}  # its own, not the forwarded
    assert required_parameters(f"{reader_module}.Base") == {"prior"}
    assert required_parameters(f"{reader_module}.build") == {"path"}
    assert required_parameters(f"{reader_module}.Missing") is None
    assert required_parameters("csd_exp.distill.Guidance") >= {"baseline", "kernel"}
    assert required_parameters("csd_exp.tasks.PanoramaRegionTask") == {
        "prior",
        "guidance",
        "optimizer",
        "inputs",
        "data",
    }
    # a dataclass: its fields without a default (its ClassVar ``reads`` is no field)
    assert required_parameters("csd_exp.data.sources.LoadedClip") == {"frames", "original_size", "fps", "flow"}
    assert required_parameters("csd_exp.data.ImageSource") == frozenset()
