"""Debian root file systems for tests that need a real distribution (systemd in a container, image builds).

Built once per machine with debootstrap and cached under ``/var/cache/asr-daemon-test/roots/<suite>``: a
build goes to a temporary directory beside it and is renamed into place, under a lock, so concurrent runs
never see half a root. A stamp file names the recipe; a changed recipe builds a new root. Callers must not
change the cached root: boot an overlay or a copy of it (see ``tests/support/nspawn.py``).

    python -m tests.support.debian_root trixie     # build (or reuse) and print the root's path
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("ASR_DAEMON_TEST_ROOTS", "/var/cache/asr-daemon-test/roots"))
MIRROR = "http://deb.debian.org/debian"
# What a Raspberry Pi OS Lite install has that scripts/install relies on: systemd as init, Python with venv,
# sudo (the README's commands use it), a compiler (pip builds wheels PyPI lacks), CA certificates for pip.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "sudo",
    "python3",
    "python3-venv",
    "python3-dev",
    "build-essential",
    "ca-certificates",
)
# Raise when the build steps below change in a way the package list does not show.
RECIPE_VERSION = 2


def recipe(suite: str) -> str:
    return f"v{RECIPE_VERSION} {suite} minbase {','.join(PACKAGES)}\n"


def have_tools() -> bool:
    return os.geteuid() == 0 and shutil.which("debootstrap") is not None


def ensure_root(suite: str = "trixie", log: bool = True) -> Path:
    """The cached root for ``suite``, built first if missing or made by another recipe (needs root)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / suite
    stamp = CACHE / f"{suite}.recipe"
    with (CACHE / f"{suite}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir() and stamp.is_file() and stamp.read_text() == recipe(suite):
            return root
        build = Path(tempfile.mkdtemp(prefix=f".{suite}-", dir=CACHE))
        try:
            _debootstrap(suite, build, log)
            stamp.unlink(missing_ok=True)
            if root.exists():
                shutil.rmtree(root)
            build.rename(root)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        stamp.write_text(recipe(suite))
        return root


def _debootstrap(suite: str, target: Path, log: bool) -> None:
    output = None if log else subprocess.DEVNULL
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(target),
            MIRROR,
        ],
        check=True,
        stdout=output,
    )
    # pip inside verifies PyPI with the same CA bundle as the host (a proxy's CA included).
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        shutil.copyfile(host_bundle, target / "etc/ssl/certs/ca-certificates.crt")
    # Nothing that would wait for hardware or a network the container does not have.
    for unit in (
        "systemd-networkd-wait-online.service",
        "systemd-timesyncd.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ):
        (target / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (target / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (target / "etc/hostname").write_text("asr-daemon-test\n")
    (target / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 asr-daemon-test\n::1 localhost\n")
    for package in (target / "var/cache/apt/archives").glob("*.deb"):
        package.unlink()


# A slim root to import as a container base image (``podman import``), standing in for the official Debian
# Python image users pull: Python with venv and CA certificates, no init system, no documentation.
SLIM_PACKAGES = ("python3", "python3-venv", "ca-certificates")
SLIM_RECIPE_VERSION = 1
SLIM_DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists")


def slim_recipe(arch: str) -> str:
    return f"slim v{SLIM_RECIPE_VERSION} trixie {arch} minbase {','.join(SLIM_PACKAGES)}\n"


def ensure_slim_root(arch: str = "amd64", log: bool = True) -> Path:
    """The cached slim trixie root for ``arch`` (``arm64`` needs qemu-user-static), built first if missing."""
    name = f"trixie-slim-{arch}"
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / name
    stamp = CACHE / f"{name}.recipe"
    with (CACHE / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir() and stamp.is_file() and stamp.read_text() == slim_recipe(arch):
            return root
        build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
        try:
            output = None if log else subprocess.DEVNULL
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--arch={arch}",
                    f"--include={','.join(SLIM_PACKAGES)}",
                    "trixie",
                    str(build),
                    MIRROR,
                ],
                check=True,
                stdout=output,
            )
            host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
            if host_bundle.is_file():
                shutil.copyfile(host_bundle, build / "etc/ssl/certs/ca-certificates.crt")
            for dropped in SLIM_DROPPED:
                shutil.rmtree(build / dropped, ignore_errors=True)
            for package in (build / "var/cache/apt/archives").glob("*.deb"):
                package.unlink()
            stamp.unlink(missing_ok=True)
            if root.exists():
                shutil.rmtree(root)
            build.rename(root)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        stamp.write_text(slim_recipe(arch))
        return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.debian_root", description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", default="trixie")
    args = parser.parse_args(argv)
    if not have_tools():
        print("debian_root: needs root and debootstrap (scripts/setup installs it)", file=sys.stderr)
        return 1
    print(ensure_root(args.suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
