"""The documentation names only things that exist: every ``csd_exp.<module>[.<name>]`` in the README and
docs/ resolves (so a rename or a move that forgets the docs fails here)."""

from __future__ import annotations

import importlib
import re

import pytest
from framework_support import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bcsd_exp(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_csd_exp_name_in_the_docs_exists(document):
    names = sorted(set(DOTTED.findall(document.read_text())))
    missing = [name for name in names if not _resolves(name.rstrip("."))]
    assert not missing, f"{document.name} names what does not exist: {missing}"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
EXPERIMENT = re.compile(r"\bexperiment=([a-z0-9_]+)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_and_experiment_named_in_the_docs_exists(document):
    text = document.read_text()
    links = [link for link in LINK.findall(text) if "://" not in link]
    missing = [link for link in links if not (document.parent / link).exists()]
    assert not missing, f"{document.name} links to what does not exist: {missing}"
    experiments = {p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")}
    unknown = sorted(set(EXPERIMENT.findall(text)) - experiments - {"mine", "a", "b"})
    assert not unknown, f"{document.name} names experiments that do not exist: {unknown}"


def test_the_readme_is_read_at_a_glance():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    first = "\n".join(lines[:40])
    for needed in ("make demo", "make test", "data.path=", "trainer=gpu", "outputs/runs/", "Code map", "2 YAMLs"):
        assert needed in first, needed
