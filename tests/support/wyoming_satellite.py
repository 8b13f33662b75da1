"""The real ``wyoming-satellite`` (1.0.0, the release on PyPI) for tests, without a sound card.

It pins an older ``wyoming`` and ``zeroconf`` than the daemon's, so it gets a cached virtual environment of its
own (``tests/support/venvs.py``). The same environment holds ``pymicro-wakeword``, whose wheel ships its models:
the wake-word service (``tests/support/wake_service.py``) detects a real "okay nabu".

``Satellite`` runs one satellite with ``--no-zeroconf`` and a ``--mic-command`` that plays silence in real time
and, between, each WAV handed to ``say()`` (``tests/support/satellite_mic.py``).

    python -m tests.support.wyoming_satellite     # build (or reuse) the environment and print its python
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.venvs import ensure_venv

NAME = "wyoming-satellite-1.0.0"
REQUIREMENTS = ["wyoming-satellite==1.0.0", "pymicro-wakeword==2.5.0"]
SUPPORT = Path(__file__).parent


def satellite_python() -> Path:
    """The environment's interpreter, built first if needed (``VenvUnavailable`` when it cannot be)."""
    return ensure_venv(NAME, REQUIREMENTS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class _Process:
    """A child in a process group of its own, so its own children (the mic command) end with it."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        return self.process

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WakeService:
    """The test's Wyoming wake-word service (pymicro-wakeword's okay_nabu) on 127.0.0.1."""

    def __init__(self, python: Path, directory: Path) -> None:
        self.port = free_port()
        self.uri = f"tcp://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        # -P: the script's directory (tests/support, with a wyoming.py of its own) stays off the import path.
        argv = [str(python), "-P", str(SUPPORT / "wake_service.py"), "--port", str(self.port)]
        self._process = _Process(argv, directory / f"wake-{self.port}.log")

    def start(self) -> None:
        process = self._process.start()
        wait_listening(self.port, 30, process)

    def stop(self) -> None:
        self._process.kill()

    def log_text(self) -> str:
        return self._process.log.read_text(errors="replace")[-4000:] if self._process.log.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Satellite:
    """One real satellite; ``wake_uri`` set: it finds its wake word itself, unset: it streams all the time."""

    def __init__(self, python: Path, directory: Path, name: str, wake_uri: str | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.uri = f"tcp://127.0.0.1:{self.port}"
        self.directory = directory / name
        self.queue = self.directory / "say"
        self.queue.mkdir(parents=True, exist_ok=True)
        self._said = 0
        mic = shlex.join([str(python), str(SUPPORT / "satellite_mic.py"), str(self.queue)])
        argv = [
            str(python),
            "-m",
            "wyoming_satellite",
            "--uri",
            self.uri,
            "--name",
            name,
            "--no-zeroconf",
            "--mic-command",
            mic,
            "--debug",
        ]
        if wake_uri is not None:
            argv += ["--wake-uri", wake_uri, "--wake-word-name", "okay_nabu"]
        self._process = _Process(argv, self.directory / "satellite.log")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> None:
        process = self._process.start()
        wait_listening(self.port, 30, process)

    def kill(self) -> None:
        self._process.kill()

    def say(self, wav: bytes) -> None:
        """Play this WAV into the satellite's microphone next (after the chunk being played)."""
        self._said += 1
        tmp = self.queue / f".{self._said:04d}.tmp"
        tmp.write_bytes(wav)
        tmp.rename(self.queue / f"{self._said:04d}.wav")

    def played_all(self) -> bool:
        return not any(self.queue.glob("*.wav"))

    def log_text(self) -> str:
        log = self._process.log
        return log.read_text(errors="replace")[-6000:] if log.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def main() -> int:
    print(satellite_python())
    return 0


if __name__ == "__main__":
    sys.exit(main())
