"""Virtual environments holding a vendor's own client library (from PyPI), for replaying it against the
emulators without putting it in the project's environment.

Built once per machine under ``/var/cache/asr-daemon-test/venvs/<name>`` (``ASR_DAEMON_TEST_VENVS``; see
``tests/support/build_cache.py``); the recipe stamp names the Python version and the requirements. Use only
``<venv>/bin/python`` (a moved environment's other scripts point at the build directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.build_cache import cached_build

CACHE = Path(os.environ.get("ASR_DAEMON_TEST_VENVS", "/var/cache/asr-daemon-test/venvs"))
# Raise when the build steps below change in a way the requirements do not show.
RECIPE_VERSION = 1
PIP_TIMEOUT = 600


class VenvUnavailable(RuntimeError):
    """The environment cannot be built here (no cache directory, no network to PyPI, no compiler)."""


def recipe(requirements: list[str]) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    return f"v{RECIPE_VERSION} python{version} {' '.join(sorted(requirements))}\n"


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """The cached environment ``name`` with ``requirements`` installed; its ``bin/python``."""
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VenvUnavailable(f"cannot create {CACHE}: {exc}") from None
    venv = cached_build(CACHE, name, recipe(requirements), lambda target: _build(target, requirements))
    return venv / "bin" / "python"


def _build(target: Path, requirements: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise VenvUnavailable(f"pip install {' '.join(requirements)} failed: {done.stderr.strip()[-600:]}")
