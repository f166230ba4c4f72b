"""Keeping Temporal's workflow sandbox cheap where Python writes no bytecode.

The sandbox imports a workflow's module afresh for every workflow run it starts (that is how it
keeps runs apart); the modules passed through (`workflow.unsafe.imports_passed_through`) are
shared. Importing normally reads the module's cached bytecode, but where the interpreter writes
none (`PYTHONDONTWRITEBYTECODE=1`, which container images commonly set and our Dockerfile does,
or an install directory the worker cannot write) nothing was ever cached, so every enrollment
that starts compiled `workflows/enrollment.py` from source again: a tenth of the worker's CPU in
a broadcast (py-spy, docs/benchmarks.md).

`cache_bytecode` compiles the workflow modules once per process into a private
directory and points the import system's bytecode lookup there (`sys.pycache_prefix`), so the
sandbox's imports load the compiled code instead.
"""

from __future__ import annotations

import atexit
import logging
import py_compile
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_cached_in: str | None = None


def cache_bytecode(package: Path) -> str | None:
    """Compile the modules of `package` (a directory: the workflows) into a private bytecode
    cache when the interpreter writes none; the cache directory, or None when Python caches
    bytecode itself. Once per process; removed at exit."""
    global _cached_in
    if not sys.dont_write_bytecode:
        return None
    if _cached_in is None or sys.pycache_prefix != _cached_in:
        # Private (0700, random name): bytecode planted by another user would be run.
        _cached_in = tempfile.mkdtemp(prefix="nurture-bytecode-")
        atexit.register(shutil.rmtree, _cached_in, ignore_errors=True)
        # Read at each import: from now on bytecode is looked up (and compiled) under it. A
        # module imported later that had bytecode beside its source is compiled once more.
        sys.pycache_prefix = _cached_in
        for source in sorted(package.glob("*.py")):
            py_compile.compile(str(source), doraise=True)
        logger.debug("workflow bytecode cached in %s", _cached_in)
    return _cached_in
