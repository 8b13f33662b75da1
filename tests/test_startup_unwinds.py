"""A start-up step that fails undoes every step before it: nothing left running, listening or open."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import asr_daemon.discovery
from asr_daemon.daemon import Daemon
from asr_daemon.settings import ConfigError
from asr_daemon.sinks.jsonl import JsonLinesSink
from asr_daemon.sinks.mqtt import MqttSink
from asr_daemon.sources.mic import MicSource
from asr_daemon.vendors.prewarm import StreamPool
from tests.support.daemon import settings_for
from tests.support.mosquitto import Mosquitto, have_mosquitto

STEPS = ["sinks", "prewarm", "wyoming", "zeroconf", "mic", "health"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Injected(OSError):
    pass


async def _refuse(self: Any) -> Any:
    raise Injected("injected start-up failure")


class FakeAdvertiser:
    """Stands in for the zeroconf advertiser (no multicast in tests): a task while entered."""

    def __init__(self, **_: Any) -> None:
        self.state = "announced"
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_wyoming(cls, settings: Any, port: int, **_: Any) -> FakeAdvertiser:
        return cls()

    async def __aenter__(self) -> FakeAdvertiser:
        self._task = asyncio.create_task(asyncio.Event().wait(), name="fake zeroconf")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_announced(self) -> None:
        return None


async def _forever(self: Any) -> None:
    """Stands in for the microphone's capture (no ALSA device in tests) and the pool's vendor connection (what
    a pool does with a connection it holds is tested with the pool): a task that runs until cancelled."""
    await asyncio.Event().wait()


def track(monkeypatch: pytest.MonkeyPatch, cls: Any, opened: dict[object, str]) -> None:
    """Record the instances of ``cls`` entered and not yet exited."""
    enter, leave = cls.__aenter__, cls.__aexit__

    async def tracked_enter(self: Any) -> Any:
        result = await enter(self)
        opened[self] = cls.__name__
        return result

    async def tracked_exit(self: Any, *exc: Any) -> Any:
        opened.pop(self, None)
        return await leave(self, *exc)

    monkeypatch.setattr(cls, "__aenter__", tracked_enter)
    monkeypatch.setattr(cls, "__aexit__", tracked_exit)


async def tasks_left(before: set[asyncio.Task[Any]], within: float = 10.0) -> set[asyncio.Task[Any]]:
    """Tasks started since ``before`` that are still running after ``within`` seconds (a closing connection
    may take a moment to end its own tasks)."""
    deadline = time.monotonic() + within
    while True:
        left = asyncio.all_tasks() - before - {asyncio.current_task()}
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("failing", [*STEPS, None])
async def test_a_failed_start_leaves_nothing_running_or_bound(
    failing: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: dict[object, str] = {}
    for cls in (JsonLinesSink, MqttSink, StreamPool, MicSource, FakeAdvertiser):
        track(monkeypatch, cls, opened)
    monkeypatch.setattr(asr_daemon.discovery, "ZeroconfAdvertiser", FakeAdvertiser)
    monkeypatch.setattr(MicSource, "_run", _forever)
    monkeypatch.setattr(StreamPool, "_maintain", _forever)
    if failing == "prewarm":
        monkeypatch.setattr(StreamPool, "__aenter__", _refuse)
    elif failing == "zeroconf":
        monkeypatch.setattr(FakeAdvertiser, "__aenter__", _refuse)
    elif failing == "mic":
        monkeypatch.setattr(MicSource, "__aenter__", _refuse)

    wyoming_port, health_port = free_port(), free_port()
    jsonl = tmp_path / "events.jsonl"
    if failing == "sinks":
        (tmp_path / "a-file").write_text("")
        jsonl = tmp_path / "a-file" / "events.jsonl"  # its parent is a file: cannot be created
    broker = Mosquitto(tmp_path / "broker") if have_mosquitto() else None
    config: dict[str, Any] = {
        "wyoming": {"uri": f"tcp://127.0.0.1:{wyoming_port}", "zeroconf": True},
        "vendors": {"amivoice": {"url": "ws://127.0.0.1:9/", "api_key": "test-key", "prewarm": True}},
        "events": {"jsonl": str(jsonl), "flush_timeout": 2},
        "mic": {"enabled": True, "vendor": "amivoice"},
        "health": {"host": "127.0.0.1", "port": health_port},
    }
    if broker is not None:
        broker.start()
        config["mqtt"] = {"host": broker.host, "port": broker.port, "spool_dir": str(tmp_path / "spool")}
    try:
        daemon = Daemon(settings_for(config))
        before = asyncio.all_tasks()
        with (
            port_taken(wyoming_port) if failing == "wyoming" else port_taken(free_port()),
            port_taken(health_port) if failing == "health" else port_taken(free_port()),
        ):
            if failing is None:
                await daemon.start()
                assert set(opened.values()) >= {"JsonLinesSink", "StreamPool", "MicSource", "FakeAdvertiser"}
                await daemon.stop()
            else:
                with pytest.raises((OSError, ConfigError)):
                    await daemon.start()
        assert not opened, f"still open after a failure at {failing}: {sorted(opened.values())}"
        assert not await tasks_left(before), f"tasks still running after a failure at {failing}"
        assert port_is_free(wyoming_port), "the Wyoming port is still bound"
        assert port_is_free(health_port), "the health port is still bound"
    finally:
        if broker is not None:
            broker.stop()
