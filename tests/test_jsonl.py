"""JSON lines: one object per event, to a file or to stdout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from tests.support.daemon import running_daemon
from tests.support.mosquitto import free_port
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

SCRIPT = ["こんにちは", "今日は良い天気です"]


async def run_one(tmp_path: Path, **events: object) -> tuple[list[dict[str, object]], str | None]:
    path = tmp_path / "logs" / "events.jsonl"
    async with AmiVoiceEmulator(EmulatorOptions(script=SCRIPT)).running() as emulator:
        config = {
            "vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}},
            "events": {"jsonl": str(path), **events},
        }
        async with running_daemon(config) as daemon:
            pcm = utterance("hello there my friend", "the weather is nice today")
            result = await transcribe(daemon.port, pcm, language="ja", realtime=True)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines, result.text


async def test_events_are_appended_to_a_file_one_object_per_line(tmp_path: Path) -> None:
    lines, text = await run_one(tmp_path)
    kinds = [line["kind"] for line in lines]
    assert kinds == ["state", "utterance-start", "utterance-end", "transcript", "state"]
    assert [line["state"] for line in lines if line["kind"] == "state"] == ["ready", "stopping"]
    final = lines[3]
    assert final["text"] == text == "こんにちは今日は良い天気です"
    assert final["vendor"] == "amivoice" and final["language"] == "ja"
    assert str(final["source"]).startswith("wyoming:127.0.0.1:")
    assert all(list(line)[:3] == ["id", "kind", "time"] for line in lines)
    assert len({line["id"] for line in lines}) == len(lines)
    # Appended, never truncated: a second run adds to the same file.
    more, _ = await run_one(tmp_path)
    assert len(more) == 2 * len(lines)
    assert more[: len(lines)] == lines


async def test_partials_only_when_asked_for(tmp_path: Path) -> None:
    lines, text = await run_one(tmp_path, jsonl_partials=True)
    partials = [line for line in lines if line["kind"] == "partial"]
    assert partials
    assert all(text and text.startswith(str(p["text"])) for p in partials)


async def test_stdout_gets_json_lines_and_logs_stay_on_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env.update(ASR_DAEMON_WYOMING__URI=f"tcp://127.0.0.1:{free_port()}", ASR_DAEMON_EVENTS__JSONL="-")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asr_daemon", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert first["kind"] == "state" and first["state"] == "ready" and first["source"] == "daemon"
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    rest = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["state"] for line in rest] == ["stopping"]
    assert b"listening on" in err


def test_an_unwritable_file_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    import subprocess

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env.update(
        ASR_DAEMON_WYOMING__URI=f"tcp://127.0.0.1:{free_port()}",
        ASR_DAEMON_EVENTS__JSONL=str(blocker / "events.jsonl"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "events.jsonl" in done.stderr and "cannot write" in done.stderr
