"""The run's config as a record in its folder: ``resolved_config.yaml`` and a printed ``config_tree.log``.

Hydra keeps the composed (unresolved) config and the overrides in ``.hydra/``; a reviewer wants the values
the run actually used, so the run folder also gets them resolved, as YAML and as the tree printed at
start-up (lightning-hydra-template's ``print_config_tree``), one branch per top-level group.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Branches printed first, in this order; the other top-level keys follow as they come.
TREE_ORDER = ("task", "data", "model", "guidance", "kernel", "schedule", "trainer", "metrics", "logger", "callbacks")


def config_tree(resolved: Mapping[str, Any], order: Sequence[str] = TREE_ORDER):
    """A :class:`rich.tree.Tree` of ``resolved`` (plain containers): scalars first, then one branch per node."""
    from omegaconf import OmegaConf
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    scalars = {key: value for key, value in resolved.items() if not isinstance(value, (Mapping, list))}
    if scalars:
        tree.add("run").add(Syntax(OmegaConf.to_yaml(scalars), "yaml"))
    nodes = [key for key in order if key in resolved and key not in scalars]
    nodes += [key for key in resolved if key not in scalars and key not in nodes]
    for key in nodes:
        tree.add(key).add(Syntax(OmegaConf.to_yaml(resolved[key]), "yaml"))
    return tree


def write_config_record(resolved: Mapping[str, Any], output_dir: Path, *, print_tree: bool) -> None:
    """Write ``resolved_config.yaml`` and ``config_tree.log`` into ``output_dir``; print the tree if asked."""
    from omegaconf import OmegaConf
    from rich.console import Console

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(dict(resolved)), encoding="utf-8")
    tree = config_tree(resolved)
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(tree)
    (output_dir / "config_tree.log").write_text(buffer.getvalue(), encoding="utf-8")
    if print_tree:
        Console().print(tree)
