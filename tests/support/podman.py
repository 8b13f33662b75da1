"""Build and run the project's container images with podman, on a base imported from a local Debian root.

No base image can be pulled on the test machines, so the slim root from ``tests/support/debian_root.py`` is
imported as ``localhost/asr-daemon-test-base:<arch>``, labelled with its recipe: a changed recipe imports
again, an unchanged one is reused. Everything runs with runc and explicit limits (crun and podman's default
limits fail on these machines' cgroup setup) and on the host's network.

    python -m tests.support.podman base [--arch arm64]   # import (or reuse) the base and print its name
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import debian_root

PODMAN = ("podman", "--runtime", "runc")
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
RECIPE_LABEL = "org.asr-daemon.test-base-recipe"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Set on both stages of the Containerfile: what prune_replaced() may remove.
SOURCE_LABEL = "org.opencontainers.image.source=https://github.com/asr-daemon/asr-daemon"


def unavailable() -> str | None:
    """Why images cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/setup installs them)"
    return None


def podman(*args: str, check: bool = True, timeout: float = 600, input: bytes | None = None) -> str:
    """Run ``podman --runtime runc ARGS``; returns stdout. A failure raises with podman's stderr."""
    done = subprocess.run([*PODMAN, *args], capture_output=True, timeout=timeout, input=input, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.decode()[-4000:]}")
    return done.stdout.decode()


def base_image(arch: str = "amd64", log: bool = True) -> str:
    """The imported slim Debian base for ``arch``, imported first if missing or made by another recipe."""
    name = f"localhost/asr-daemon-test-base:trixie-slim-{arch}"
    stamp = hashlib.sha256(debian_root.slim_recipe(arch).encode()).hexdigest()[:16]
    current = podman("image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', name, check=False)
    if current.strip() == stamp:
        return name
    root = debian_root.ensure_slim_root(arch, log=log)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        subprocess.run(
            [
                *PODMAN,
                "import",
                "--arch",
                arch,
                "--change",
                f"LABEL {RECIPE_LABEL}={stamp}",
                "--change",
                'CMD ["/bin/bash"]',
                "-",
                name,
            ],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=600,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait(timeout=60)
    return name


def build(
    tag: str,
    *,
    context: Path = REPO_ROOT,
    containerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    arch: str | None = None,
    target: str | None = None,
    timeout: float = 1800,
) -> None:
    """``podman build`` in the Docker format, so HEALTHCHECK is kept (the OCI format drops it)."""
    args = ["build", "--format", "docker", "--network", "host", *LIMITS, "--tag", tag]
    if containerfile is not None:
        args += ["--file", str(containerfile)]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    if arch is not None:
        args += ["--arch", arch]
    if target is not None:
        args += ["--target", target]
    podman(*args, str(context), timeout=timeout)


def prune_replaced() -> None:
    """Remove this project's images that a newer build replaced (untagged), keeping the tagged ones, whose
    layers are the next build's cache."""
    podman("image", "prune", "--force", "--filter", f"label={SOURCE_LABEL}", timeout=300)


def run_args(image: str, *, name: str, options: Sequence[str] = (), command: Sequence[str] = ()) -> list[str]:
    """The full ``podman run`` command line for a detached container on the host's network."""
    return [*PODMAN, "run", "--detach", "--name", name, "--network", "host", *LIMITS, *options, image, *command]


def remove(name: str) -> None:
    podman("rm", "--force", "--time", "0", name, check=False, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.podman", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="import (or reuse) the slim Debian base image and print its name")
    base.add_argument("--arch", default="amd64", choices=("amd64", "arm64"))
    args = parser.parse_args(argv)
    if (reason := unavailable()) is not None:
        print(f"podman: {reason}", file=sys.stderr)
        return 1
    print(base_image(args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
