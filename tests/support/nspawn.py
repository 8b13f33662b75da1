"""Boot a Debian root under its own systemd with systemd-nspawn, sharing the machine's network, and run
commands inside it.

The cached root (``tests/support/debian_root.py``) is the read-only lower layer of an overlay, so every boot
starts from the clean root and leaves it untouched. ``booted()`` always powers the container off, kills what
is left and unmounts, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]


def unavailable() -> str | None:
    """Why a container cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [tool for tool in ("systemd-nspawn", "nsenter", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/setup installs them)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "needs /sys/fs/cgroup"
    return None


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    init_pid: int
    root: Path
    console: Path

    def run(self, command: str, *, check: bool = True, timeout: float = 120, input: str | None = None) -> str:
        """Run a shell command inside, as root with a clean environment; returns its stdout (stderr merged)."""
        done = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.init_pid),
                "-m",
                "-u",
                "-i",
                "-p",
                "--",
                "env",
                "-i",
                *_ENV,
                "bash",
                "-c",
                command,
            ],
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"in the container, `{command}` exited {done.returncode}:\n{done.stdout[-6000:]}")
        return done.stdout

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        args = " ".join(f"-p {shlex.quote(p)}" for p in properties)
        text = self.run(f"systemctl show {args} {shlex.quote(unit)}")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _container_init(nspawn_pid: int) -> int | None:
    """The host PID of the process that is PID 1 in a namespace below ``nspawn_pid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        nspid = fields.get("NSpid", "").split()
        if len(nspid) >= 2 and nspid[-1] == "1" and _descends_from(int(entry.name), nspawn_pid):
            return int(entry.name)
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


@contextlib.contextmanager
def booted(lower: Path, binds: Sequence[tuple[Path, str]] = (), boot_timeout: float = 120) -> Iterator[Container]:
    """Boot ``lower`` (not modified) with ``binds`` (host path, container path) mounted read-write."""
    work = Path(tempfile.mkdtemp(prefix="asr-daemon-nspawn-"))
    upper, scratch, merged = work / "upper", work / "work", work / "root"
    for directory in (upper, scratch, merged):
        directory.mkdir()
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={scratch}",
            str(merged),
        ],
        check=True,
    )
    console = work / "console.log"
    nspawn: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None
    try:
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        command = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=read-only",
            "-D",
            str(merged),
            "--boot",
        ]
        for source, target in binds:
            command.insert(-1, f"--bind={source}:{target}")
        with console.open("wb") as out:
            nspawn = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + boot_timeout
        while init_pid is None:
            if nspawn.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"systemd-nspawn did not start the container:\n{console.read_text()[-4000:]}")
            time.sleep(0.2)
            init_pid = _container_init(nspawn.pid)
        container = Container(nspawn, init_pid, merged, console)
        # The manager's socket appears a moment after PID 1 starts; then wait for the boot to finish.
        wait = "until [ -S /run/systemd/private ]; do sleep 0.2; done; systemctl is-system-running --wait"
        state = container.run(
            f"timeout {int(boot_timeout)} bash -c {shlex.quote(wait)}", check=False, timeout=boot_timeout + 10
        ).strip()
        if state not in ("running", "degraded"):
            raise AssertionError(f"the container did not boot (state {state!r}):\n{console.read_text()[-4000:]}")
        yield container
    finally:
        _shut_down(nspawn, init_pid)
        subprocess.run(["umount", "-l", str(merged)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def _shut_down(nspawn: subprocess.Popen[bytes] | None, init_pid: int | None) -> None:
    if nspawn is None:
        return
    if nspawn.poll() is None and init_pid is not None:
        # systemd's "poweroff" signal; the container stops its units, then nspawn exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, signal.SIGRTMIN + 4)
        with contextlib.suppress(subprocess.TimeoutExpired):
            nspawn.wait(timeout=30)
    if nspawn.poll() is None:
        if init_pid is not None:
            # Killing a PID namespace's init kills everything in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)
        nspawn.kill()
        nspawn.wait(timeout=30)
