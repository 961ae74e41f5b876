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
