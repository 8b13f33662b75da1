"""Virtual environments holding a vendor's own client library (from PyPI), for replaying it against the
emulators without putting it in the project's environment.

Built once per machine under ``/var/cache/asr-daemon-test/venvs/<name>`` (``ASR_DAEMON_TEST_VENVS``): a build
goes to a temporary directory beside it and is renamed into place, under a lock, so concurrent runs never see
half an environment. A stamp file names the recipe (Python version and requirements); a changed recipe builds
a new environment. Use only ``<venv>/bin/python`` (a moved environment's other scripts point at the build
directory).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
    root, stamp = CACHE / name, CACHE / f"{name}.recipe"
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir() and stamp.is_file() and stamp.read_text() == recipe(requirements):
            return root / "bin" / "python"
        build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
        try:
            _build(build, requirements)
            stamp.unlink(missing_ok=True)
            if root.exists():
                shutil.rmtree(root)
            build.rename(root)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        stamp.write_text(recipe(requirements))
        return root / "bin" / "python"


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
