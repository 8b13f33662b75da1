"""AmiVoice emulator driven by a raw WebSocket client: the documented wire, strictness, and every fault."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asr_daemon.emulators.amivoice import AmiVoiceEmulator, parse_s_command
from asr_daemon.emulators.base import EmulatorOptions, Fault

START = "s LSB16K -a-general authorization=test-key"
SCRIPT = ["今日は晴れ", "電気をつけて"]


def tone(ms: int, amplitude: int = 8000) -> bytes:
    count = 16 * ms
    return struct.pack(f"<{count}h", *(int(amplitude * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(count)))


def quiet(ms: int) -> bytes:
    return b"\x00\x00" * 16 * ms


# Two utterances separated by more than the emulator's 500 ms segmentation silence.
TWO_UTTERANCES = quiet(200) + tone(700) + quiet(800) + tone(600) + quiet(700)


@asynccontextmanager
async def emulator(**options: object) -> AsyncIterator[AmiVoiceEmulator]:
    emu = AmiVoiceEmulator(EmulatorOptions(script=SCRIPT, **options))  # type: ignore[arg-type]
    async with emu.running():
        yield emu


async def next_text(ws: ClientConnection, timeout: float = 3.0) -> str:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), "AmiVoice sends only text frames"
    return message


async def until(ws: ClientConnection, tag: str) -> list[str]:
    """Every message up to and including the first one whose tag is ``tag``."""
    messages = []
    while True:
        message = await next_text(ws)
        messages.append(message)
        if message.split(" ", 1)[0] == tag:
            return messages


async def send_audio(ws: ClientConnection, pcm: bytes, chunk: int = 3200) -> None:
    for offset in range(0, len(pcm), chunk):
        await ws.send(b"p" + pcm[offset : offset + chunk])


# -- the documented conversation -----------------------------------------------------------------------


async def test_session_gives_documented_events_and_counts_every_byte() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        await send_audio(ws, TWO_UTTERANCES, chunk=3001)  # chunks may split samples: any size is allowed
        await ws.send("e")
        messages = await until(ws, "e")
    assert messages[-1] == "e"
    # G (server information, to be ignored) comes after the first audio and after each A, as in the guide's log.
    assert messages[0] == "G"
    messages = [m for m in messages if m != "G"]
    tags = [m.split(" ", 1)[0] for m in messages]
    assert tags[:2] == ["S", "C"]
    assert tags.count("A") == 2 and tags.count("S") == 2 and tags.count("E") == 2
    assert tags.index("E") < tags.index("A")
    interim = json.loads(next(m for m in messages if m.startswith("U "))[2:])
    assert interim["results"][0]["tokens"][-1] == {"written": "..."}
    assert interim["text"].endswith("...") and interim["results"][0]["text"] == interim["text"]
    finals = [json.loads(m[2:]) for m in messages if m.startswith("A ")]
    assert [f["text"] for f in finals] == SCRIPT
    first = finals[0]
    assert set(first) == {"results", "utteranceid", "text", "code", "message"}
    assert first["code"] == "" and first["message"] == ""
    [result] = first["results"]
    assert set(result) == {"tokens", "confidence", "starttime", "endtime", "tags", "rulename", "text"}
    assert set(result["tokens"][0]) == {"written", "confidence", "starttime", "endtime", "spoken"}
    assert "".join(t["written"] for t in result["tokens"]) == SCRIPT[0]
    start_ms = int(messages[0].split(" ")[1])
    assert 150 <= start_ms <= 250 and result["starttime"] == start_ms
    [record] = emu.streams
    assert record.violations == []
    assert record.pcm_bytes == len(TWO_UTTERANCES)
    assert record.pcm_sha256 == hashlib.sha256(TWO_UTTERANCES).hexdigest()
    assert record.completed and record.finals == SCRIPT


async def test_both_endpoints_accept_and_other_paths_are_refused() -> None:
    async with emulator() as emu:
        for path in ("/v1/", "/v1/nolog/"):
            async with connect(emu.base_url + path) as ws:
                await ws.send(START)
                assert await next_text(ws) == "s"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(emu.base_url + "/v2/"):
                pass
        assert refused.value.response.status_code == 404


async def test_new_s_after_e_on_the_same_socket_is_a_new_stream() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        for _ in range(2):
            await ws.send(START)
            assert await next_text(ws) == "s"
            await send_audio(ws, quiet(100) + tone(500) + quiet(600))
            await ws.send("e")
            messages = await until(ws, "e")
            assert sum(m.startswith("A ") for m in messages) == 1
    assert [r.finals for r in emu.streams] == [[SCRIPT[0]], [SCRIPT[0]]]
    assert all(r.completed and not r.violations for r in emu.streams)


async def test_big_endian_audio_is_recognised_when_announced() -> None:
    pcm = quiet(100) + tone(500) + quiet(600)
    swapped = b"".join(pcm[i + 1 : i + 2] + pcm[i : i + 1] for i in range(0, len(pcm), 2))
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send("s MSB16K -a-general authorization=test-key")
        assert await next_text(ws) == "s"
        await send_audio(ws, swapped, chunk=1001)
        await ws.send("e")
        messages = await until(ws, "e")
    assert sum(m.startswith("A ") for m in messages) == 1
    assert emu.streams[0].violations == []


# -- the s command -------------------------------------------------------------------------------------


def test_s_parser_reads_documented_quoting() -> None:
    command = parse_s_command(
        's 16K -a-general authorization=k segmenterProperties="useDiarizer=1 diarizerAlpha=1e-20" '
        'profileWords="He said ""hi"" へいせっど|AMI あみ" resultUpdatedInterval=1000'
    )
    assert command.problems == []
    assert command.positional == ["16K", "-a-general"]
    assert command.parameters == {
        "authorization": "k",
        "segmenterProperties": "useDiarizer=1 diarizerAlpha=1e-20",
        "profileWords": 'He said "hi" へいせっど|AMI あみ',
        "resultUpdatedInterval": "1000",
    }


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("s  LSB16K -a-general authorization=k", "more than one space"),
        ("s LSB16K -a-general authorization=k ", "trailing space"),
        ('s LSB16K -a-general profileWords="AMI あみ authorization=k', "unterminated"),
        ('s LSB16K -a-general profileWords="AMI あみ"x authorization=k', "after the closing quote"),
        ("s LSB16K -a-general authorization=k authorization=k", "given twice"),
        ('s LSB16K -a-general profileWords=a"b', "stray double quote"),
        ("s LSB16K authorization=k -a-general", "after the key=value"),
        ("sLSB16K", "single space"),
    ],
)
def test_s_parser_finds_syntax_errors(command: str, problem: str) -> None:
    assert any(problem in p for p in parse_s_command(command).problems), parse_s_command(command).problems


@pytest.mark.parametrize(
    ("command", "reply", "violation"),
    [
        ("s LSB16K -a-general authorization=wrong-key", "s received illegal service authorization", None),
        ("s LSB16K -a-general", "s received illegal service authorization", "without authorization"),
        ("s WAV16 -a-general authorization=test-key", "s received unsupported audio format", "audio format"),
        ("s LSB16K -a-nonsense authorization=test-key", "s received illegal grammar file names", None),
        ("s LSB16K authorization=test-key", "s received illegal grammar file names", "grammar_file_names"),
        ("s  LSB16K -a-general authorization=test-key", "s received illegal command", "more than one space"),
    ],
)
async def test_bad_s_commands_are_answered_as_the_vendor_does(command: str, reply: str, violation: str | None) -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send(command)
        assert await next_text(ws) == reply
        # The session did not start: audio is refused.
        await ws.send(b"p" + quiet(10))
        assert await next_text(ws) == "p can't feed audio data to recognizer server"
    [record] = emu.streams
    assert record.pcm_bytes == 0
    if violation is None:
        assert record.violations == ["p packet before a successful s command"]
    else:
        assert any(violation in v for v in record.violations), record.violations


async def test_parameter_values_are_checked() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send(START + " resultUpdatedInterval=often keepFillerToken=yes profileId=abc madeUp=1")
        assert await next_text(ws) == "s"
    violations = emu.streams[0].violations
    for expected in ("resultUpdatedInterval", "keepFillerToken", "profileId", "unknown parameter madeUp"):
        assert any(expected in v for v in violations), violations


# -- other client mistakes -----------------------------------------------------------------------------


async def test_audio_before_s_is_refused_and_not_counted() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send(b"p" + tone(100))
        assert await next_text(ws) == "p can't feed audio data to recognizer server"
        await ws.send(START)
        assert await next_text(ws) == "s"
    [record] = emu.streams
    assert record.pcm_bytes == 0
    assert record.violations == ["p packet before a successful s command"]


@pytest.mark.parametrize(
    ("message", "reply", "violation"),
    [
        ("p" + "\x00" * 20, "p received illegal command", "text frame"),
        (b"\x00\x01\x02", "p received illegal command", "without the 'p' prefix"),
        (b"p", None, "without audio"),
        ("hello", None, "unknown command"),
        ("e now", "e", "with arguments"),
        (START, "s received illegal command", "while a session is active"),
    ],
)
async def test_malformed_messages_in_a_session(message: str | bytes, reply: str | None, violation: str) -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        await ws.send(message)
        if reply is not None:
            assert await next_text(ws) == reply
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
    [record] = emu.streams
    assert any(violation in v for v in record.violations), record.violations
    assert record.pcm_bytes == 0


async def test_e_without_a_session_is_a_violation() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        await ws.send("e")
        assert await next_text(ws) == "e received illegal command"
    assert emu.streams[0].violations == ["e command without an active session"]


# -- vendor limits -------------------------------------------------------------------------------------


async def test_idle_cut_before_audio() -> None:
    async with emulator(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3) as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        assert await next_text(ws) == "e timeout occurred"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_idle_cut_during_recognition() -> None:
    async with emulator(idle_timeout=0.3) as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        await send_audio(ws, tone(300))
        messages = await until(ws, "e")
        assert messages[-1] == "e timeout occurred while recognizing audio data from client"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_audio_without_speech_is_cut_after_the_limit() -> None:
    async with emulator() as emu, connect(emu.url) as ws:
        emu.no_speech_limit_ms = 500
        await ws.send(START)
        assert await next_text(ws) == "s"
        await send_audio(ws, quiet(500))
        assert await next_text(ws) == "G"
        assert await next_text(ws) == "p can't feed audio data to recognizer server"
        # The session is over: more audio is refused, and a new s starts again.
        await ws.send(b"p" + quiet(10))
        assert await next_text(ws) == "p can't feed audio data to recognizer server"
        await ws.send(START)
        assert await next_text(ws) == "s"
    assert emu.streams[0].violations == []


# -- faults --------------------------------------------------------------------------------------------


async def test_error_at_start_is_a_server_error_for_the_faulty_streams_only() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, fault_streams=1) as emu:
        async with connect(emu.url) as ws:
            await ws.send(START)
            assert await next_text(ws) == "s can't connect to recognizer server"
        async with connect(emu.url) as ws:
            await ws.send(START)
            assert await next_text(ws) == "s"
    assert [r.fault_applied for r in emu.streams] == [True, False]


async def test_drop_cuts_the_connection_after_the_configured_audio() -> None:
    async with emulator(fault=Fault.DROP, fault_after_bytes=6400) as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        with pytest.raises(ConnectionClosed) as closed:
            await send_audio(ws, quiet(1000))
            await ws.send("e")
            await until(ws, "e")
        assert closed.value.rcvd is None  # no close frame: the TCP connection was cut
    assert emu.streams[0].fault_applied
    assert emu.streams[0].pcm_bytes >= 6400


async def test_stall_stops_answering() -> None:
    async with emulator(fault=Fault.STALL, fault_after_bytes=3200) as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        await send_audio(ws, tone(500) + quiet(700))
        await ws.send("e")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(until(ws, "e"), 0.5)
    assert emu.streams[0].fault_applied


async def test_slow_final_holds_the_e_reply_back() -> None:
    loop = asyncio.get_running_loop()
    async with emulator(fault=Fault.SLOW_FINAL, slow_final_seconds=0.5) as emu, connect(emu.url) as ws:
        await ws.send(START)
        assert await next_text(ws) == "s"
        await send_audio(ws, tone(500))
        sent_at = loop.time()
        await ws.send("e")
        messages = await until(ws, "e")
        assert loop.time() - sent_at >= 0.5
    assert messages[-1] == "e" and any(m.startswith("A ") for m in messages)
    assert emu.streams[0].fault_applied
