"""The handler's two ways of sending partials and the answer give the client the same events.

While the socket takes everything at once, a partial is written from the vendor's result callback and the answer
as it is resolved (the hot paths, ``WyomingAsrHandler._write_partial_now`` and ``_write_answer_now``); otherwise
the partial pump and a task of its own write them (the plain paths, ``direct_writes = False``). A client must get
the same transcript-start, transcript-chunks, transcript and transcript-stop, in the same order, either way:
partials before the transcript, none after it."""

from __future__ import annotations

from typing import Any

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.sources.wyoming_handler import WyomingAsrHandler
from tests.support.daemon import running_daemon
from tests.support.vendor_streams import tones
from tests.support.wyoming import transcribe

SCRIPT = ["一 二 三 四", "五 六 七"]


def count_taken(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Counts how often the handler's hot path ``name`` took its write (one-element list, read after the run)."""
    taken = [0]
    original = getattr(WyomingAsrHandler, name)

    def counting(handler: WyomingAsrHandler, item: Any) -> bool:
        took: bool = original(handler, item)
        taken[0] += took
        return took

    monkeypatch.setattr(WyomingAsrHandler, name, counting)
    return taken


async def client_events(*, direct: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, Any]], int, int]:
    written = count_taken(monkeypatch, "_write_partial_now")
    answers = count_taken(monkeypatch, "_write_answer_now")
    monkeypatch.setattr(WyomingAsrHandler, "direct_writes", direct)
    async with AmiVoiceEmulator(EmulatorOptions(script=SCRIPT)).running() as emu:
        config = {"vendors": {"amivoice": {"url": emu.url, "api_key": "test-key"}}}
        async with running_daemon(config) as daemon:
            assert daemon.port is not None
            result = await transcribe(daemon.port, tones(2), language="ja", speed=2.0)
    assert result.error is None
    events = [(event.type, event.data.get("text")) for event in result.events]
    return events, written[0], answers[0]


async def test_partials_and_answer_written_at_once_are_what_the_tasks_write(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, plain_written, plain_answers = await client_events(direct=False, monkeypatch=monkeypatch)
    direct, direct_written, direct_answers = await client_events(direct=True, monkeypatch=monkeypatch)
    assert plain_written == plain_answers == 0
    assert direct_written >= 2
    assert direct_answers == 1
    types = [kind for kind, _ in plain]
    assert types[0] == "transcript-start"
    assert types[-2:] == ["transcript", "transcript-stop"]
    assert types.count("transcript") == 1
    assert "transcript-chunk" in types[: types.index("transcript")]
    # The chunks add up to the transcript, and the client cannot tell the two paths apart.
    chunks = "".join(text for kind, text in plain if kind == "transcript-chunk")
    assert chunks == dict(plain)["transcript"]
    assert direct == plain
