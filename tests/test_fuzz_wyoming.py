"""Fuzzing a Wyoming connection in-process (reader and handler, as a client hits them): whatever bytes a client
sends, in whatever segments, the connection is answered or closed within bounded steps, errors carry a known
code and a short text (never an internal error), and nothing it started outlives it.

A few hundred cases here; ``FUZZ_EXAMPLES=100000`` for the long run (docs/fuzzing.md).
"""

from __future__ import annotations

import pytest
from hypothesis import given

from tests.fuzz import fuzz_settings
from tests.fuzz.wyoming import ConnectionFailure, client_streams, frame, known_failure, run_connection

CI_EXAMPLES = 400
PCM = bytes(640)
FORMAT = {"rate": 16000, "width": 2, "channels": 1}


@fuzz_settings(CI_EXAMPLES)
@given(client_streams())
async def test_any_client_bytes_are_answered_or_closed_and_free_everything(stream: tuple[list[bytes], bool]) -> None:
    segments, lost = stream
    try:
        await run_connection(segments, lost=lost)
    except ConnectionFailure as failure:
        if known_failure(failure) is None:
            raise  # the known ones have their own tests below


async def test_a_deeply_nested_header_is_answered_as_a_bad_event() -> None:
    # 20,000 deep: past the JSON parser's recursion limit on every Python the daemon supports, within 64 KiB.
    outcome = await run_connection([b"[" * 20_000 + b"]" * 20_000 + b"\n"])
    assert [(e.type, e.data.get("code")) for e in outcome.answers] == [("error", "bad-event")]


@pytest.mark.parametrize("names", ["abc", 5])
async def test_transcript_names_that_are_not_a_list_are_a_bad_event_not_an_internal_error(names: object) -> None:
    outcome = await run_connection(
        [
            frame({"type": "transcribe", "data": {"transcript_names": names, "language": "en"}}),
            frame({"type": "audio-chunk", "data": FORMAT, "payload_length": len(PCM)}, b"", PCM),
            frame({"type": "audio-stop"}),
        ]
    )
    codes = [e.data.get("code") for e in outcome.answers if e.type == "error"]
    assert codes[0] == "bad-event" and "internal" not in codes, codes


async def test_an_utterance_through_the_harness_gets_its_transcript() -> None:
    """The harness itself: a well-formed utterance, one byte per segment, reaches the stub vendor's answer."""
    data = (
        frame({"type": "transcribe", "data": {"language": "en"}})
        + frame({"type": "audio-start", "data": FORMAT})
        + frame({"type": "audio-chunk", "data": FORMAT, "payload_length": len(PCM)}, b"", PCM)
        + frame({"type": "audio-stop"})
    )
    outcome = await run_connection([data[i : i + 1] for i in range(len(data))])
    transcripts = [e.data.get("text") for e in outcome.answers if e.type == "transcript"]
    assert transcripts == ["hello world"]
