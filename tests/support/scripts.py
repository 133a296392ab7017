"""The project's console scripts, always from the venv that runs the tests.

A fresh machine has ``featurizer`` and ``featurizer-client`` only in ``.venv/bin``: a test that
found them through ``PATH`` passed only where a copy was installed outside the venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# What a test may find through PATH: the system's programs, never a stray featurizer install.
SYSTEM_PATH = os.pathsep.join(p for p in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
                              if not (Path(p) / "featurizer-client").exists() and not (Path(p) / "featurizer").exists())


def console_script(name: str) -> Path:
    """``name`` as installed in the test venv; fails loudly when the venv lacks it."""
    path = VENV_BIN / name
    assert path.is_file(), f"{name} is not installed in the test venv ({VENV_BIN}); run `make install`"
    return path
