"""Debian root file systems for tests that need a real distribution (systemd in a container, image builds).

Built once per machine with debootstrap and cached under ``/var/cache/asr-daemon-test/roots/<suite>``
(``tests/support/build_cache.py``: a lock, a recipe stamp, a build renamed into place). Callers must not
change the cached root: boot an overlay or a copy of it (see ``tests/support/nspawn.py``).

    python -m tests.support.debian_root trixie     # build (or reuse) and print the root's path
    python -m tests.support.debian_root forky-ha   # Debian forky with Home Assistant in /opt/homeassistant
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.build_cache import cached_build

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
    return cached_build(CACHE, suite, recipe(suite), lambda target: _debootstrap(suite, target, log))


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


# --- Debian forky with Home Assistant (tests/support/home_assistant.py runs it) -------------------------------

HA_ROOT = "forky-ha"
HA_VENV = "/opt/homeassistant"
HA_VERSION = "2026.11.0"
# Home Assistant 2026.11 needs Python >= 3.14.2 (forky has it); g++ builds two of the pins below.
HA_PACKAGES = ("python3.14", "python3.14-venv", "python3.14-dev", "g++", "ca-certificates")
# What Home Assistant would install at run time for the integrations it loads (the pins of their
# manifest.json files: wyoming and its chain (ffmpeg, conversation, assist_satellite, tts, assist_pipeline), the
# frontend, and what its always-loaded integrations import (hardware, analytics, camera, infrared,
# radio_frequency); numpy as package_constraints.txt pins it): installed here, as Home Assistant runs with
# --skip-pip and without a network. No ffmpeg binary: nothing on the speech-to-text path runs it.
HA_REQUIREMENTS = (
    f"homeassistant=={HA_VERSION}",
    "home-assistant-frontend==20261028.4",
    "wyoming==1.10.2",
    "ha-ffmpeg==3.2.2",
    "hassil==3.12.1",
    "home-assistant-intents==2026.10.27",
    "gazetteer-matcher==1.1.0",
    "mutagen==1.48.1",
    "pymicro-vad==1.0.1",
    "pyspeex-noise==1.0.2",
    "psutil-home-assistant==0.0.1",
    "aiohasupervisor==0.8.1",
    "PyTurboJPEG==1.8.3",
    "numpy==2.3.2",
    "infrared-protocols==10.5.0",
    "rf-protocols==4.3.0",
)
HA_RECIPE_VERSION = 1


def ha_recipe() -> str:
    return f"v{HA_RECIPE_VERSION} forky minbase {','.join(HA_PACKAGES)} {' '.join(HA_REQUIREMENTS)}\n"


def ensure_ha_root(log: bool = True) -> Path:
    """The cached forky root with Home Assistant installed in ``HA_VENV``, built first if missing (needs root)."""
    return cached_build(CACHE, HA_ROOT, ha_recipe(), lambda target: _build_ha_root(target, log))


def chroot_command(root: Path, command: list[str], *, writable: tuple[str, ...] = ()) -> list[str]:
    """``command`` run in ``root`` with /dev and /proc, in a private mount namespace (mounts die with it).

    The root itself is mounted read-only (the cache stays as built) except for ``writable`` directories of
    the host, bound to the same path inside (``/tmp``)."""
    steps = [f"mount --bind {root} {root}", f"mount -o remount,bind,ro {root}"] if writable else []
    steps += [f"mount --rbind /dev {root}/dev", f"mount -t proc proc {root}/proc"]
    steps += [f"mount --bind {path} {root}{path}" for path in writable]
    script = " && ".join(steps) + ' && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *command]


def _build_ha_root(target: Path, log: bool) -> None:
    output = None if log else subprocess.DEVNULL
    # Bookworm's debootstrap has no forky script; sid's builds any testing suite.
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(HA_PACKAGES)}",
            "forky",
            str(target),
            MIRROR,
            "/usr/share/debootstrap/scripts/sid",
        ],
        check=True,
        stdout=output,
    )
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        shutil.copyfile(host_bundle, target / "etc/ssl/certs/ca-certificates.crt")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    env.update({key: value for key, value in os.environ.items() if key.lower().endswith("_proxy")})
    for command in (
        ["python3.14", "-m", "venv", HA_VENV],
        [f"{HA_VENV}/bin/pip", "install", "--no-cache-dir", "--disable-pip-version-check", *HA_REQUIREMENTS],
    ):
        subprocess.run(chroot_command(target, command), check=True, stdout=output, env=env)
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
    return cached_build(
        CACHE, f"trixie-slim-{arch}", slim_recipe(arch), lambda target: _build_slim_root(target, arch, log)
    )


def _build_slim_root(target: Path, arch: str, log: bool) -> None:
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--arch={arch}",
            f"--include={','.join(SLIM_PACKAGES)}",
            "trixie",
            str(target),
            MIRROR,
        ],
        check=True,
        stdout=None if log else subprocess.DEVNULL,
    )
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        shutil.copyfile(host_bundle, target / "etc/ssl/certs/ca-certificates.crt")
    for dropped in SLIM_DROPPED:
        shutil.rmtree(target / dropped, ignore_errors=True)
    for package in (target / "var/cache/apt/archives").glob("*.deb"):
        package.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.debian_root", description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", default="trixie")
    args = parser.parse_args(argv)
    if not have_tools():
        print("debian_root: needs root and debootstrap (scripts/setup installs it)", file=sys.stderr)
        return 1
    print(ensure_ha_root() if args.suite == HA_ROOT else ensure_root(args.suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
