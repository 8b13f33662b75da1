"""The daemon under the real Home Assistant 2026.11: added through the Wyoming config flow, used by the voice
pipeline over the websocket API as a satellite uses it (``assist_pipeline/run``, stt stage, 10 ms binary
audio frames at real time: speech, then seconds of silence).

Home Assistant runs from a cached Debian forky root (``python -m tests.support.debian_root forky-ha``; a
first run builds it, which takes minutes) inside a private network namespace with the daemons and the
vendor emulator: see tests/support/home_assistant.py and docs/home-assistant.md.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import debian_root, home_assistant
from tests.support.speech import have_speech_tools

pytestmark = [
    pytest.mark.realpart,
    pytest.mark.skipif(home_assistant.unavailable() is not None, reason=home_assistant.unavailable() or ""),
    pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox"),
    pytest.mark.timeout(2400),
]

REQUESTS = 3


@pytest.fixture(scope="module")
def scenario() -> dict[str, Any]:
    from tests.support.netns import run_in_netns

    started = time.monotonic()
    root = debian_root.ensure_ha_root()
    print(f"\nHome Assistant root ready in {time.monotonic() - started:.0f} s")
    args = {"root": str(root), "requests": REQUESTS, "modes": ["ha_vad", "endpointing"]}
    result: dict[str, Any] = run_in_netns("tests.support.home_assistant:run_voice_scenario", args, timeout=600)[-1][
        "result"
    ]
    print(f"Home Assistant started in {result['start_seconds']:.0f} s")
    for name, mode in result["modes"].items():
        print(name, [run["voice_to_stt_end_ms"] for run in mode["runs"]])
    return result


def test_home_assistant_adds_the_daemon_and_its_own_vad_gets_the_text(scenario: dict[str, Any]) -> None:
    # Endpointing off: Home Assistant's VAD ends each command (stt-vad-end), then the daemon answers.
    mode = scenario["modes"]["ha_vad"]
    assert mode["requires_external_vad"] is True
    assert len(mode["runs"]) == REQUESTS
    for run in mode["runs"]:
        assert run["errors"] == []
        assert run["stt_start"]["audio_processing"]["requires_external_vad"] is True
        assert run["text"] == home_assistant.SCRIPT[0]
        kinds = run["kinds"]
        assert kinds.index("stt-vad-start") < kinds.index("stt-vad-end") < kinds.index("stt-end")
        assert kinds[-1] == "run-end"


def _endpointing(scenario: dict[str, Any]) -> dict[str, Any]:
    mode: dict[str, Any] = scenario["modes"]["endpointing"]
    # The daemon's describe left end-of-speech to the daemon (settings `endpointing.enabled`, the default).
    assert mode["requires_external_vad"] is False
    return mode


def test_with_endpointing_the_daemon_ends_the_command_before_home_assistants_vad(scenario: dict[str, Any]) -> None:
    mode = _endpointing(scenario)
    assert len(mode["runs"]) == REQUESTS
    for run in mode["runs"]:
        assert run["errors"] == []
        # Home Assistant read the describe and left end-of-speech to the daemon: no VAD of its own ran.
        assert run["stt_start"]["audio_processing"]["requires_external_vad"] is False
        assert run["text"] == home_assistant.SCRIPT[0]
        kinds = run["kinds"]
        assert "stt-end" in kinds
        assert "stt-vad-end" not in kinds[: kinds.index("stt-end")]
        assert kinds[-1] == "run-end"
        # It ended while the silence was still being sent, not because the audio ran out.
        total_chunks = -(-len(home_assistant.speech_then_silence()[0]) // home_assistant.CHUNK)
        assert run["chunks_sent"] < total_chunks


def test_with_endpointing_the_answer_comes_sooner_than_with_home_assistants_vad(scenario: dict[str, Any]) -> None:
    mode = _endpointing(scenario)
    with_vad = home_assistant.p50([run["voice_to_stt_end_ms"] for run in scenario["modes"]["ha_vad"]["runs"]])
    endpointed = home_assistant.p50([run["voice_to_stt_end_ms"] for run in mode["runs"]])
    # A generous bound (the machine is shared): the figure itself goes to docs/home-assistant.md.
    assert endpointed < with_vad, (endpointed, with_vad)
