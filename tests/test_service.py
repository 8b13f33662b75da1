"""The daemon as systemd and a supervisor see it: READY/WATCHDOG/STOPPING, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import pytest

from asr_daemon.daemon import Daemon
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from tests.support.daemon import running_daemon, settings_for
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

speech_needed = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")


async def datagrams(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """Everything sent to ``sock`` until the monotonic time ``until``, with arrival times."""
    loop = asyncio.get_running_loop()
    got: list[tuple[float, str]] = []
    while (left := until - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), left)
        except TimeoutError:
            break
        got.append((time.monotonic(), data.decode()))
    return got


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_ready_after_listening_watchdog_pings_and_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asr_daemon",
        "run",
        "--uri",
        f"tcp://127.0.0.1:{port}",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)
        assert ready.startswith(b"READY=1\nSTATUS=")
        # READY means listening: a connection succeeds at once.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        pings = [m for _, m in await datagrams(sock, time.monotonic() + 2.2) if m.startswith("WATCHDOG=1")]
        assert len(pings) >= 3  # every 0.5 s (half of WatchdogSec)
        assert "STATUS=0 utterance(s) in flight" in pings[-1]
        daemon.send_signal(signal.SIGTERM)
        after = [m for _, m in await datagrams(sock, time.monotonic() + 5)]
        assert any(m.startswith("STOPPING=1") for m in after)
        assert await asyncio.wait_for(daemon.wait(), 10) == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


def test_a_wedged_event_loop_stops_the_watchdog_pings(watchdog_socket: socket.socket) -> None:
    sock = watchdog_socket
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        daemon = Daemon(settings_for({}))
        await daemon.start()
        state["loop"], state["daemon"] = asyncio.get_running_loop(), daemon
        started.set()
        await daemon.wait_for_stop()
        await daemon.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert started.wait(20)
        sock.setblocking(True)
        sock.settimeout(0.1)

        def pings_during(seconds: float) -> list[float]:
            times, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    if sock.recv(4096).startswith(b"WATCHDOG=1"):
                        times.append(time.monotonic())
                except TimeoutError:
                    pass
            return times

        assert len(pings_during(1.0)) >= 3
        # Wedge the daemon's loop for 1.5 s (a blocking call on it, as a bug would).
        wedged = threading.Event()

        def wedge() -> None:
            wedged.set()
            time.sleep(1.5)

        state["loop"].call_soon_threadsafe(wedge)
        assert wedged.wait(5)
        # A ping sent just before the wedge may still wait in the socket: it was not sent while blocked.
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(4096)
        sock.settimeout(0.1)
        assert pings_during(1.2) == [], "pings went on while the loop was blocked"
        assert len(pings_during(1.5)) >= 2, "pings did not resume"
    finally:
        if "loop" in state:
            state["loop"].call_soon_threadsafe(state["daemon"].request_stop)
        thread.join(20)


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


@speech_needed
async def test_healthz_and_metrics_count_what_was_done() -> None:
    pcm = utterance("hello there")
    options = EmulatorOptions(
        script=["こんにちは"], recognise_by_audio=True, fault=Fault.DROP, fault_streams=1, fault_after_bytes=16000
    )
    async with AmiVoiceEmulator(options).running() as emulator:
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}, "health": {"port": 0}}
        async with running_daemon(config) as daemon:
            assert daemon.health is not None
            port = daemon.health.port
            status, body = await http_get(port, "/healthz")
            assert status == 200 and '"healthy": true' in body
            results = [await transcribe(daemon.port, pcm, language="ja") for _ in range(3)]
            assert [r.text for r in results] == ["こんにちは"] * 3
            status, metrics = await http_get(port, "/metrics")
            assert status == 200
            assert 'asr_utterances_total{outcome="transcript",vendor="amivoice"} 3.0' in metrics
            assert 'asr_vendor_reconnects_total{vendor="amivoice"} 1.0' in metrics  # the first stream was dropped
            assert "asr_sessions_total 4.0" in metrics  # three utterances and /healthz's own describe
            assert 'asr_time_to_final_seconds_count{vendor="amivoice"} 3.0' in metrics
            assert 'asr_vendor_connect_seconds_count{vendor="amivoice"} 3.0' in metrics
            assert f"asr_audio_in_bytes_total {3 * len(pcm)}.0" in metrics
            assert "asr_sessions_active 0.0" in metrics
            assert (await http_get(port, "/nope"))[0] == 404


@speech_needed
async def test_healthz_fails_while_a_vendor_rejects_our_key() -> None:
    async with AmiVoiceEmulator(EmulatorOptions(script=["はい"], api_keys=["other"])).running() as emulator:
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}, "health": {"port": 0}}
        async with running_daemon(config) as daemon:
            assert daemon.health is not None
            result = await transcribe(daemon.port, utterance("hello"), language="ja")
            assert result.error_code == "vendor-rejected"
            status, body = await http_get(daemon.health.port, "/healthz")
            assert status == 503
            assert '"state": "rejected"' in body and "test-key" not in body
            _, metrics = await http_get(daemon.health.port, "/metrics")
            assert 'asr_utterances_total{outcome="vendor-rejected",vendor="amivoice"} 1.0' in metrics
