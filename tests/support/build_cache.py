"""Things the tests build once per machine (Debian roots, virtual environments) and reuse across runs.

Each lives in ``cache/<name>``. A build goes to a temporary directory beside it and is renamed into place under
a lock, so concurrent runs never see half a build. A stamp file ``cache/<name>.recipe`` names what was built; a
changed recipe builds anew. A stale build is renamed aside before it is removed, so a crash mid-removal never
leaves a half-deleted tree under the real name.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cached_build(cache: Path, name: str, recipe: str, build: Callable[[Path], None]) -> Path:
    """``cache/name``, made by ``build(target)`` unless a build of ``recipe`` is already there."""
    cache.mkdir(parents=True, exist_ok=True)
    final, stamp = cache / name, cache / f"{name}.recipe"
    with (cache / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir() and stamp.is_file() and stamp.read_text() == recipe:
            return final
        target = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        try:
            build(target)
            stamp.unlink(missing_ok=True)
            if final.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=cache))
                final.rename(stale / name)
                shutil.rmtree(stale, ignore_errors=True)
            target.rename(final)
        finally:
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
        stamp.write_text(recipe)
        return final
