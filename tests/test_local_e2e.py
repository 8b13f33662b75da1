"""English speech (espeak-ng) from a Home Assistant-style Wyoming client, through the daemon, to the local
pocketsphinx engine and back; nothing leaves the machine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from asr_daemon.vendors.local.grammar import missing_reason
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, utterance, wav
from tests.support.wyoming import describe, transcribe

pytestmark = [
    pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox"),
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]

# Slow, clear speech: espeak's voice is far from what the acoustic model was trained on.
SPEED = 125
COMMANDS = [
    "turn on the kitchen light",
    "turn off the kitchen light",
    "turn on the living room light",
    "turn off the living room light",
    "set a timer for ten minutes",
    "what is the weather like today",
    "play some music",
    "stop the music",
]

GRAMMAR = """#JSGF V1.0;
grammar home;

<room> = kitchen | living room | bedroom;
<state> = on | off;
public <command> = turn <state> the <room> light
                 | set a timer for (five | ten | twenty) minutes
                 | (play | stop) the music;
"""


def local(**settings: Any) -> dict[str, Any]:
    return {"vendors": {"local": settings}}


async def test_command_from_a_phrase_list_comes_back_exactly() -> None:
    pcm = utterance("turn on the kitchen light", speed=SPEED)
    async with running_daemon(local(phrases=COMMANDS)) as daemon:
        assert daemon.port is not None
        result = await transcribe(daemon.port, pcm, language="en")
    assert result.error is None, result.error
    assert result.text == "turn on the kitchen light"


async def test_command_from_a_jsgf_grammar_file_comes_back_exactly(tmp_path: Path) -> None:
    grammar = tmp_path / "home.gram"
    grammar.write_text(GRAMMAR, encoding="utf-8")
    spoken = [
        ("turn on the kitchen light", SPEED),
        ("set a timer for twenty minutes", SPEED),
        ("stop the music", SPEED),
        # At espeak's slow rates "off" is mostly heard as "on" (measured in docs/vendors/local.md); at its
        # normal rate it is recognised.
        ("turn off the living room light", 150),
    ]
    async with running_daemon(local(grammar=str(grammar))) as daemon:
        assert daemon.port is not None
        results = [
            await transcribe(daemon.port, utterance(text, speed=speed), language="en-US") for text, speed in spoken
        ]
    assert [(r.error, r.text) for r in results] == [(None, text) for text, _ in spoken]


async def test_two_commands_with_a_pause_are_two_sentences_joined() -> None:
    pcm = utterance("turn on the kitchen light", "stop the music", speed=SPEED, gap_ms=1200)
    async with running_daemon(local(phrases=COMMANDS)) as daemon:
        assert daemon.port is not None
        result = await transcribe(daemon.port, pcm, language="en")
    assert result.error is None, result.error
    assert result.text == "turn on the kitchen light stop the music"


async def test_partials_reach_the_client_while_speaking() -> None:
    pcm = utterance("turn on the living room light", speed=SPEED, tail_ms=1000)
    async with running_daemon(local(phrases=COMMANDS)) as daemon:
        assert daemon.port is not None
        result = await transcribe(daemon.port, pcm, language="en", realtime=True)
    assert result.error is None, result.error
    assert result.text == "turn on the living room light"
    assert result.chunks_before_stop > 0
    # Chunks only append; here every partial grew the one before it, so they add up to the transcript.
    assert "".join(result.chunks).strip() == result.text


async def test_silence_gives_an_empty_transcript_not_an_error() -> None:
    async with running_daemon(local(phrases=COMMANDS)) as daemon:
        assert daemon.port is not None
        result = await transcribe(daemon.port, silence(2000), language="en")
    assert result.error is None
    assert result.text == ""


async def test_open_dictation_without_a_grammar_answers() -> None:
    # Open dictation of synthetic speech is rough (see docs/vendors/local.md for measured figures): the
    # sentence is not expected back word for word, but the engine must answer with what it heard.
    pcm = utterance("what is the weather like today", speed=150)
    async with running_daemon(local()) as daemon:
        assert daemon.port is not None
        info = await describe(daemon.port)
        result = await transcribe(daemon.port, pcm, language="en")
    advertised = {lang for program in info.asr for model in program.models for lang in model.languages}
    assert {"en", "en-US"} <= advertised
    assert result.error is None, result.error
    assert result.text is not None
    assert "weather" in result.text.split()


async def test_transcribe_command_with_phrases_from_the_environment(tmp_path: Path) -> None:
    audio = tmp_path / "command.wav"
    audio.write_bytes(wav(utterance("set a timer for ten minutes", speed=SPEED)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env["ASR_DAEMON_VENDORS__LOCAL__PHRASES"] = '["set a timer for ten minutes", "stop the music"]'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asr_daemon", "transcribe", "--vendor", "local", "--language", "en",
        "--pace", "0", str(audio), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "set a timer for ten minutes"
