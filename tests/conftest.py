"""Suite-wide: every log line the daemon's code writes during the run is kept, unfiltered, so the last test
can prove that no key used anywhere in the suite was ever written into a log message."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Keys the tests configure (all distinctive enough to grep for).
KEYS_USED = ("test-key", "the-real-key", "amivoice-secret-4711", "test-app", "from-credentials-dir", "abcd1234")

_LOG = Path(__file__).resolve().parent / ".logs-of-the-run.txt"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.file = _LOG.open("w", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # a broken log call is another test's business
            return
        self.file.write(f"{record.name}: {text}\n")


@pytest.fixture(scope="session", autouse=True)
def all_daemon_logs() -> Iterator[Path]:
    capture = _Capture()
    logger = logging.getLogger("asr_daemon")
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield _LOG
    finally:
        logger.removeHandler(capture)
        logger.setLevel(previous)
        capture.file.close()


# A systemd notification socket the daemon under test writes READY/WATCHDOG datagrams to.


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


@pytest.fixture
def watchdog_socket(notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """The daemon started in this process is told to ping a watchdog every 0.2 s on the returned socket."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return sock
