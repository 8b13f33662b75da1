"""The benchmark still runs: its tiny configuration, end to end, once (its timings are not looked at); and its
Home Assistant 2026.11-like client ends a request the moment a server answers before the end of audio."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStop
from wyoming.event import async_read_event, async_write_event

from bench.load import encode_utterance, felt_daemon_stream
from bench.scenario import BYTES_PER_SECOND, CASES, felt_speech_for, home_assistant_vad_end, voiced_end
from tests.support.mosquitto import have_mosquitto
from tests.support.speech import have_speech_tools

ROOT = Path(__file__).resolve().parents[1]

needs_speech = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")


def test_voiced_end_is_the_end_of_the_last_frame_with_sound() -> None:
    tone = (b"\x00\x10" * 160) * 30  # 30 loud 10 ms frames
    quiet = b"\x00\x00" * 160 * 50
    assert voiced_end(quiet + tone + quiet) == len(quiet) + len(tone)
    assert voiced_end(quiet) == 0


def test_home_assistant_vad_ends_a_command_after_its_silence_and_never_on_silence_alone() -> None:
    """The (b) client stops where Home Assistant's pipeline would: 0.7 s of silence as pymicro-vad hears it,
    which comes some hundreds of ms after the last voiced frame (Home Assistant 2026.11 measured 1.3 s)."""
    case = CASES[0]
    pcm = felt_speech_for(case, 3.0)
    stop = home_assistant_vad_end(pcm)
    assert stop is not None
    after = (stop - voiced_end(pcm)) / BYTES_PER_SECOND
    assert 0.7 <= after < 2.5
    assert home_assistant_vad_end(bytes(BYTES_PER_SECOND * 3)) is None


async def test_the_felt_client_stops_uploading_at_an_early_transcript() -> None:
    """A server that answers once it heard 0.2 s past the speech (what endpointing does): the client stops
    uploading, never sends audio-stop, and times the answer from the piece holding the last voiced frame."""
    case = CASES[0]
    speech = (b"\x00\x10" * 160) * 50  # 0.5 s of sound
    pcm = speech + b"\x00\x00" * 160 * 300  # then 3 s of silence
    end = voiced_end(pcm)
    received = bytearray()
    stopped = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        while (event := await async_read_event(reader)) is not None:
            if AudioChunk.is_type(event.type):
                received.extend(AudioChunk.from_event(event).audio)
                if not answered and len(received) >= end + BYTES_PER_SECOND // 5:
                    answered = True
                    await async_write_event(Transcript(text=case.text).event(), writer)
            elif AudioStop.is_type(event.type):
                stopped.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await felt_daemon_stream(
            port, case, pcm, path="endpointing", voiced_end=end, stop_after=None, piece_bytes=320, pace=4.0,
            slot=0, iteration=0, encoded=encode_utterance(pcm, 320),
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 0.3)
    assert result.ok and result.early
    assert not stopped.is_set()
    # The upload stopped at the answer, long before the 3 s of silence were sent.
    assert result.sent_seconds is not None and result.sent_seconds < len(pcm) / BYTES_PER_SECOND * 3 / 4
    assert len(received) < len(pcm) * 3 // 4
    # Timed from the last voiced piece to the answer.
    assert result.latency is not None and result.latency > 0


async def test_without_an_early_answer_the_felt_client_ends_audio_itself() -> None:
    """Home Assistant's VAD mode: audio-stop after ``stop_after`` bytes, then the answer."""
    case = CASES[0]
    pcm = (b"\x00\x10" * 160) * 20 + b"\x00\x00" * 160 * 200
    end = voiced_end(pcm)
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (event := await async_read_event(reader)) is not None:
            if AudioChunk.is_type(event.type):
                received.extend(AudioChunk.from_event(event).audio)
            elif AudioStop.is_type(event.type):
                await async_write_event(Transcript(text=case.text).event(), writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await felt_daemon_stream(
            port, case, pcm, path="ha-vad", voiced_end=end, stop_after=end + 3200, piece_bytes=320, pace=8.0,
            slot=0, iteration=0, encoded=encode_utterance(pcm, 320),
        )  # fmt: skip
    assert result.ok and result.early is False
    assert len(received) == end + 3200
    assert result.latency is not None and result.latency > 0


@needs_speech
def test_tiny_benchmark_runs_every_vendor_through_both_paths(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["clean"]
    levels = results["levels"]
    assert [level["figures"]["level"] for level in levels] == [1, 5]
    streams = [stream for level in levels for stream in level["streams"]]
    # Both paths, every vendor, every answer the scripted text.
    assert {(s["path"], s["vendor"]) for s in streams} >= {
        (path, vendor)
        for path in ("daemon", "direct")
        for vendor in ("amivoice", "iapp", "tiro", "yating", "zyun360")
    }
    assert all(s["error"] is None and s["text"] == s["expected"] for s in streams)
    assert all(s["latency"] is not None for s in streams)
    # Every figure the report promises is there (its value is not judged here).
    budgets = {row["budget"] for row in results["budgets"]}
    assert any(name.startswith("CPU per real-time stream") for name in budgets)
    assert any(name.startswith("idle RSS") for name in budgets)
    assert any(name.startswith("start → ready") for name in budgets)
    # The wake-up floor got each level's chunks and its CPU was read.
    for level in levels:
        assert level["floor_audio_seconds"] > 0
        assert level["figures"]["floor_pct_per_stream"] > 0
    assert results["environment"]["floor_event_loop"] in ("uvloop", "asyncio")
    assert results["after"]["exit_code"] == 0
    assert [line for line in results["after"]["log_errors"] if " ERROR " in line or "Traceback" in line] == []

    # 10 ms chunks by default, and the CPU again with 32 ms chunks, each against its own floor.
    assert results["plan"]["piece_bytes"] == 320
    assert [(o["figures"]["level"], o["figures"]["piece_bytes"]) for o in results["other_pieces"]] == [(1, 1024)]
    assert all(o["floor_audio_seconds"] > 0 for o in results["other_pieces"])
    assert {name for name in budgets if name.startswith("CPU per real-time stream, 1 stream")} == {
        "CPU per real-time stream, 1 stream, 10 ms chunks",
        "CPU per real-time stream, 1 stream, 32 ms chunks",
    }
    # What users feel: the three modes side by side at each felt level, every vendor, every answer right and
    # timed from the last voiced frame.
    felt = results["felt"]
    assert [level["figures"]["level"] for level in felt] == [1, 2]
    felt_streams = [stream for level in felt for stream in level["streams"]]
    satellite_mode = {"satellite"} if have_mosquitto() else set()
    assert {s["path"] for s in felt_streams} == {"endpointing", "ha-vad", "vendor"} | satellite_mode
    assert all(s["error"] is None and s["text"] == s["expected"] for s in felt_streams)
    assert all(s["latency"] is not None and s["latency"] > 0 for s in felt_streams)
    # Home Assistant's VAD mode stops sending 0.7 s after the speech, before the audio's seconds of silence end.
    assert all(s["sent_seconds"] < s["audio_seconds"] for s in felt_streams if s["path"] == "ha-vad")
    assert any(name.startswith("felt latency p50, 1 stream: endpointing ÷") for name in budgets)
    assert any(name.startswith("felt latency p95, endpointing:") for name in budgets)
    assert [line for line in results["felt_log_errors"] if " ERROR " in line or "Traceback" in line] == []
    # The satellite mode (with mosquitto): emulated satellites at 1 and 2 at once, each command's transcript
    # timed on MQTT and on the satellite's own connection, with its budget row against mode (a).
    satellite_row = next(row for row in results["budgets"] if row["budget"].startswith("felt latency p50, satellite"))
    if have_mosquitto():
        satellites = [s for level in felt for s in level["streams"] if s["path"] == "satellite"]
        assert sorted({(level["figures"]["level"], s["slot"]) for level in felt for s in level["streams"]
                       if s["path"] == "satellite"}) == [(1, 0), (2, 0), (2, 1)]  # fmt: skip
        assert all(s["link_latency"] is not None and s["link_latency"] > 0 for s in satellites)
        assert satellite_row["value"] is not None and satellite_row["pass"] is not None
    else:
        assert satellite_row["pass"] is None and results["satellite_skipped"]

    report = (tmp_path / "RESULTS.md").read_text()
    assert "## What users feel: last voiced frame → transcript (ms)" in report
    assert "## Budgets ([docs/architecture.md](../docs/architecture.md#performance-budgets))" in report
    assert "| 5 | 5 + 5 |" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latency.png").stat().st_size > 0
