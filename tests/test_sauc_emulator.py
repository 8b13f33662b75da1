"""SAUC emulators, driven by a raw websockets client: both client variants, strictness, auth, faults."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.sauc import SaucEmulator, VolcengineEmulator, Zyun360Emulator

KEY = "test-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
VOLC = {"X-Api-App-Key": "1234567890", "X-Api-Access-Key": KEY, "X-Api-Resource-Id": "volc.bigasr.sauc.duration"}
REQUEST: dict[str, Any] = {
    "user": {"uid": "test"},
    "audio": {"format": "pcm", "codec": "raw", "rate": 16000, "bits": 16, "channel": 1},
    "request": {"model_name": "bigmodel", "show_utterances": True, "result_type": "full"},
}


def tone(ms: int, amplitude: int = 6000) -> bytes:
    samples = (int(amplitude * math.sin(2 * math.pi * 440 * n / 16000)) for n in range(16 * ms))
    return b"".join(struct.pack("<h", s) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


# One "sentence" for the emulator's energy segmentation: speech, then enough silence to close it.
SENTENCE = silence(200) + tone(800) + silence(700)


def frame(byte1: int, byte2: int, payload: bytes, sequence: int | None = None, *, size: int | None = None) -> bytes:
    """A client frame laid out by hand: header, optional sequence, size, payload."""
    head = bytes([0x11, byte1, byte2, 0x00])
    number = struct.pack(">i", sequence) if sequence is not None else b""
    return head + number + struct.pack(">I", len(payload) if size is None else size) + payload


def full_request(document: Any = REQUEST, *, sequence: int | None = None, gzipped: bool = True) -> bytes:
    payload = json.dumps(document).encode()
    if gzipped:
        payload = gzip.compress(payload)
    return frame(0x11 if sequence is not None else 0x10, 0x11 if gzipped else 0x10, payload, sequence)


def chunks(pcm: bytes, size: int = 6400) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def parse(message: str | bytes) -> tuple[bytes, int | None, Any]:
    """(header, sequence or error code, decoded payload) of a server frame."""
    assert isinstance(message, bytes)
    head = message[:4]
    if head[1] >> 4 == 0b1111:
        code, size = struct.unpack(">II", message[4:12])
        return head, code, json.loads(message[12 : 12 + size])
    sequence, size = struct.unpack(">iI", message[4:12])
    payload = message[12 : 12 + size]
    assert len(payload) == size
    if head[2] & 0x0F:
        payload = gzip.decompress(payload)
    return head, sequence, json.loads(payload)


async def responses_until_final(ws: ClientConnection) -> list[tuple[bytes, int | None, Any]]:
    received = []
    async for message in ws:
        received.append(parse(message))
        if received[-1][0][1] & 0x0F == 0b0011 or received[-1][0][1] >> 4 == 0b1111:
            break
    return received


@pytest.fixture
async def zyun() -> AsyncIterator[SaucEmulator]:
    async with Zyun360Emulator(EmulatorOptions(script=["今天天气很好", "我们去公园散步"])).running() as emulator:
        assert isinstance(emulator, SaucEmulator)
        yield emulator


async def expect_error(ws: ClientConnection) -> tuple[int, str]:
    """The next frame must be an error frame; returns (code, message)."""
    head, code, document = parse(await ws.recv())
    assert head == bytes.fromhex("11F01000")
    assert code is not None
    return code, document["error"]


# ---------------------------------------------------------------------------------------------------------
# Both client variants


async def test_doc_variant_without_sequence_numbers(zyun: SaucEmulator) -> None:
    pcm = SENTENCE + SENTENCE
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        assert ws.response is not None and ws.response.headers.get("X-Tt-Logid")
        await ws.send(full_request())
        head, sequence, ack = parse(await ws.recv())
        assert (head, sequence) == (bytes.fromhex("11911100"), 1)
        assert ack["result"]["additions"]["log_id"] == ws.response.headers["X-Tt-Logid"]
        for chunk in chunks(pcm):
            await ws.send(frame(0x20, 0x01, gzip.compress(chunk)))
        await ws.send(frame(0x22, 0x01, gzip.compress(b"")))
        received = await responses_until_final(ws)
    head, sequence, final = received[-1]
    assert head == bytes.fromhex("11931100")
    assert sequence is not None and sequence < 0
    assert final["result"]["text"] == "今天天气很好我们去公园散步"
    assert [u["text"] for u in final["result"]["utterances"] if u["definite"]] == ["今天天气很好", "我们去公园散步"]
    assert final["audio_info"]["duration"] == len(pcm) // 32
    # Positive, increasing response numbers before the final one.
    assert [s for _, s, _ in received[:-1]] == list(range(2, len(received) + 1))
    record = zyun.streams[0]
    assert record.violations == []
    assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())
    assert record.completed


async def test_demo_variant_with_sequence_numbers_and_audio_in_the_last_packet(zyun: SaucEmulator) -> None:
    pcm = SENTENCE
    parts = chunks(pcm)
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request(sequence=1))
        await ws.recv()
        for number, chunk in enumerate(parts[:-1], start=2):
            await ws.send(frame(0x21, 0x11, gzip.compress(chunk), number))
        await ws.send(frame(0x23, 0x11, gzip.compress(parts[-1]), -(len(parts) + 1)))
        received = await responses_until_final(ws)
    assert received[-1][2]["result"]["text"] == "今天天气很好"
    assert zyun.streams[0].violations == []
    assert zyun.streams[0].pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_uncompressed_client_gets_uncompressed_answers(zyun: SaucEmulator) -> None:
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request(gzipped=False))
        assert parse(await ws.recv())[0] == bytes.fromhex("11911000")
        await ws.send(frame(0x20, 0x00, SENTENCE))
        await ws.send(frame(0x22, 0x00, b""))
        received = await responses_until_final(ws)
    assert all(head[2] == 0x10 for head, _, _ in received)
    assert received[-1][2]["result"]["text"] == "今天天气很好"
    assert zyun.streams[0].violations == []


async def test_partials_reveal_the_sentence_as_audio_arrives(zyun: SaucEmulator) -> None:
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request())
        await ws.recv()
        await ws.send(frame(0x20, 0x01, gzip.compress(silence(200) + tone(800))))
        _, _, partial = parse(await ws.recv())
        await ws.send(frame(0x22, 0x01, gzip.compress(silence(700))))
        await responses_until_final(ws)
    [open_utterance] = partial["result"]["utterances"]
    assert open_utterance["definite"] is False
    assert "今天天气很好".startswith(open_utterance["text"]) and open_utterance["text"]


async def test_utterances_only_when_asked_for(zyun: SaucEmulator) -> None:
    document = copy.deepcopy(REQUEST)
    del document["request"]["show_utterances"]
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request(document))
        await ws.recv()
        await ws.send(frame(0x22, 0x01, gzip.compress(SENTENCE)))
        [*_, (_, _, final)] = await responses_until_final(ws)
    assert final["result"]["text"] == "今天天气很好"
    assert "utterances" not in final["result"]


async def test_wav_format_skips_the_riff_header() -> None:
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(SENTENCE))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    )
    wav = header + b"data" + struct.pack("<I", len(SENTENCE)) + SENTENCE
    document = copy.deepcopy(REQUEST)
    document["audio"]["format"] = "wav"
    async with Zyun360Emulator().running() as emulator:
        async with connect(emulator.url, additional_headers=BEARER) as ws:
            await ws.send(full_request(document))
            await ws.recv()
            await ws.send(frame(0x22, 0x01, gzip.compress(wav)))
            [*_, (_, _, final)] = await responses_until_final(ws)
        assert final["result"]["text"] == "今天天气很好"  # the default script
        assert emulator.streams[0].pcm_bytes == len(SENTENCE)


# ---------------------------------------------------------------------------------------------------------
# Strictness: each wrong message is a violation, answered with the vendor's error frame


def without(path: str) -> dict[str, Any]:
    document = copy.deepcopy(REQUEST)
    section, key = path.split(".")
    del document[section][key]
    return document


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (full_request(without("audio.format")), "missing audio.format"),
        (full_request(without("request.model_name")), "missing request.model_name"),
        (full_request({**REQUEST, "request": {"model_name": "small"}}), "expected 'bigmodel'"),
        (full_request({**REQUEST, "audio": {**REQUEST["audio"], "rate": 8000}}), "audio.rate 8000"),
        (full_request({**REQUEST, "request": {"model_name": "bigmodel", "enable_punc": "yes"}}), "not a boolean"),
        (full_request(sequence=1)[:-3], "payload size field says"),
        (frame(0x10, 0x11, b"not gzip at all"), "not gzip"),
        (frame(0x10, 0x10, b"{nope"), "not JSON"),
        (frame(0x10, 0x21, b"{}"), "serialization"),
        (frame(0x20, 0x01, gzip.compress(SENTENCE)), "not a full client request"),
        (frame(0x12, 0x11, b""), "last packet"),
        (b"\x11\x10", "shorter than the 4-byte header"),
        (bytes.fromhex("2110110000000000"), "protocol version 2"),
        (bytes.fromhex("11101101") + struct.pack(">I", 0), "reserved header byte"),
        # 360 takes text frames as binary (its Go demo sends them): this one is not a SAUC frame.
        ('{"audio": {}}', "protocol version 7"),
    ],
)
async def test_bad_full_request_is_a_violation_and_45000001(
    zyun: SaucEmulator, first: str | bytes, expected: str
) -> None:
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(first)
        code, message = await expect_error(ws)
    assert code == 45000001
    assert expected in message
    [violation] = zyun.streams[0].violations
    assert expected in violation


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (full_request(), "duplicate full client request"),
        (frame(0x20, 0x01, b"\x1f\x8b broken"), "not gzip"),
        (frame(0x20, 0x01, gzip.compress(b"\x00" * 64), size=10), "payload size field says"),
        (frame(0x24, 0x01, gzip.compress(b"\x00" * 64)), "message flags"),
        (frame(0x90, 0x01, b""), "where audio-only requests belong"),
        (b"\x00" * 64, "protocol version 0"),
        ("audio", "protocol version 6"),
    ],
)
async def test_bad_audio_packet_is_a_violation_and_45000001(
    zyun: SaucEmulator, packet: str | bytes, expected: str
) -> None:
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request())
        await ws.recv()
        await ws.send(frame(0x20, 0x01, gzip.compress(silence(100))))
        await ws.send(packet)
        code, message = await expect_error(ws)
    assert code == 45000001
    assert expected in message
    assert any(expected in violation for violation in zyun.streams[0].violations)


async def test_wrong_sequence_numbers_are_violations(zyun: SaucEmulator) -> None:
    async with connect(zyun.url, additional_headers=BEARER) as ws:
        await ws.send(full_request(sequence=1))
        await ws.recv()
        await ws.send(frame(0x21, 0x11, gzip.compress(silence(100)), 3))  # 2 expected
        await ws.send(frame(0x20, 0x01, gzip.compress(silence(100))))  # numbering dropped
        await ws.send(frame(0x23, 0x11, gzip.compress(b""), 5))  # the last one must be negative
        await responses_until_final(ws)
    assert zyun.streams[0].violations == [
        "audio packet sequence 3, expected 2",
        "audio packet does not number its frames, unlike the full client request",
        "audio packet sequence 5, expected -4",
    ]


async def test_messages_after_the_last_packet_are_violations() -> None:
    async with Zyun360Emulator(close_after_final=False).running() as emulator:
        async with connect(emulator.url, additional_headers=BEARER) as ws:
            await ws.send(full_request())
            await ws.recv()
            await ws.send(frame(0x22, 0x01, gzip.compress(SENTENCE)))
            await responses_until_final(ws)
            await ws.send(frame(0x20, 0x01, gzip.compress(silence(100))))
        assert emulator.streams[0].violations == ["message after the last packet"]


# ---------------------------------------------------------------------------------------------------------
# Authentication


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}, {"X-Api-Key": KEY}]
)
async def test_zyun360_refuses_bad_credentials_at_the_upgrade(zyun: SaucEmulator, headers: dict[str, str]) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(zyun.url, additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers.get("X-Tt-Logid")
    assert zyun.streams == []


async def test_wrong_path_is_404(zyun: SaucEmulator) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{zyun.base_url}/asr", additional_headers=BEARER):
            pass
    assert refused.value.response.status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({**VOLC, "X-Api-Access-Key": "wrong"}, 401),
        ({k: v for k, v in VOLC.items() if k != "X-Api-App-Key"}, 401),
        ({**VOLC, "X-Api-Resource-Id": "volc.tts.default"}, 403),
        ({k: v for k, v in VOLC.items() if k != "X-Api-Resource-Id"}, 403),
        ({"X-Api-Key": "wrong", "X-Api-Resource-Id": "volc.bigasr.sauc.duration"}, 401),
    ],
)
async def test_volcengine_refuses_bad_credentials_at_the_upgrade(headers: dict[str, str], status: int) -> None:
    async with VolcengineEmulator().running() as emulator:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(emulator.url, additional_headers=headers):
                pass
    assert refused.value.response.status_code == status


async def test_volcengine_accepts_app_and_access_keys_or_a_new_console_key() -> None:
    connect_id = "6f1e2c3a-1111-4222-8333-944455556666"
    new_console = {"X-Api-Key": KEY, "X-Api-Resource-Id": "volc.seedasr.sauc.duration"}
    async with VolcengineEmulator().running() as emulator:
        for headers in ({**VOLC, "X-Api-Connect-Id": connect_id}, new_console):
            async with connect(emulator.url, additional_headers=headers) as ws:
                assert ws.response is not None and ws.response.headers.get("X-Tt-Logid")
                if "X-Api-Connect-Id" in headers:
                    assert ws.response.headers["X-Api-Connect-Id"] == connect_id
                await ws.send(full_request())
                await ws.recv()
                await ws.send(frame(0x22, 0x01, gzip.compress(SENTENCE)))
                [*_, (_, _, final)] = await responses_until_final(ws)
            assert final["result"]["text"] == "今天天气很好"
    assert [record.violations for record in emulator.streams] == [[], []]


@pytest.mark.parametrize(
    ("emulator_class", "headers", "code"),
    [
        (Zyun360Emulator, {"Authorization": "Bearer wrong"}, 45000010),
        (VolcengineEmulator, {**VOLC, "X-Api-Access-Key": "wrong"}, 45000010),
        (VolcengineEmulator, {**VOLC, "X-Api-Resource-Id": "volc.tts.default"}, 45000030),
    ],
)
async def test_bad_credentials_as_an_error_frame(
    emulator_class: type[SaucEmulator], headers: dict[str, str], code: int
) -> None:
    emulator = emulator_class(auth_error_frame=True)
    async with emulator.running(), connect(emulator.url, additional_headers=headers) as ws:
        assert (await expect_error(ws))[0] == code


# ---------------------------------------------------------------------------------------------------------
# Answer modes and faults


async def test_bigmodel_endpoint_answers_every_packet_and_nostream_only_at_the_end() -> None:
    pcm = silence(1000)
    async with VolcengineEmulator().running() as emulator:
        counts = []
        for mode in ("bigmodel", "bigmodel_nostream"):
            async with connect(f"{emulator.base_url}/api/v3/sauc/{mode}", additional_headers=VOLC) as ws:
                await ws.send(full_request())
                await ws.recv()
                for chunk in chunks(pcm):
                    await ws.send(frame(0x20, 0x01, gzip.compress(chunk)))
                await ws.send(frame(0x22, 0x01, b""))
                counts.append(len(await responses_until_final(ws)))
    assert counts == [len(chunks(pcm)) + 1, 1]


async def test_idle_client_gets_45000081() -> None:
    options = EmulatorOptions(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3)
    emulator = Zyun360Emulator(options)
    async with emulator.running(), connect(emulator.url, additional_headers=BEARER) as ws:
        await ws.send(full_request())
        await ws.recv()
        await ws.send(frame(0x20, 0x01, gzip.compress(silence(100))))
        code, message = await expect_error(ws)
        assert code == 45000081
        assert message.startswith("[Timeout waiting next packet] waiting next packet timeout: 0.300000 seconds")
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_error_at_start_is_server_busy_for_the_faulty_streams_only() -> None:
    options = EmulatorOptions(fault=Fault.ERROR_AT_START, fault_streams=1)
    async with Zyun360Emulator(options).running() as emulator:
        async with connect(emulator.url, additional_headers=BEARER) as ws:
            await ws.send(full_request())
            assert await expect_error(ws) == (55000031, "server busy")
        async with connect(emulator.url, additional_headers=BEARER) as ws:
            await ws.send(full_request())
            assert parse(await ws.recv())[0] == bytes.fromhex("11911100")
        assert [record.fault_applied for record in emulator.streams] == [True, False]
