"""The daemon under test, as its own process (``python -m asr_daemon run``), and what /proc says about it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from .load import Periodic, describe_round_trip

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based) → 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far (user, nice, system, irq, softirq, steal), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class DaemonProcess:
    """A started daemon: its process, port, and when it became ready."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    # Seconds from just before the process was spawned to the first answered describe.
    ready_seconds: float = 0.0
    # Seconds from the spawn to the listening socket accepting a connection.
    listening_seconds: float = 0.0
    exit_code: int | None = None
    stop_seconds: float | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait (the daemon drains in-flight utterances); SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, timeout)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            else:
                self.stop_seconds = time.monotonic() - started
        self.exit_code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None


async def start_daemon(config: dict[str, Any], workdir: Path, name: str, timeout: float = 20.0) -> DaemonProcess:
    """Write ``config`` to a file, start ``python -m asr_daemon run`` on it and wait until it answers describe."""
    port = int(config["wyoming"]["uri"].rsplit(":", 1)[1])
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    command = [sys.executable, "-m", "asr_daemon", "run", "--config", str(config_path)]
    spawned = time.monotonic()
    process = _spawn(command, env, log)
    daemon = DaemonProcess(process, port, log_path, _log=log)
    try:
        async with asyncio.timeout(timeout):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {process.returncode}:\n{daemon.log_tail()}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.002)
                    continue
                daemon.listening_seconds = time.monotonic() - spawned
                writer.close()
                break
            await describe_round_trip(port)
            daemon.ready_seconds = time.monotonic() - spawned
    except BaseException:
        await daemon.stop(timeout=5)
        raise
    return daemon


def _spawn(command: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


class Sampler(Periodic):
    """Samples the daemon's RSS every ``interval`` while a level runs."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(interval)
        self.pid = pid
        self.rss: list[int] = []

    async def tick(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.rss.append(memory(self.pid)["VmRSS"])
        await asyncio.sleep(self.interval)
