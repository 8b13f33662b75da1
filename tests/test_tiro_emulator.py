"""Tiro emulator, driven by a raw ``websockets`` client: every answer as docs/protocols/tiro.md describes it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import time
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.tiro import TiroEmulator

SCRIPT = ["Halló heimur, hvað segirðu.", "Gott að heyra."]

CONFIG: dict[str, Any] = {
    "encoding": "LINEAR16",
    "sampleRateHertz": 16000,
    "languageCode": "is-IS",
    "maxAlternatives": 1,
    "enableWordTimeOffsets": True,
    "enableAutomaticPunctuation": True,
}


def config_message(streaming: dict[str, Any] | None = None, **config: Any) -> str:
    body = {"config": CONFIG | config, "singleUtterance": False, "interimResults": True} | (streaming or {})
    return json.dumps({"streamingConfig": body})


def tone(ms: int) -> bytes:
    samples = array("h", (round(8000 * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(16 * ms)))
    return samples.tobytes()


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


TWO_SENTENCES = silence(200) + tone(1200) + silence(700) + tone(600) + silence(700)


def audio_messages(pcm: bytes, chunk: int = 3200) -> list[str]:
    return [
        json.dumps({"audioContent": base64.b64encode(pcm[i : i + chunk]).decode()}) for i in range(0, len(pcm), chunk)
    ]


END = '{"audioContent":""}'


@dataclass
class Reply:
    messages: list[dict[str, Any]] = field(default_factory=list)
    # The close code the server sent; None when the connection ended without a close frame.
    close_code: int | None = None
    closed: bool = False


async def read_all(ws: ClientConnection, wait: float = 5.0) -> Reply:
    reply = Reply()
    try:
        async with asyncio.timeout(wait):
            async for message in ws:
                reply.messages.append(json.loads(message))
    except ConnectionClosed:
        pass
    except TimeoutError:
        return reply
    reply.closed = True
    rcvd = ws.protocol.close_rcvd
    reply.close_code = rcvd.code if rcvd is not None else None
    return reply


@asynccontextmanager
async def emulator(options: EmulatorOptions | None = None, **kwargs: Any) -> AsyncIterator[TiroEmulator]:
    emu = TiroEmulator(options or EmulatorOptions(script=SCRIPT), **kwargs)
    async with emu.running():
        yield emu


def client(emu: TiroEmulator, token: str | None = "test-key") -> Any:
    url = emu.url if token is None else f"{emu.url}?token={token}"
    return connect(url, ping_interval=None, compression=None)


async def exchange(emu: TiroEmulator, *messages: str | bytes) -> Reply:
    async with client(emu) as ws:
        for message in messages:
            await ws.send(message)
        return await read_all(ws)


def finals(reply: Reply) -> list[str]:
    return [
        m["result"]["results"][0]["alternatives"][0]["transcript"]
        for m in reply.messages
        if "result" in m and m["result"]["results"] and m["result"]["results"][0]["isFinal"]
    ]


def interims(reply: Reply) -> list[str]:
    return [
        m["result"]["results"][0]["alternatives"][0]["transcript"]
        for m in reply.messages
        if "result" in m and m["result"]["results"] and not m["result"]["results"][0]["isFinal"]
    ]


def bad_request(*violations: tuple[str, str]) -> dict[str, Any]:
    return {
        "error": {
            "code": 3,
            "message": "Invalid request. See details",
            "details": [
                {
                    "@type": "types.talgreinir.is/google.rpc.BadRequest",
                    "fieldViolations": [{"field": f, "description": d} for f, d in violations],
                }
            ],
        }
    }


# -- a good stream ------------------------------------------------------------------------------------------


async def test_two_sentences_get_interims_finals_and_a_close_without_close_frame() -> None:
    async with emulator(interim_interval=0) as emu:
        reply = await exchange(emu, config_message(), *audio_messages(TWO_SENTENCES), END)
        record = emu.streams[0]
    assert finals(reply) == SCRIPT
    # Each interim is the growing hypothesis of the open segment, sent only when it changed.
    partials = interims(reply)
    assert partials == ["Halló", "Halló heimur,", "Halló heimur, hvað", "Gott", "Gott að"]
    assert reply.closed and reply.close_code is None
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(TWO_SENTENCES)
    assert record.pcm_sha256 == hashlib.sha256(TWO_SENTENCES).hexdigest()


async def test_final_result_wire_format() -> None:
    async with emulator(EmulatorOptions(script=["Gott að heyra."])) as emu:
        config = config_message({"interimResults": False})
        reply = await exchange(emu, config, *audio_messages(silence(500) + tone(900)), END)
    (message,) = reply.messages
    assert message == {
        "result": {
            "error": None,
            "results": [
                {
                    "alternatives": [
                        {
                            "transcript": "Gott að heyra.",
                            "confidence": 0,
                            "words": [
                                {
                                    "startTime": "0.500s",
                                    "endTime": "0.800s",
                                    "word": "Gott",
                                    "confidence": 0,
                                    "speakerTag": 0,
                                },
                                {
                                    "startTime": "0.800s",
                                    "endTime": "1.100s",
                                    "word": "að",
                                    "confidence": 0,
                                    "speakerTag": 0,
                                },
                                {
                                    "startTime": "1.100s",
                                    "endTime": "1.400s",
                                    "word": "heyra.",
                                    "confidence": 0,
                                    "speakerTag": 0,
                                },
                            ],
                        }
                    ],
                    "isFinal": True,
                    "stability": 0,
                }
            ],
            "speechEventType": "SPEECH_EVENT_UNSPECIFIED",
        }
    }


async def test_close_mode_normal_sends_close_code_1000() -> None:
    async with emulator(close_mode="normal") as emu:
        reply = await exchange(emu, config_message(), *audio_messages(TWO_SENTENCES), END)
    assert finals(reply) == SCRIPT
    assert reply.close_code == 1000


async def test_pure_silence_gets_no_message_at_all() -> None:
    async with emulator(interim_interval=0) as emu:
        reply = await exchange(emu, config_message(), *audio_messages(silence(1500)), END)
        assert emu.streams[0].pcm_bytes == 32 * 1500
    assert reply.messages == []
    assert reply.closed


async def test_end_bytes_also_end_the_stream() -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message(), *audio_messages(tone(600)), '{"audioContent":"RU5E"}')
        record = emu.streams[0]
    assert finals(reply) == [SCRIPT[0]]
    assert record.completed and record.violations == []


async def test_interims_not_asked_for_are_not_sent() -> None:
    async with emulator(interim_interval=0) as emu:
        reply = await exchange(emu, config_message({"interimResults": False}), *audio_messages(TWO_SENTENCES), END)
    assert interims(reply) == []
    assert finals(reply) == SCRIPT


async def test_interims_are_throttled() -> None:
    # Sent faster than real time, the audio's hypotheses change within one interval: none goes out.
    async with emulator(interim_interval=30) as emu:
        reply = await exchange(emu, config_message(), *audio_messages(TWO_SENTENCES), END)
    assert interims(reply) == []
    assert finals(reply) == SCRIPT


async def test_without_punctuation_the_transcript_is_plain_words() -> None:
    async with emulator() as emu:
        reply = await exchange(
            emu, config_message(enableAutomaticPunctuation=False), *audio_messages(TWO_SENTENCES), END
        )
    assert finals(reply) == ["halló heimur hvað segirðu", "gott að heyra"]


async def test_without_word_time_offsets_there_are_no_words() -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message(enableWordTimeOffsets=False), *audio_messages(tone(600)), END)
    (message,) = reply.messages
    assert message["result"]["results"][0]["alternatives"][0]["words"] == []


async def test_single_utterance_ends_after_the_first_final() -> None:
    async with emulator() as emu, client(emu) as ws:
        await ws.send(config_message({"singleUtterance": True}))
        for message in audio_messages(TWO_SENTENCES):
            await ws.send(message)
        reply = await read_all(ws)
    assert finals(reply) == [SCRIPT[0]]
    assert reply.messages[-1] == {
        "result": {"error": None, "results": [], "speechEventType": "END_OF_SINGLE_UTTERANCE"}
    }
    assert reply.closed


# -- protojson leniency -------------------------------------------------------------------------------------


async def test_snake_case_quoted_integers_nulls_are_accepted_and_unknown_fields_ignored() -> None:
    first = json.dumps(
        {
            "streaming_config": {
                "config": {
                    "encoding": 1,
                    "sample_rate_hertz": "16000",
                    "language_code": "is-IS",
                    "max_alternatives": "1",
                    "enable_automatic_punctuation": True,
                    "metadata": {"interactionType": "VOICE_COMMAND"},
                    "sampleRate": 8000,
                },
                "interim_results": None,
            },
            "audio_content": None,
        }
    )
    async with emulator() as emu:
        reply = await exchange(emu, first, *audio_messages(tone(600)), END)
        record = emu.streams[0]
    assert finals(reply) == [SCRIPT[0]]
    # The vendor ignores the typo silently; the emulator records it so a client bug shows.
    assert record.violations == ["unknown field 'streamingConfig.config.sampleRate' (the vendor ignores it silently)"]


async def test_a_binary_frame_is_read_like_text_but_recorded() -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message().encode(), *audio_messages(tone(600)), END)
        record = emu.streams[0]
    assert finals(reply) == [SCRIPT[0]]
    assert record.violations == ["binary frame (Tiro expects JSON in text frames)"]


async def test_other_sample_rates_are_accepted_but_not_emulated() -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message(sampleRateHertz=8000), *audio_messages(tone(600)), END)
        record = emu.streams[0]
    assert finals(reply) == [SCRIPT[0]]
    assert record.violations == ["sampleRateHertz 8000: the emulator recognises 16000 only"]


async def test_a_missing_sample_rate_fails_inside_the_server() -> None:
    config = {k: v for k, v in CONFIG.items() if k != "sampleRateHertz"}
    first = json.dumps({"streamingConfig": {"config": config}})
    async with emulator() as emu:
        reply = await exchange(emu, first)
    assert reply.messages == [{"error": {"code": 13, "message": "Unknown error in StreamingRecognize.", "details": []}}]


# -- strict validation of the first message -----------------------------------------------------------------

LINEAR16_ONLY = (
    "streaming_config.config.encoding",
    "LINEAR16 currently only supported encoding for StreamingRecognize",
)
SEE_DETAILS = (
    "streaming_config.config",
    "Error validating field 'streaming_config.config'. See error details.",
)


@pytest.mark.parametrize(
    ("first", "violations"),
    [
        (
            '{"audioContent":"AAAA"}',
            [("audio_content", "First message can only contain the field 'streaming_config'")],
        ),
        (
            '{"audioContent":""}',
            [("audio_content", "First message can only contain the field 'streaming_config'")],
        ),
        (
            "{}",
            [("oneof_streaming_request", "Either 'streaming_config' or 'audio_content' needs to be set.")],
        ),
        (
            '{"streamingConfig":{}}',
            [("streaming_config.config", "Required field 'streaming_config.config' missing")],
        ),
        (
            '{"streamingConfig":{"interimResults":true}}',
            [("streaming_config.config", "Required field 'streaming_config.config' missing")],
        ),
        (
            config_message(encoding="FLAC", languageCode="xx", maxAlternatives=31),
            [
                LINEAR16_ONLY,
                SEE_DETAILS,
                (
                    "streaming_config.config.language_code",
                    "Unsupported value 'xx' for field 'language_code'.",
                ),
                (
                    "streaming_config.config.max_alternatives",
                    "Valid values for field 'max_alternatives' are in range [1;30]",
                ),
            ],
        ),
        (
            json.dumps({"streamingConfig": {"config": {"sampleRateHertz": 16000}}}),
            [
                LINEAR16_ONLY,
                SEE_DETAILS,
                ("streaming_config.config.encoding", "The field 'encoding' must be specified."),
                ("streaming_config.config.language_code", "Field 'language_code' is required. "),
            ],
        ),
        (
            config_message(encoding=5),
            [
                LINEAR16_ONLY,
                SEE_DETAILS,
                ("streaming_config.config.encoding", "Unsupported encoding specified."),
            ],
        ),
    ],
)
async def test_first_message_refused_with_the_servers_field_violations(
    first: str, violations: list[tuple[str, str]]
) -> None:
    async with emulator() as emu:
        reply = await exchange(emu, first)
        record = emu.streams[0]
    assert reply.messages == [bad_request(*violations)]
    assert reply.closed
    assert len(record.violations) == len(violations)
    assert not record.completed


@pytest.mark.parametrize(
    "frame",
    [
        "hello",
        "[1, 2]",
        '{"streamingConfig":{"config":{}}, "audioContent":"AAAA"}',
        config_message(encoding="PCM"),
        config_message(sampleRateHertz="fast"),
        config_message(enableWordTimeOffsets="true"),
        config_message(sampleRateHertz=16000.5),
        '{"audioContent":"", "audioContent":"AAAA"}',
        '{"audioContent":"", "audio_content":"AAAA"}',
        '{"streamingConfig": "yes"}',
    ],
)
async def test_undecodable_first_messages_get_invalid_argument(frame: str) -> None:
    async with emulator() as emu:
        reply = await exchange(emu, frame)
        record = emu.streams[0]
    (message,) = reply.messages
    assert message["error"]["code"] == 3
    assert message["error"]["message"].startswith("proto: ")
    assert reply.closed
    assert record.violations and record.violations[0].startswith("undecodable message: proto: ")


async def test_bad_base64_mid_stream_gets_invalid_argument() -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message(), *audio_messages(tone(200)), '{"audioContent":"!!not base64"}')
        record = emu.streams[0]
    assert reply.messages[-1]["error"]["code"] == 3
    assert reply.closed
    assert record.pcm_bytes == 32 * 200
    assert len(record.violations) == 1


async def test_unpadded_base64_is_accepted_like_protojson_but_recorded() -> None:
    pcm = tone(600)
    unpadded = [json.dumps({"audioContent": base64.b64encode(pcm[:3202]).decode().rstrip("=")})]
    async with emulator() as emu:
        reply = await exchange(emu, config_message(), *unpadded, *audio_messages(pcm[3202:]), END)
        record = emu.streams[0]
    assert finals(reply) == [SCRIPT[0]]
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()
    assert record.violations == ["audioContent is not padded standard base64"]


@pytest.mark.parametrize("later", [config_message(), "{}"])
async def test_a_later_message_without_audio_ends_the_stream_like_the_server(later: str) -> None:
    async with emulator() as emu:
        reply = await exchange(emu, config_message(), *audio_messages(tone(600)), later, *audio_messages(tone(600)))
        record = emu.streams[0]
    # The server's read loop stops at the first message without audio, finalises, and reads nothing more.
    assert finals(reply) == [SCRIPT[0]]
    assert record.pcm_bytes == 32 * 600
    assert len(record.violations) == 1


# -- auth ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["wrong-key", "", None])
async def test_bad_or_missing_token_is_refused_with_401_at_upgrade(token: str | None) -> None:
    async with emulator() as emu:
        with pytest.raises(InvalidStatus) as refused:
            async with client(emu, token):
                pass
        assert emu.streams == []
        assert emu.rejected_upgrades == 1
    assert refused.value.response.status_code == 401


async def test_bad_token_as_an_error_line_option() -> None:
    async with emulator(auth_failure="error_line") as emu:
        async with client(emu, "wrong-key") as ws:
            reply = await read_all(ws)
        record = emu.streams[0]
    assert reply.messages == [{"error": {"code": 16, "message": "invalid or missing token", "details": []}}]
    assert reply.closed
    assert record.violations == ["invalid or missing token"]


async def test_unknown_path_is_404() -> None:
    async with emulator() as emu:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{emu.base_url}/v1/speech:streamingrecognize?token=test-key"):
                pass
    assert refused.value.response.status_code == 404


# -- faults -------------------------------------------------------------------------------------------------


async def test_drop_cuts_the_connection_after_the_configured_bytes() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.DROP, fault_after_bytes=6400)
    async with emulator(options) as emu:
        async with client(emu) as ws:
            await ws.send(config_message())
            for message in audio_messages(TWO_SENTENCES):
                try:
                    await ws.send(message)
                except ConnectionClosed:
                    break
                await asyncio.sleep(0)
            reply = await read_all(ws)
        record = emu.streams[0]
    assert reply.closed and reply.close_code is None
    assert finals(reply) == []
    assert record.fault_applied
    assert 6400 <= record.pcm_bytes < len(TWO_SENTENCES)


async def test_stall_stops_answering_and_never_closes() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.STALL, fault_after_bytes=3200)
    async with emulator(options) as emu:
        async with client(emu) as ws:
            for message in [config_message(), *audio_messages(TWO_SENTENCES), END]:
                await ws.send(message)
            reply = await read_all(ws, wait=0.5)
        assert emu.streams[0].fault_applied
    assert reply.messages == []
    assert not reply.closed


async def test_error_at_start_is_an_internal_error_line() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.ERROR_AT_START, fault_streams=1)
    async with emulator(options) as emu:
        failed = await exchange(emu, config_message(), *audio_messages(tone(600)), END)
        # Only the first stream is faulted, so a retry succeeds.
        retried = await exchange(emu, config_message(), *audio_messages(tone(600)), END)
    assert failed.messages == [
        {"error": {"code": 13, "message": "Unknown error in StreamingRecognize.", "details": []}}
    ]
    assert failed.closed
    assert finals(retried) == [SCRIPT[0]]


async def test_idle_timeout_cuts_a_silent_client() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3)
    async with emulator(options) as emu:
        async with client(emu) as ws:
            await ws.send(config_message())
            await ws.send(audio_messages(tone(200))[0])
            started = time.monotonic()
            reply = await read_all(ws, wait=3)
            waited = time.monotonic() - started
        assert emu.streams[0].fault_applied
    assert reply.closed and reply.close_code is None
    assert waited < 2


async def test_slow_final_holds_the_last_final_back() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.SLOW_FINAL, slow_final_seconds=0.6)
    async with emulator(options) as emu, client(emu) as ws:
        for message in [config_message(), *audio_messages(tone(600))]:
            await ws.send(message)
        ended = time.monotonic()
        await ws.send(END)
        reply = await read_all(ws)
        waited = time.monotonic() - ended
    assert finals(reply) == [SCRIPT[0]]
    assert waited >= 0.6
