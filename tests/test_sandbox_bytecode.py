"""The workflow sandbox imports the workflow module anew for every run: where Python writes no
bytecode, the worker must still not compile it from source each time (nurture.sandbox)."""

from __future__ import annotations

import importlib.machinery
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

import workflows
from nurture import sandbox

WORKFLOWS = Path(workflows.__path__[0])
ENROLLMENT = str(WORKFLOWS / "enrollment.py")


@pytest.fixture
def no_bytecode_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Python as PYTHONDONTWRITEBYTECODE=1 runs it; yields the sources compiled from then on."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", sys.pycache_prefix)  # restored afterwards
    monkeypatch.setattr(sandbox, "_cached_in", None)
    compiled: list[str] = []
    original = importlib.machinery.SourceFileLoader.source_to_code

    def counting(
        self: importlib.machinery.SourceFileLoader, data: bytes, path: str, **kw: Any
    ) -> CodeType:
        compiled.append(path)
        return original(self, data, path, **kw)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "source_to_code", counting)
    yield compiled


def _import_as_the_sandbox_does() -> None:
    loader = importlib.machinery.SourceFileLoader("workflows.enrollment", ENROLLMENT)
    assert loader.get_code("workflows.enrollment") is not None


def test_without_a_cache_every_import_compiles_the_workflow(
    no_bytecode_writes: list[str],
) -> None:
    sys.pycache_prefix = tempfile.mkdtemp(prefix="nurture-test-empty-")
    _import_as_the_sandbox_does()
    _import_as_the_sandbox_does()
    assert no_bytecode_writes == [ENROLLMENT, ENROLLMENT]


def test_the_worker_compiles_the_workflows_once(no_bytecode_writes: list[str]) -> None:
    cached_in = sandbox.cache_bytecode(WORKFLOWS)
    assert cached_in is not None and sys.pycache_prefix == cached_in
    assert sandbox.cache_bytecode(WORKFLOWS) == cached_in  # once per process
    no_bytecode_writes.clear()
    for _ in range(3):
        _import_as_the_sandbox_does()
    assert no_bytecode_writes == []


def test_nothing_changes_where_python_caches_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    assert sandbox.cache_bytecode(WORKFLOWS) is None
    assert sys.pycache_prefix is None
