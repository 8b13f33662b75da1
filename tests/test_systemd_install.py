"""The README's Raspberry Pi install, done for real: Debian (trixie, bookworm) booted under its own systemd
(systemd-nspawn), the checkout installed with ``sudo scripts/install``, the config edited, a key file written,
installed again.
Then the service must answer Home Assistant, keep systemd's watchdog fed, survive a kill and a restart, stop
cleanly, log with priorities journald understands, and keep its key out of the journal.

The container shares this machine's network (apt and pip inside reach the package registries; the test
reaches the daemon and a vendor emulator on 127.0.0.1). A drop-in keeps the daemon off the LAN: it listens
on 127.0.0.1 only and announces nothing (a fresh config turns zeroconf on).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import debian_root, nspawn
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import describe, transcribe

ROOT = Path(__file__).resolve().parent.parent
KEY = "amivoice-secret-4711"
SCRIPT = "今日はいい天気ですね。"
CHECKOUT = "/home/pi/asr-daemon"

pytestmark = [
    pytest.mark.realpart,
    pytest.mark.skipif(nspawn.unavailable() is not None, reason=nspawn.unavailable() or ""),
    pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox"),
    pytest.mark.timeout(1500),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def emulator() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asr_daemon",
            "emulate",
            "amivoice",
            "--port",
            str(port),
            "--key",
            KEY,
            "--script",
            SCRIPT,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "listening" in process.stdout.readline()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


# trixie has systemd 257 as Raspberry Pi OS trixie does; bookworm's 252 is the oldest the unit must work with.
@pytest.fixture(scope="module", params=["trixie", "bookworm"])
def machine(request: pytest.FixtureRequest) -> Iterator[nspawn.Container]:
    suite = request.param
    started = time.monotonic()
    lower = debian_root.ensure_root(suite)
    print(f"\n{suite} root ready in {time.monotonic() - started:.0f} s")
    with nspawn.booted(lower) as container:
        shutil.copytree(
            ROOT,
            container.root / CHECKOUT.lstrip("/"),
            ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "build", "*.egg-info", ".logs-*"),
        )
        yield container


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_readme_install_runs_under_systemd(machine: nspawn.Container, emulator: int) -> None:
    port = free_port()
    unit = "asr-daemon"

    def show(*properties: str) -> dict[str, str]:
        return machine.show(unit, *properties)

    def answers() -> bool:
        try:
            asyncio.run(describe(port, timeout=2))
        except (OSError, AssertionError, TimeoutError):
            return False
        return True

    # Only this test machine's own: 127.0.0.1, no zeroconf (the environment overrides the config file).
    machine.run(
        "mkdir -p /etc/systemd/system/asr-daemon.service.d && cat > /etc/systemd/system/asr-daemon.service.d/test.conf",
        input=f"[Service]\nEnvironment=ASR_DAEMON_WYOMING__ZEROCONF=false ASR_DAEMON_WYOMING__URI=tcp://127.0.0.1:{port}\n",
    )

    # The README, step by step.
    first = machine.run(f"cd {CHECKOUT} && sudo scripts/install", timeout=900)
    assert "Successfully installed" in first, first  # pip's progress is shown, not silenced
    assert re.search(r"^(Get|Hit):\d+ ", first, re.MULTILINE), first  # and apt's
    machine.run(
        "sed -i 's#^  uri: tcp://0.0.0.0:10300#  uri: tcp://127.0.0.1:"
        f"{port}#' /etc/asr-daemon/config.yaml && cat >> /etc/asr-daemon/config.yaml",
        input=f"vendors:\n  amivoice:\n    url: ws://127.0.0.1:{emulator}/v1/\n    languages: [ja, ja-JP]\n",
    )
    machine.run(f"echo -n '{KEY}' | sudo tee /etc/asr-daemon/credentials/amivoice_api_key >/dev/null")
    machine.run(f"cd {CHECKOUT} && sudo scripts/install", timeout=900)

    # On disk, the config and the key stay root's.
    modes = machine.run(
        "stat -c '%a %U %n' /etc/asr-daemon /etc/asr-daemon/config.yaml /etc/asr-daemon/credentials"
        " /etc/asr-daemon/credentials/amivoice_api_key"
    ).split("\n")
    assert modes[:4] == [
        "750 root /etc/asr-daemon",
        "600 root /etc/asr-daemon/config.yaml",
        "700 root /etc/asr-daemon/credentials",
        "600 root /etc/asr-daemon/credentials/amivoice_api_key",
    ], modes

    # This systemd knows every option of the unit, and rates its sandbox as the README says.
    verify = machine.run("systemd-analyze verify /etc/systemd/system/asr-daemon.service 2>&1", check=False)
    assert "Unknown" not in verify and "nknown key" not in verify, verify
    security = machine.run("systemd-analyze security asr-daemon.service 2>&1", check=False)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert exposure and float(exposure.group(1)) <= 2.0, security

    # Type=notify: "active" means READY=1 arrived; the daemon answers Home Assistant with the vendor's words.
    wait_for("the unit to be active", lambda: show("ActiveState")["ActiveState"] == "active")
    state = show("Type", "SubState", "StatusText", "NRestarts", "MainPID")
    assert state["Type"] == "notify" and state["SubState"] == "running", state
    assert state["NRestarts"] == "0", state  # it did not crash its way to active
    wait_for("the daemon to answer describe", answers)
    result = asyncio.run(transcribe(port, utterance("good morning"), language="ja"))
    assert result.error is None and result.text == SCRIPT, result

    # Memory after an utterance and under 16 at once (the figure behind MemoryMax=).
    async def load() -> list[str | None]:
        pcm = utterance("turn on the kitchen light")
        results = await asyncio.gather(*(transcribe(port, pcm, language="ja", speed=2.0) for _ in range(16)))
        return [r.text for r in results]

    pid = show("MainPID")["MainPID"]
    idle = machine.run(f"grep -E '^(VmRSS|VmHWM|Threads)' /proc/{pid}/status; ls /proc/{pid}/fd | wc -l")
    assert asyncio.run(load()) == [SCRIPT] * 16
    loaded = machine.run(f"grep -E '^(VmRSS|VmHWM|Threads)' /proc/{pid}/status; ls /proc/{pid}/fd | wc -l")
    print(f"daemon memory after one utterance: {' '.join(idle.split())}; after 16 at once: {' '.join(loaded.split())}")

    # The watchdog is fed: WatchdogSec=30, a ping every 15 s.
    first_ping = show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    wait_for(
        "a watchdog ping",
        lambda: show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] != first_ping,
        timeout=45,
    )
    assert show("StatusText")["StatusText"], "the pings carry the daemon's status"

    # A warning is found by priority; info lines are not.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"not json\n")
        client.recv(4096)
    wait_for(
        "the warning in the journal",
        lambda: "malformed event" in machine.run(f"journalctl -p warning -u {unit} --no-pager -o cat"),
    )
    warnings = machine.run(f"journalctl -p warning -u {unit} --no-pager -o cat")
    assert "INFO" not in warnings, warnings
    assert re.search(r"^INFO", machine.run(f"journalctl -u {unit} --no-pager -o cat"), re.MULTILINE)

    # Killed, it comes back; restarted, it comes back.
    machine.run(f"systemctl kill -s SIGKILL {unit}")

    def running_again(old_pid: str) -> bool:
        now = show("MainPID", "ActiveState")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", old_pid)

    wait_for("a restart after SIGKILL", lambda: running_again(pid))
    assert int(show("NRestarts")["NRestarts"]) >= 1
    wait_for("the daemon to answer after SIGKILL", answers)
    before = show("MainPID")["MainPID"]
    machine.run(f"systemctl restart {unit}")
    assert show("ActiveState")["ActiveState"] == "active" and show("MainPID")["MainPID"] != before
    wait_for("the daemon to answer after restart", answers)

    # It stops cleanly.
    machine.run(f"systemctl stop {unit}", timeout=60)
    stopped = show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert stopped["ActiveState"] == "inactive" and stopped["Result"] == "success", stopped
    assert stopped["ExecMainStatus"] == "0", stopped

    # The key never reaches the journal (nor the boot console).
    journal = machine.run("journalctl --no-pager -o cat")
    assert "asr-daemon" in journal
    assert KEY not in journal
    assert KEY not in machine.console.read_text(errors="replace")

    # Uninstalled, the service is gone and the config stays; purged, the config goes too.
    machine.run(f"cd {CHECKOUT} && sudo scripts/uninstall")
    assert machine.run(f"systemctl cat {unit}", check=False).strip().startswith("No files found"), "unit still there"
    assert machine.run("ls /opt/asr-daemon /etc/asr-daemon/config.yaml 2>&1", check=False).count("No such file") == 1
    machine.run(f"cd {CHECKOUT} && sudo scripts/uninstall --purge")
    assert "No such file" in machine.run("ls /etc/asr-daemon 2>&1", check=False)
