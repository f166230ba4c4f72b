"""Keeping Temporal's workflow sandbox cheap: one code object per workflow module per process.

The sandbox imports a workflow's module afresh for every workflow run it starts (that is how it
keeps runs apart); the modules passed through (`workflow.unsafe.imports_passed_through`) are
shared. A normal import reads the module's bytecode and unmarshals new code objects each time,
or, where the interpreter writes no bytecode (`PYTHONDONTWRITEBYTECODE=1`, which container
images commonly set and our Dockerfile does, or an install directory the worker cannot write),
compiles the source again: a tenth of the worker's CPU in a broadcast (py-spy,
docs/benchmarks.md). Each cached run then also kept its own copy of the code: about 90 KB for
`workflows/enrollment.py`, against 22 KB for the module's own objects.

`share_workflow_code` puts a finder first on `sys.meta_path` for the workflow package's modules
(the sandbox's imports go through it too) whose loader compiles each module once and runs that
same code object in every new module. Code objects are immutable, so sharing them shares
nothing a run could change: each run still gets its own module, classes and functions.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, ModuleType

logger = logging.getLogger(__name__)


class SharedCode(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the modules of one package directory and runs each from one compiled code object."""

    def __init__(self, package: str, directory: Path) -> None:
        self.package = package
        self.directory = directory
        self._code: dict[str, CodeType] = {}
        self._lock = threading.Lock()  # the sandbox runs workflow code in threads
        self.compiled: list[str] = []  # the modules compiled, once each
        self.executed = 0  # modules run from shared code

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != self.package or not name:
            return None
        source = self._source(fullname)
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source, loader=self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        exec(self.code(module.__name__), module.__dict__)
        with self._lock:
            self.executed += 1

    def code(self, fullname: str) -> CodeType:
        with self._lock:
            code = self._code.get(fullname)
            if code is None:
                source = self._source(fullname)
                # dont_inherit: the module's own `from __future__` lines decide, not ours.
                code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
                self._code[fullname] = code
                self.compiled.append(fullname)
            return code

    def get_source(self, fullname: str) -> str:  # for tracebacks and inspect
        return self._source(fullname).read_text()

    def _source(self, fullname: str) -> Path:
        return self.directory / f"{fullname.rpartition('.')[2]}.py"


_installed: SharedCode | None = None


def share_workflow_code(package: ModuleType) -> SharedCode:
    """Serve the modules of `package` (the workflows) from one code object each, for this
    process; the finder (installed once, first on `sys.meta_path`)."""
    global _installed
    directory = Path(package.__path__[0])
    if _installed is None or (_installed.package, _installed.directory) != (
        package.__name__,
        directory,
    ):
        if _installed is not None and _installed in sys.meta_path:
            sys.meta_path.remove(_installed)
        _installed = SharedCode(package.__name__, directory)
        sys.meta_path.insert(0, _installed)
        logger.debug("workflow modules of %s run from shared code", package.__name__)
    elif _installed not in sys.meta_path:
        sys.meta_path.insert(0, _installed)
    return _installed
