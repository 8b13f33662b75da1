"""Suite-wide: every log line the daemon's code writes during the run (in this process, and what tests read from
daemons they start as subprocesses) is kept, unfiltered; when the session ends, any key configured anywhere in the
suite that appears in one of those lines fails the run, whichever tests ran and in whatever order."""

from __future__ import annotations

import logging
import socket
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

# Keys the tests configure (all distinctive enough to grep for).
KEYS_USED = ("test-key", "the-real-key", "amivoice-secret-4711", "test-app", "from-credentials-dir", "abcd1234")

_LOG = Path(__file__).resolve().parent / ".logs-of-the-run.txt"
_LOG_FILE = _LOG.open("w", encoding="utf-8")


def keep_daemon_output(source: str, text: str) -> None:
    """Adds what a daemon started as a subprocess wrote (its stderr log) to the lines checked for keys."""
    for line in text.splitlines():
        _LOG_FILE.write(f"{source}: {line}\n")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # a broken log call is another test's business
            return
        _LOG_FILE.write(f"{record.name}: {text}\n")


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


def lines_with_keys(text: str) -> list[tuple[str, str]]:
    """(key, line) for every log line that contains a configured key."""
    return [(key, line) for line in text.splitlines() for key in KEYS_USED if key in line]


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, object, object]:
    # A wrapper, so the check runs after every fixture (and the daemons they started) has been torn down.
    result = yield
    _LOG_FILE.close()
    leaks = lines_with_keys(_LOG.read_text(encoding="utf-8"))
    if leaks:
        report = [f"FAILED: {len(leaks)} log line(s) of the run contain a configured key:"]
        report += [f"  {key!r} in: {line[:300]}" for key, line in leaks[:20]]
        report.append(f"  (all lines: {_LOG})")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", "configured keys in the logs of the run", red=True, bold=True)
        for line in report:
            if reporter is not None:
                reporter.write_line(line, red=True, bold=True)
            else:
                print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


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
