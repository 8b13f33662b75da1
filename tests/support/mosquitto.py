"""A real MQTT broker for tests: Debian's mosquitto on 127.0.0.1 and a free port, with its own config file.

``Mosquitto(tmp_path)`` writes ``mosquitto.conf`` into ``tmp_path`` (a loopback-only listener, anonymous
access, persistence in the same directory), and ``start()`` / ``stop()`` / ``kill()`` run it; stopping and
starting again keeps the port and the persisted sessions, as a broker restart does. Use it as a context
manager so the broker is always killed at the end.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

MOSQUITTO = shutil.which("mosquitto") or next(
    (path for path in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(path).exists()), None
)


def have_mosquitto() -> bool:
    return MOSQUITTO is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    def __init__(self, directory: Path, port: int | None = None, *, for_timing: bool = False) -> None:
        """``for_timing``: no persistence (saving it every second stalls the broker for as long as the disk
        takes) and no log line per message, for measuring latencies (the benchmark)."""
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (scripts/setup installs it)")
        self.directory = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto would switch to the 'mosquitto' user, which cannot use our temp dir.
        self.config.write_text(
            f"""\
listener {self.port} 127.0.0.1
allow_anonymous true
persistence {"false" if for_timing else "true"}
persistence_location {directory}/
autosave_interval 1
user {getpass.getuser()}
log_dest file {self.log}
log_type {"error" if for_timing else "all"}
""",
            encoding="utf-8",
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        assert MOSQUITTO is not None
        assert not self.running, "already running"
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"mosquitto exited ({self._process.returncode}): {err}\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the broker as a service manager would (SIGTERM: it saves its persistence file)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
