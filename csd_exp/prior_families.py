"""The prior family and the latent factor of a model node, read from its class's source without importing it
(:mod:`ast`), so that the compose-time check stays free of torch (csd_exp/methods.py uses both)."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

INSTRUCTION, TEXT_TO_IMAGE, DEPTH = "instruction", "text_to_image", "depth"


def _source_file(module: str) -> Path | None:
    """The file of ``module``, found without importing it (only its top-level package's spec is read)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        path = Path(location, *rest)
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return str(node.module)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _imported(module: str, path: Path, body: list[ast.stmt], name: str) -> tuple[str, str] | None:
    for node in body:
        if isinstance(node, ast.If):  # if TYPE_CHECKING: imports
            found = _imported(module, path, node.body, name)
            if found:
                return found
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _absolute(module, path, node), alias.name
    return None


@lru_cache(maxsize=64)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _family_of(module: str, name: str, depth: int = 0) -> str | None:
    path = _source_file(module)
    if path is None or depth > 10:
        return None
    tree = _parsed(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for statement in node.body:  # a family the class declares (a depth prior), before the default rule
                if isinstance(statement, ast.AnnAssign | ast.Assign) and isinstance(statement.value, ast.Constant):
                    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                    if any(isinstance(t, ast.Name) and t.id == "prior_family" for t in targets):
                        return str(statement.value.value)
            for statement in node.body:
                targets = (
                    statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
                )
                value = getattr(statement, "value", None)
                if any(isinstance(t, ast.Name) and t.id == "supports_image_condition" for t in targets):
                    if isinstance(value, ast.Constant) and isinstance(value.value, bool):
                        return INSTRUCTION if value.value else TEXT_TO_IMAGE
            for base in node.bases:
                base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                found = base_name and _family_in(module, path, tree.body, base_name, depth)
                if found:
                    return found
            return None
        if isinstance(node, ast.FunctionDef) and node.name == name:  # a factory: the class it returns
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and isinstance(inner.value, ast.Call):
                    called = inner.value.func
                    called_name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", None)
                    body = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)] + list(tree.body)
                    found = called_name and _family_in(module, path, body, called_name, depth)
                    if found:
                        return found
            return None
    imported = _imported(module, path, tree.body, name)
    return _family_of(*imported, depth + 1) if imported else None


def _family_in(module: str, path: Path, body: list[ast.stmt], name: str, depth: int) -> str | None:
    imported = _imported(module, path, body, name)
    if imported:
        return _family_of(*imported, depth + 1)
    return _family_of(module, name, depth + 1)


def prior_family(model: Mapping[str, Any] | None) -> str | None:
    """``instruction`` (the prior conditions on an image: InstructPix2Pix, the exact prior), ``text_to_image``
    (Stable Diffusion, DeepFloyd IF, the exact generation prior), the family a class declares as its
    ``prior_family`` (``depth``: Stable Diffusion 2 depth-to-image), or None (no model, or a class not found)."""
    target = str((model or {}).get("_target_") or "")
    if "." not in target:
        return None
    module, _, name = target.rpartition(".")
    return _family_of(module, name)


def _module_constant(module: str, name: str) -> Any:
    path = _source_file(module)
    for node in _parsed(path).body if path else ():
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def latent_factor(model: Mapping[str, Any] | None) -> int | None:
    """Image pixels per latent pixel of a model node, read without building it: the exact priors'
    ``downsample``; a class's own ``latent_scale_factor`` (DeepFloyd IF: 1); a diffusers folder's VAE
    (2^(levels - 1) from vae/config.json; 8, Stable Diffusion's, for a hub id); the tiny pipelines' VAE
    (csd_exp/priors/tiny.py). None where unknown."""
    import json

    model = model or {}
    if model.get("downsample") is not None:
        return int(model["downsample"])
    target = str(model.get("_target_") or "")
    module, _, name = target.rpartition(".")
    path = _source_file(module) if module else None
    for node in _parsed(path).body if path else ():
        if isinstance(node, ast.ClassDef) and node.name == name:
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and isinstance(statement.value, ast.Constant)
                    and any(getattr(t, "id", None) == "latent_scale_factor" for t in statement.targets)
                ):
                    return int(statement.value.value)
    weights = model.get("pretrained_model_name_or_path")
    if weights:
        config = Path(str(weights), "vae", "config.json")
        if config.is_file():
            return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)
        return 8
    if "cache_dir" in model and module:  # a tiny pipeline built from csd_exp/priors/tiny.py
        channels = _module_constant("csd_exp.priors.tiny", "TINY_BLOCK_OUT_CHANNELS")
        return 2 ** (len(channels) - 1) if channels else None
    return None
