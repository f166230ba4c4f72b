"""Find the binaries that pip installed (temporal, temporal-test-server).

They live next to the Python interpreter of the environment, which need not be on PATH (a venv
used without activating it). Nothing is ever downloaded at run time.
"""

import shutil
import sys
from pathlib import Path


def find_binary(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} is not installed in this environment; `pip install -e '.[dev]'` provides it"
        )
    return found
