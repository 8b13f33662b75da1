"""What installs and runs the daemon as a service: the unit file, the install script, systemd's protocol."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asr_daemon.service.notify import SystemdNotifier, watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "asr-daemon.service"


def unit_with_exec(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's entry point (verify checks that it exists)."""
    exe = Path(sys.executable).parent / "asr-daemon"
    text = UNIT.read_text().replace("/opt/asr-daemon/venv/bin/asr-daemon", str(exe))
    path = tmp_path / "asr-daemon.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit_with_exec(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Unknown" not in done.stderr, done.stderr


def test_unit_security_exposure_is_ok(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_with_exec(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_keeps_what_the_daemon_needs() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DeviceAllow=char-alsa rw",
        "DevicePolicy=closed",
        "StateDirectory=asr-daemon",
        "SupplementaryGroups=audio",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        # /etc/asr-daemon is root's: the dynamic user reads the config through its credential copy.
        "LoadCredential=config.yaml:/etc/asr-daemon/config.yaml",
        "run --config %d/config.yaml",
        "MemoryMax=",
        "TasksMax=",
    ):
        assert line in text, line
    assert "PrivateDevices=yes" not in text  # it would hide /dev/snd
    assert "RestartSteps=" not in text.replace("# systemd 252 (bookworm) has no RestartSteps=", "")


def test_install_script_into_a_staging_root(tmp_path: Path) -> None:
    staging = tmp_path / "root"
    creds = staging / "etc/asr-daemon/credentials"
    creds.mkdir(parents=True)
    (creds / "amivoice_api_key").write_text("k")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts/install"), "--root", str(staging), "--no-apt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (staging / "opt/asr-daemon/venv/bin/asr-daemon").exists()
    config = staging / "etc/asr-daemon/config.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert "zeroconf: true" in config.read_text()
    unit = (staging / "etc/systemd/system/asr-daemon.service").read_text()
    assert "LoadCredential=amivoice_api_key:/etc/asr-daemon/credentials/amivoice_api_key" in unit
    # Re-running keeps the user's config.
    config.write_text("log:\n  level: debug\n")
    again = subprocess.run(
        [str(ROOT / "scripts/install"), "--root", str(staging), "--no-apt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "log:\n  level: debug\n"
    removed = subprocess.run(
        [str(ROOT / "scripts/uninstall"), "--root", str(staging)], capture_output=True, text=True, timeout=60
    )
    assert removed.returncode == 0
    assert not (staging / "opt/asr-daemon").exists() and config.exists()


def test_notifier_speaks_systemd_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = SystemdNotifier(str(path))
        notifier.ready("listening")
        notifier.notify("WATCHDOG=1")
        notifier.stopping()
        listener.settimeout(2)
        assert listener.recv(4096) == b"READY=1\nSTATUS=listening"
        assert listener.recv(4096) == b"WATCHDOG=1"
        assert listener.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        notifier.close()


def test_notifier_is_silent_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready("x")  # no error


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


_LOG_SOME_LINES = """
import logging
from asr_daemon.logging_setup import setup_logging
setup_logging("debug")
log = logging.getLogger("asr_daemon.example")
log.warning("vendor slow")
log.info("listening")
log.debug("detail")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("handler failed")
"""


def stderr_of_logging(tmp_path: Path, journal: bool) -> list[str]:
    """What the daemon's logging writes to a stderr that is (or is not) the journal's stream."""
    path = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(ROOT)
    with path.open("w") as stderr:
        if journal:
            info = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        subprocess.run([sys.executable, "-c", _LOG_SOME_LINES], stderr=stderr, env=env, check=True, timeout=60)
    return path.read_text().splitlines()


def test_logs_under_systemd_carry_the_syslog_priority_and_no_time(tmp_path: Path) -> None:
    lines = stderr_of_logging(tmp_path, journal=True)
    assert lines[0] == "<4>WARNING asr_daemon.example: vendor slow"
    assert lines[1] == "<6>INFO    asr_daemon.example: listening"
    assert lines[2] == "<7>DEBUG   asr_daemon.example: detail"
    assert lines[3] == "<3>ERROR   asr_daemon.example: handler failed"
    # journald stores each line as its own entry: the traceback's lines keep the error's priority.
    traceback = lines[4:]
    assert traceback and all(line.startswith("<3>") for line in traceback), traceback
    assert traceback[-1] == "<3>ZeroDivisionError: division by zero"


def test_logs_elsewhere_keep_the_time_and_no_priority(tmp_path: Path) -> None:
    lines = stderr_of_logging(tmp_path, journal=False)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING asr_daemon\.example: vendor slow$", lines[0]), lines
    assert not any(line.startswith("<") for line in lines)
