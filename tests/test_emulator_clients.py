"""The vendors' own clients against the emulators, at the wire level.

What a vendor's own client (its library, SDK or documented sample) sends works against the real service, so the
emulator must accept it too: each test sends what that client sends, byte for byte where it matters, and
checks that the session completes, with the departures from the written protocol recorded as notes and no
violations. The seed samples' message sequences (``../shared/seeds/``) are replayed by clients written here.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator, EmulatorOptions
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import VolcengineEmulator, Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.tls import SelfSignedCertificate, make_certificate
from asr_daemon.emulators.yating import YatingEmulator
from tests.support.vendor_clients import BINARY, TEXT, RawWebSocket, silence, tone, wav_file

# Two sentences of "speech" (tone), each followed by enough silence to end it.
SPEECH = silence(200) + tone(1500) + silence(800) + tone(1200) + silence(800)
WAIT = 20.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> SelfSignedCertificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@asynccontextmanager
async def running(emulator: Emulator) -> AsyncIterator[Emulator]:
    async with emulator.running():
        yield emulator


def only_stream(emulator: Emulator) -> Any:
    [record] = emulator.streams
    return record


# -- AmiVoice ---------------------------------------------------------------------------------------------


async def test_amivoice_wrp_handshake_and_unmasked_frames_are_accepted_and_noted() -> None:
    # Wrp 1.0.05 sends no Sec-WebSocket-Version and never masks its frames; its default codec is 16K (a
    # WAV file, header included).
    pcm = SPEECH
    options = EmulatorOptions(script=["turn on the light", "thank you"])
    async with running(AmiVoiceEmulator(options)) as emulator:
        ws = await RawWebSocket.connect(emulator.url)
        assert ws.status == 101
        try:
            await ws.send_text("s 16K -a-general authorization=test-key")
            assert (await ws.receive()).text == "s"
            data = wav_file(pcm)
            for offset in range(0, len(data), 4096):
                await ws.send(BINARY, b"p" + data[offset : offset + 4096])
            await ws.send_text("e")
            packets: list[str] = []
            async with asyncio.timeout(WAIT):
                while not packets or packets[-1] != "e":
                    frame = await ws.receive()
                    assert frame.opcode == TEXT
                    packets.append(frame.text)
        finally:
            await ws.close()
        record = only_stream(emulator)
    finals = [json.loads(p[2:])["text"] for p in packets if p.startswith("A ")]
    assert finals == ["turn on the light", "thank you"]
    assert record.violations == []
    assert any("Sec-WebSocket-Version" in note for note in record.notes)
    assert any("without a mask" in note for note in record.notes)
    # The WAV header is not audio: exactly the samples reached the recogniser.
    assert record.pcm_bytes == len(pcm)


async def test_a_missing_websocket_version_is_still_refused_by_other_vendors() -> None:
    async with running(TiroEmulator()) as emulator:
        ws = await RawWebSocket.connect(f"{emulator.url}?token=test-key")
        await ws.close()
    assert ws.status == 400


async def test_amivoice_seed_sample_sequence_strips_the_wav_header_and_reveals_words() -> None:
    # seed 003 websocket-sample.py: s 16K with resultUpdatedInterval, 16000-byte p blocks of test.wav, then e;
    # the connection is closed once the e answer arrives.
    pcm = SPEECH
    options = EmulatorOptions(script=["turn on the kitchen light", "thank you"])
    async with running(AmiVoiceEmulator(options)) as emulator:
        async with connect(emulator.url, compression=None) as ws:
            await ws.send("s 16K -a-general resultUpdatedInterval=1000 authorization=test-key")
            assert await ws.recv() == "s"
            data = wav_file(pcm)
            for offset in range(0, len(data), 16000):
                await ws.send(b"p" + data[offset : offset + 16000])
                await asyncio.sleep(0.02)
            await ws.send("e")
            packets = await amivoice_until_e(ws)
        record = only_stream(emulator)
    assert record.violations == [] and record.completed
    assert record.pcm_bytes == len(pcm)
    assert "G" in packets, "the guide's log shows G events"
    assert [json.loads(p[2:])["text"] for p in packets if p.startswith("A ")] == [
        "turn on the kitchen light",
        "thank you",
    ]
    interims = [json.loads(p[2:]) for p in packets if p.startswith("U ")]
    first_tokens = [token["written"] for token in interims[0]["results"][0]["tokens"]]
    # A one-word partial is the word and the dummy "..." token, not its letters.
    assert first_tokens == ["turn", "..."]
    for interim in interims:
        words = [token["written"] for token in interim["results"][0]["tokens"]][:-1]
        assert " ".join(words) + "..." == interim["text"]


async def amivoice_until_e(ws: ClientConnection) -> list[str]:
    packets: list[str] = []
    async with asyncio.timeout(WAIT):
        while not packets or packets[-1] != "e":
            message = await ws.recv()
            assert isinstance(message, str)
            packets.append(message)
    return packets


# -- 360 Zyun (SAUC) --------------------------------------------------------------------------------------


def sauc_frame(byte1: int, payload: bytes, sequence: int | None) -> bytes:
    head = bytes((0x11, byte1, 0x11, 0x00))
    numbered = struct.pack(">i", sequence) if sequence is not None else b""
    return head + numbered + struct.pack(">I", len(payload)) + payload


def sauc_result(message: bytes) -> tuple[int, dict[str, Any]]:
    flags = message[1] & 0x0F
    offset = 4 + (4 if flags & 0x1 else 0)
    (size,) = struct.unpack_from(">I", message, offset)
    payload = message[offset + 4 : offset + 4 + size]
    if message[2] & 0x0F == 1:
        payload = gzip.decompress(payload)
    return flags, json.loads(payload)


def go_demo_frames(pcm: bytes, segment: int = 6400) -> tuple[bytes, list[bytes]]:
    """seed 004's Go demo: a full client request numbered 1, then the WAV file in segments numbered 2…N+1 in
    text frames, the last one negative."""
    request = {
        "user": {"uid": "demo_uid"},
        "audio": {"format": "wav", "codec": "raw", "rate": 16000, "bits": 16, "channel": 1},
        "request": {
            "model_name": "bigmodel",
            "enable_itn": True,
            "enable_punc": True,
            "enable_ddc": True,
            "show_utterances": True,
            "enable_nonstream": False,
        },
    }
    full = sauc_frame(0x11, gzip.compress(json.dumps(request).encode()), 1)
    data = wav_file(pcm)
    segments = [data[i : i + segment] for i in range(0, len(data), segment)]
    audio = []
    for number, piece in enumerate(segments, start=2):
        last = number == len(segments) + 1
        audio.append(sauc_frame(0x23 if last else 0x21, gzip.compress(piece), -number if last else number))
    return full, audio


async def test_zyun360_go_demo_sends_audio_in_text_frames_and_completes() -> None:
    options = EmulatorOptions(script=["今天天气很好", "我们去公园散步"])
    async with running(Zyun360Emulator(options)) as emulator:
        full, audio = go_demo_frames(SPEECH)
        async with connect(emulator.url, additional_headers={"Authorization": "Bearer test-key"}) as ws:
            await ws.send(full)
            await ws.recv()
            results: list[tuple[int, dict[str, Any]]] = []
            for packet in audio:
                # gorilla's WriteMessage(websocket.TextMessage, …): binary payload, text opcode.
                await ws.send(packet, text=True)
            async with asyncio.timeout(WAIT):
                while not results or results[-1][0] != 0x3:
                    message = await ws.recv()
                    assert isinstance(message, bytes)
                    results.append(sauc_result(message))
        record = only_stream(emulator)
    assert results[-1][1]["result"]["text"] == "今天天气很好我们去公园散步"
    assert record.violations == [] and record.completed
    assert record.notes == ["binary payloads in WebSocket text frames (360's Go demo sends them so)"]
    assert record.pcm_bytes == len(SPEECH)


async def test_volcengine_still_refuses_audio_in_text_frames() -> None:
    headers = {"X-Api-App-Key": "app", "X-Api-Access-Key": "test-key", "X-Api-Resource-Id": "volc.bigasr.sauc.duration"}
    async with running(VolcengineEmulator()) as emulator:
        full, audio = go_demo_frames(SPEECH)
        async with connect(emulator.url, additional_headers=headers) as ws:
            await ws.send(full)
            await ws.recv()
            await ws.send(audio[0], text=True)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(WAIT):
                    while True:
                        await ws.recv()
        assert ws.close_code == 1007
        assert only_stream(emulator).notes == []


# -- Yating -----------------------------------------------------------------------------------------------


async def yating_token(emulator: YatingEmulator, pipeline: str = "asr-zh-tw-std") -> str:
    host, port = "127.0.0.1", int(emulator.token_url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"pipeline": pipeline}).encode()
    writer.write(
        b"POST /v1/token HTTP/1.1\r\nHost: x\r\nkey: test-key\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["auth_token"])


async def test_yating_audio_sent_as_soon_as_the_socket_opens_is_recognised() -> None:
    # The ailabs-asr SDK starts its audio stream in on_open, before session_started arrives.
    async with running(YatingEmulator(EmulatorOptions(script=["今天天氣很好。"]), greeting_delay=0.2)) as emulator:
        assert isinstance(emulator, YatingEmulator)
        token = await yating_token(emulator)
        async with connect(f"{emulator.url}?token={token}", compression=None) as ws:
            pcm = silence(100) + tone(1200) + silence(700)
            for offset in range(0, len(pcm), 2048):
                await ws.send(pcm[offset : offset + 2048])
            await ws.send(b"")
            messages: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while not messages or not messages[-1].get("pipe", {}).get("asr_eof"):
                    messages.append(json.loads(await ws.recv()))
        record = only_stream(emulator)
    assert messages[0]["status"] == "ok"
    assert [m["pipe"]["asr_sentence"] for m in messages if m.get("pipe", {}).get("asr_final")] == ["今天天氣很好。"]
    assert record.violations == []
    assert any("before session_started" in note for note in record.notes)
    assert record.pcm_bytes == len(pcm)


# -- iApp -------------------------------------------------------------------------------------------------


async def iapp_seed_session(
    emulator: IAppEmulator, end_marker: dict[str, Any], tls: ssl.SSLContext | None
) -> list[str]:
    """seed 000's client: 1024-byte frames every 20 ms, then the end marker; reads until the confirmation."""
    texts: list[str] = []
    async with connect(emulator.url, additional_headers={"apikey": "test-key"}, ping_timeout=None, ssl=tls) as ws:

        async def send_audio() -> None:
            for offset in range(0, len(SPEECH), 1024):
                await ws.send(SPEECH[offset : offset + 1024])
                await asyncio.sleep(0.002)
            await ws.send(json.dumps(end_marker))

        sender = asyncio.create_task(send_audio())
        async with asyncio.timeout(WAIT):
            while True:
                data = json.loads(await ws.recv())
                if data.get("text") == "Confirm Close Connection":
                    break
                if data.get("state") == "NewSentence" or not texts:
                    texts.append(data["text"])
                else:
                    texts[-1] = data["text"]
        await sender
    return texts


async def test_iapp_seed_sample_completes_over_tls(certificate: SelfSignedCertificate) -> None:
    options = EmulatorOptions(script=["สวัสดีครับ", "วันนี้อากาศดี"], tls=certificate.server_context())
    async with running(IAppEmulator(options)) as emulator:
        assert emulator.url.startswith("wss://")
        texts = await iapp_seed_session(emulator, {"data": {"status": "CloseConnection"}}, certificate.client_context())
        record = only_stream(emulator)
    assert texts == ["สวัสดีครับ", "วันนี้อากาศดี"]
    assert record.violations == [] and record.notes == [] and record.completed


async def test_iapp_end_marker_in_the_seed_page_wording_is_accepted_and_noted() -> None:
    options = EmulatorOptions(script=["สวัสดีครับ", "วันนี้อากาศดี"])
    async with running(IAppEmulator(options)) as emulator:
        texts = await iapp_seed_session(emulator, {"data": {"status": "end of stream"}}, None)
        record = only_stream(emulator)
    assert texts == ["สวัสดีครับ", "วันนี้อากาศดี"]
    assert record.violations == [] and record.completed
    assert len(record.notes) == 1 and "end of stream" in record.notes[0]


async def test_iapp_other_end_markers_stay_violations() -> None:
    async with running(IAppEmulator()) as emulator:
        async with connect(emulator.url, additional_headers={"apikey": "test-key"}) as ws:
            await ws.send(json.dumps({"data": {"status": "done"}}))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008
        assert len(only_stream(emulator).violations) == 1


# -- Tiro -------------------------------------------------------------------------------------------------


def tiro_seed_requests(pcm: bytes, chunk_frames: int = 1024) -> list[str]:
    """seed 001's generate_requests(): the config, then base64 audio of 1024 frames each; no end marker."""
    config = {
        "streamingConfig": {
            "config": {
                "encoding": "LINEAR16",
                "sampleRateHertz": 16000,
                "enableWordTimeOffsets": True,
                "languageCode": "is-IS-x-exp",
            },
            "interimResults": True,
        }
    }
    step = chunk_frames * 2
    audio = [{"audioContent": base64.b64encode(pcm[i : i + step]).decode()} for i in range(0, len(pcm), step)]
    return [json.dumps(message) for message in [config, *audio]]


async def tiro_seed_session(url: str, tls: ssl.SSLContext, sentences: int) -> tuple[list[str], list[str]]:
    """The sample's read loop, until the finals of ``sentences`` sentences arrived (the sample itself never
    sends the end marker, so, as on the real service, it would wait for more forever)."""
    partials: list[str] = []
    finals: list[str] = []
    async with connect(f"{url}?token=test-key", ssl=tls) as ws:
        for message in tiro_seed_requests(SPEECH):
            await ws.send(message)
        async with asyncio.timeout(WAIT):
            while len(finals) < sentences:
                result = json.loads(await ws.recv())["result"]["results"][0]
                transcript = result["alternatives"][0]["transcript"]
                (finals if result.get("isFinal", False) else partials).append(transcript)
    return partials, finals


async def test_tiro_seed_sample_over_tls_gets_partials_and_finals(certificate: SelfSignedCertificate) -> None:
    script = ["Halló heimur hvað segirðu gott", "Gott að heyra"]
    async with running(TiroEmulator(EmulatorOptions(script=script, tls=certificate.server_context()))) as emulator:
        partials, finals = await tiro_seed_session(emulator.url, certificate.client_context(), 2)
        record = emulator.streams[0]
    assert finals == ["halló heimur hvað segirðu gott", "gott að heyra"]
    # Sent as fast as the socket allows, the audio still gets interims: the recogniser has its own clock.
    assert partials, "no interim results"
    assert all(any(final.startswith(partial) for final in finals) for partial in partials)
    assert record.violations == []


async def test_tiro_interim_held_back_goes_out_without_more_client_messages() -> None:
    # One message carries speech and then nothing more arrives: the interim still comes, on the server's clock.
    emulator = TiroEmulator(EmulatorOptions(script=["eitt tvö þrjú fjögur"]), decode_speed=0)
    async with running(emulator), connect(f"{emulator.url}?token=test-key") as ws:
        for message in tiro_seed_requests(silence(100) + tone(900), chunk_frames=16000):
            await ws.send(message)
        async with asyncio.timeout(WAIT):
            result = json.loads(await ws.recv())["result"]["results"][0]
    transcript = result["alternatives"][0]["transcript"]
    assert result["isFinal"] is False
    assert transcript and "eitt tvö þrjú fjögur".startswith(transcript)


# -- the command line -------------------------------------------------------------------------------------


async def test_emulate_tls_prints_a_certificate_that_clients_trust(tmp_path: Path) -> None:
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asr_daemon",
        "emulate",
        "tiro",
        "--tls",
        "--script",
        "Halló heimur hvað segirðu gott|Gott að heyra",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(WAIT):
            while not any("url:" in line for line in lines):
                lines.append((await process.stdout.readline()).decode())
        certificate = Path(next(line for line in lines if "certificate" in line).rsplit(" ", 1)[1].strip())
        url = next(line for line in lines if "url:" in line).rsplit(" ", 1)[1].strip()
        assert url.startswith("wss://")
        tls = ssl.create_default_context(cafile=str(certificate))
        partials, finals = await tiro_seed_session(url, tls, 2)
        assert finals == ["halló heimur hvað segirðu gott", "gott að heyra"]
        assert partials
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), WAIT)
    assert not await asyncio.to_thread(certificate.exists), "the certificate's directory is removed at exit"


# -- the frame rewriter -----------------------------------------------------------------------------------


def test_unmasked_frames_get_a_zero_mask_however_the_bytes_are_split() -> None:
    from asr_daemon.emulators.base import ClientFrameRewriter, ClientTolerance

    request = b"GET /v1/ HTTP/1.1\r\nHost: x\r\n\r\n"
    payloads = [b"s LSB16K -a-general", b"p" + bytes(300), b"p" + bytes(70000), b"e"]
    opcodes = [TEXT, BINARY, BINARY, TEXT]
    sent = bytearray(request)
    expected = bytearray(request)
    for opcode, payload in zip(opcodes, payloads, strict=True):
        length = len(payload)
        if length < 126:
            size, masked_size = bytes((length,)), bytes((0x80 | length,))
        elif length < 65536:
            size, masked_size = bytes((126,)) + length.to_bytes(2, "big"), bytes((0xFE,)) + length.to_bytes(2, "big")
        else:
            size, masked_size = bytes((127,)) + length.to_bytes(8, "big"), bytes((0xFF,)) + length.to_bytes(8, "big")
        sent += bytes((0x80 | opcode,)) + size + payload
        expected += bytes((0x80 | opcode,)) + masked_size + b"\0\0\0\0" + payload
    for step in (1, 7, 4096, len(sent)):
        rewriter = ClientFrameRewriter(ClientTolerance(unmasked_frames=True))
        out = b"".join(rewriter.feed(bytes(sent[i : i + step])) for i in range(0, len(sent), step))
        assert out == bytes(expected), step
        assert rewriter.unmasked == 4 and rewriter.text_frames == 0
