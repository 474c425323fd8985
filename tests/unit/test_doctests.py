"""The examples in the package's docstrings run (pure ones only; examples that need a
guest or QEMU are marked +SKIP where they stand)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "testbed"
MODULES = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                 .removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts
                 and p.name != "__main__.py")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed"
