"""The local engine: its sans-I/O parts with plain values, the recogniser with a scripted decoder, and the
threaded stream with real pocketsphinx decoding espeak-ng speech."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from asr_daemon.config import load_settings
from asr_daemon.session import Session, SessionLimits
from asr_daemon.settings import ConfigError
from asr_daemon.vendors import registry
from asr_daemon.vendors.base import (
    PCM16K,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
    VendorFailure,
)
from asr_daemon.vendors.local import adapter as adapter_module
from asr_daemon.vendors.local.adapter import LocalAdapter, LocalSettings
from asr_daemon.vendors.local.codec import Boundary, LocalCodec, SpeechSegmenter
from asr_daemon.vendors.local.engine import IDLE_RESTART_MS, LocalStream, Recogniser
from asr_daemon.vendors.local.grammar import build_grammar, missing_reason, phrase_words
from tests.support.speech import have_speech_tools, silence, utterance
from tests.support.streams import events_until_done

needs_pocketsphinx = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")
needs_speech = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

ENGLISH = StreamOptions(language="en", session_id="test")
COMMANDS = ["turn on the kitchen light", "turn off the kitchen light", "stop the music", "play some music"]
FRAME = 960  # 30 ms at 16 kHz s16le


# ---------------------------------------------------------------------------------------------------------
# SpeechSegmenter


def push_all(segmenter: SpeechSegmenter, pattern: str) -> list[tuple[int, Boundary]]:
    """'s' speech frame, '.' silence; returns (frame index, boundary) for each boundary."""
    found = []
    for index, mark in enumerate(pattern):
        boundary = segmenter.push(mark == "s")
        if boundary is not None:
            found.append((index, boundary))
    return found


def test_speech_starts_after_a_short_run_and_is_dated_from_its_first_frame() -> None:
    segmenter = SpeechSegmenter(frame_ms=30, min_speech_ms=90, end_silence_ms=300)
    assert push_all(segmenter, "....sss") == [(6, Boundary.SPEECH_STARTED)]
    assert segmenter.in_speech
    assert segmenter.speech_start_ms == 4 * 30


def test_single_frame_blips_are_not_speech() -> None:
    segmenter = SpeechSegmenter(frame_ms=30, min_speech_ms=90, end_silence_ms=300)
    assert push_all(segmenter, "s..s.ss..s.s..") == []
    assert not segmenter.in_speech


def test_a_pause_shorter_than_the_sentence_pause_does_not_end_the_sentence() -> None:
    segmenter = SpeechSegmenter(frame_ms=30, min_speech_ms=90, end_silence_ms=300)
    boundaries = push_all(segmenter, "sssss" + "." * 9 + "sss" + "." * 10)
    assert [b for _, b in boundaries] == [Boundary.SPEECH_STARTED, Boundary.SPEECH_ENDED]
    # It ends after ten quiet frames; the sentence ends where the speech did.
    assert boundaries[1][0] == 5 + 9 + 3 + 9
    assert segmenter.speech_start_ms == 0
    assert segmenter.speech_end_ms == (5 + 9 + 3) * 30
    assert segmenter.silence_ms == 10 * 30


def test_sentences_follow_one_another() -> None:
    segmenter = SpeechSegmenter(frame_ms=30, min_speech_ms=60, end_silence_ms=90)
    boundaries = push_all(segmenter, "ssss...." + "sss...")
    assert [b for _, b in boundaries] == [Boundary.SPEECH_STARTED, Boundary.SPEECH_ENDED] * 2
    assert segmenter.speech_start_ms == 8 * 30
    assert segmenter.speech_end_ms == 11 * 30


# ---------------------------------------------------------------------------------------------------------
# LocalCodec: hypotheses → events


def test_partials_only_when_the_hypothesis_changes() -> None:
    codec = LocalCodec()
    assert codec.hypothesis("turn") == [PartialResult("turn")]
    assert codec.hypothesis(" turn ") == []
    assert codec.hypothesis("turn  on") == [PartialResult("turn on")]
    assert codec.hypothesis("turn on") == []


def test_sentence_final_carries_times_and_resets_the_partial() -> None:
    codec = LocalCodec()
    codec.hypothesis("stop the")
    assert codec.sentence_final("stop the music", 300, 1500) == [FinalResult("stop the music", 300, 1500)]
    # The next sentence starts from nothing: the same words are a new partial.
    assert codec.hypothesis("stop the") == [PartialResult("stop the")]


def test_an_empty_sentence_gives_no_final_but_clears_a_shown_partial() -> None:
    codec = LocalCodec()
    assert codec.sentence_final("", None, None) == []
    codec.hypothesis("uh")
    assert codec.sentence_final("  ", 0, 300) == [PartialResult("")]


def test_complete_once_and_nothing_after_it() -> None:
    codec = LocalCodec()
    assert codec.start() == [] and codec.send_audio(b"\0\0") == []
    assert codec.end() == [] and codec.ended
    assert codec.complete() == [StreamCompleted()]
    assert codec.completed
    assert codec.complete() == []
    assert codec.hypothesis("late") == []
    assert codec.sentence_final("late", 0, 1) == []


def test_a_failure_is_one_error_that_ends_the_stream() -> None:
    codec = LocalCodec()
    [error] = codec.failure("decoder broke")
    assert isinstance(error, VendorError) and not error.fatal
    assert codec.complete() == []


def test_the_codec_takes_no_messages() -> None:
    [error] = LocalCodec().receive("anything")
    assert isinstance(error, VendorError)


# ---------------------------------------------------------------------------------------------------------
# Recogniser with a scripted decoder: what pocketsphinx is asked and what comes of it


class ScriptedDecoder:
    """Reveals one more word of ``words`` every ``frames_per_word`` speech frames of the open utterance."""

    def __init__(self, words: list[str], frames_per_word: int = 4, noise_word: str = "") -> None:
        self.words = words
        self.frames_per_word = frames_per_word
        self.noise_word = noise_word
        self.calls: list[str] = []
        self.in_utterance = False
        self.speech_frames = 0
        self.utterances = 0

    def start_utt(self) -> None:
        assert not self.in_utterance, "start_utt inside an utterance"
        self.in_utterance = True
        self.speech_frames = 0
        self.utterances += 1
        self.calls.append("start")

    def end_utt(self) -> None:
        assert self.in_utterance, "end_utt outside an utterance"
        self.in_utterance = False
        self.calls.append("end")

    def process_raw(self, data: bytes, no_search: bool = False, full_utt: bool = False) -> int:
        assert self.in_utterance, "audio outside an utterance"
        if any(data):
            self.speech_frames += 1
        return len(data) // 320

    def hyp(self) -> Any:
        count = self.speech_frames // self.frames_per_word
        text = " ".join(self.words[:count]) if count else self.noise_word
        return SimpleNamespace(hypstr=text) if text else None


class LoudnessVad:
    frame_bytes = FRAME

    def is_speech(self, frame: bytes) -> bool:
        return any(frame)


def speechlike(ms: int) -> bytes:
    return b"\x10\x00" * (16 * ms)


def feed(recogniser: Recogniser, pcm: bytes, chunk: int = 3200) -> list[VendorEvent]:
    events: list[VendorEvent] = []
    for offset in range(0, len(pcm), chunk):
        events += recogniser.feed(pcm[offset : offset + chunk])
    return events


def test_partials_grow_and_the_final_comes_at_the_end() -> None:
    decoder = ScriptedDecoder(["turn", "on", "the", "kitchen", "light"])
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec(), end_silence_ms=600)
    events = feed(recogniser, silence(300) + speechlike(900) + silence(300))
    partials = [e.text for e in events if isinstance(e, PartialResult)]
    assert partials == ["turn", "turn on", "turn on the", "turn on the kitchen", "turn on the kitchen light"]
    assert not any(isinstance(e, FinalResult) for e in events)
    end = recogniser.finish()
    assert end == [FinalResult("turn on the kitchen light", 300, 1200), StreamCompleted()]
    assert decoder.calls == ["start", "end"]
    assert not recogniser.busy


def test_silence_gives_no_final_and_never_asks_for_a_hypothesis() -> None:
    decoder = ScriptedDecoder(["never"], noise_word="uh")
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec())
    assert feed(recogniser, silence(2000)) == []
    # The decoder's guess about noise ("uh") is not a transcript when no speech was detected.
    assert recogniser.finish() == [StreamCompleted()]


def test_a_pause_splits_sentences_with_their_times() -> None:
    decoder = ScriptedDecoder(["stop", "the", "music"], frames_per_word=3)
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec(), end_silence_ms=600)
    events = feed(recogniser, speechlike(300) + silence(900) + speechlike(300) + silence(300))
    events += recogniser.finish()
    finals = [e for e in events if isinstance(e, FinalResult)]
    assert finals == [FinalResult("stop the music", 0, 300), FinalResult("stop the music", 1200, 1500)]
    assert isinstance(events[-1], StreamCompleted)
    assert decoder.utterances == 2


def test_a_short_pause_keeps_one_sentence() -> None:
    decoder = ScriptedDecoder(["turn", "on", "the", "light"], frames_per_word=2)
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec(), end_silence_ms=800)
    feed(recogniser, speechlike(120) + silence(450) + speechlike(120))
    [final, done] = recogniser.finish()
    assert final == FinalResult("turn on the light", 0, 690)
    assert done == StreamCompleted()
    assert decoder.utterances == 1


def test_long_silence_before_speech_restarts_the_decoder_utterance() -> None:
    decoder = ScriptedDecoder(["hello"], frames_per_word=2)
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec())
    feed(recogniser, silence(IDLE_RESTART_MS + 600) + speechlike(300))
    [final, _] = recogniser.finish()
    assert decoder.utterances == 2
    # Times stay on the stream's clock.
    assert final == FinalResult("hello", IDLE_RESTART_MS + 600, IDLE_RESTART_MS + 900)


def test_odd_sized_chunks_are_framed_exactly() -> None:
    decoder = ScriptedDecoder(["a", "b"], frames_per_word=1)
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec())
    feed(recogniser, speechlike(200) + silence(100), chunk=777)
    recogniser.finish()
    assert decoder.speech_frames > 0
    assert recogniser.segmenter.frames == (200 + 100) * 32 // FRAME


def test_abort_mid_sentence_leaves_the_decoder_reusable() -> None:
    decoder = ScriptedDecoder(["turn", "on"])
    recogniser = Recogniser(decoder, LoudnessVad(), LocalCodec())
    feed(recogniser, speechlike(300))
    assert recogniser.busy
    recogniser.abort()
    assert not recogniser.busy
    assert decoder.calls == ["start", "end"]
    again = Recogniser(decoder, LoudnessVad(), LocalCodec())
    feed(again, speechlike(300))
    assert again.finish()[0] == FinalResult("turn on", 0, 300)


# ---------------------------------------------------------------------------------------------------------
# Grammars and settings


def test_phrases_become_lowercase_words_without_edge_punctuation() -> None:
    assert phrase_words("Turn ON the kitchen light, please!") == ("turn", "on", "the", "kitchen", "light", "please")
    assert phrase_words("don't stop") == ("don't", "stop")


@needs_pocketsphinx
def test_phrases_make_a_grammar_with_only_their_words() -> None:
    grammar = build_grammar(None, None, ["Turn on the light", "stop the music", "turn on the light"])
    assert grammar is not None
    assert grammar.top_rule == "asr_daemon.asr_daemon_phrases"
    assert "( turn on the light ) | ( stop the music )" in grammar.jsgf
    words = {entry.split("(")[0] for entry, _ in grammar.pronunciations}
    assert words == {"turn", "on", "the", "light", "stop", "music"}
    # Alternative pronunciations come along.
    assert any(entry.startswith("the(") for entry, _ in grammar.pronunciations)


@needs_pocketsphinx
def test_no_grammar_and_no_phrases_is_open_dictation() -> None:
    assert build_grammar(None, None, []) is None
    assert LocalAdapter(LocalSettings()).mode == "open dictation"


def config_error(**local: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"vendors": {"local": local}})
    return str(caught.value)


@needs_pocketsphinx
def test_a_phrase_with_an_unknown_word_names_the_key_and_the_word() -> None:
    message = config_error(phrases=["turn on the light", "frobnicate the xyzzy"])
    assert "vendors.local.phrases" in message
    assert "phrases[1]" in message
    assert "'frobnicate'" in message and "'xyzzy'" in message
    valid = load_settings(None, {"vendors": {"local": {"phrases": ["lights on", "Lights off!"]}}})
    assert valid.configured_vendors()["local"].model_dump()["phrases"] == ["lights on", "Lights off!"]


@needs_pocketsphinx
def test_digits_are_explained() -> None:
    message = config_error(phrases=["set a timer for 10 minutes"])
    assert "'10'" in message and "spell numbers out" in message


@needs_pocketsphinx
def test_a_missing_grammar_file_names_the_key(tmp_path: Path) -> None:
    message = config_error(grammar=str(tmp_path / "missing.gram"))
    assert "vendors.local.grammar" in message
    assert "cannot read it" in message


@needs_pocketsphinx
def test_a_jsgf_syntax_error_is_quoted_with_its_line(tmp_path: Path) -> None:
    grammar = tmp_path / "bad.gram"
    grammar.write_text("#JSGF V1.0;\ngrammar bad;\npublic <a> = turn on (the ;\n", encoding="utf-8")
    message = config_error(grammar=str(grammar))
    assert "vendors.local.grammar" in message
    assert "not valid JSGF" in message
    assert "line 3" in message


@needs_pocketsphinx
def test_grammar_problems_are_explained(tmp_path: Path) -> None:
    def check(text: str, **more: Any) -> str:
        grammar = tmp_path / "g.gram"
        grammar.write_text(text, encoding="utf-8")
        return config_error(grammar=str(grammar), **more)

    header = "#JSGF V1.0;\ngrammar g;\n"
    assert "'#JSGF V1.0;' header" in check("public <a> = hello;\n")
    assert "no public rule" in check(header + "<a> = hello;\n")
    assert "imports another grammar" in check(header + "import <other.*>;\npublic <a> = hello;\n")
    unknown_rule = check(header + "public <a> = hello;\n", grammar_rule="b")
    assert "no rule <b>" in unknown_rule and "<a>" in unknown_rule
    assert "'Hello'" in check(header + "public <a> = Hello;\n")
    assert "lowercase" in check(header + "public <a> = Hello;\n")
    assert "grammar_rule is set" in config_error(grammar_rule="a")


@needs_pocketsphinx
def test_a_grammar_file_and_phrases_combine(tmp_path: Path) -> None:
    grammar = tmp_path / "g.gram"
    grammar.write_text("#JSGF V1.0;\ngrammar g;\n// rules\npublic <a> = turn on the light;\n", encoding="utf-8")
    built = build_grammar(str(grammar), None, ["stop the music"])
    assert built is not None
    assert built.top_rule == "g.asr_daemon_top"
    assert {entry for entry, _ in built.pronunciations} >= {"turn", "stop", "music", "light"}


@needs_pocketsphinx
def test_api_key_and_url_are_optional_and_ignored() -> None:
    settings = load_settings(None, {"vendors": {"local": {"api_key": "not-used-1234", "url": "ws://nowhere"}}})
    local = settings.configured_vendors()["local"]
    assert isinstance(local, LocalSettings)
    assert local.languages == ["en", "en-US"]
    adapter = LocalAdapter(local)
    assert adapter.secrets() == ["not-used-1234"]
    assert isinstance(adapter.open_stream(ENGLISH, SessionLimits().policy), LocalStream)
    assert "not-used-1234" not in str(settings.redacted())


def test_without_pocketsphinx_the_config_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter_module, "missing_reason", lambda: "the local engine needs the pocketsphinx package")
    message = config_error()
    assert "vendors.local" in message
    assert "pocketsphinx" in message


def test_registry_knows_local_and_that_it_has_no_emulator() -> None:
    assert registry.adapter_class("local") is LocalAdapter
    assert "local" in registry.available()
    assert "local" not in registry.emulated()
    assert "iapp" in registry.emulated()
    with pytest.raises(registry.NoEmulator, match="no emulator: it runs inside the daemon"):
        registry.emulator_class("local")


# ---------------------------------------------------------------------------------------------------------
# LocalStream: real decoding in a worker thread


def local_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asr-daemon local")]


@asynccontextmanager
async def open_stream(adapter: LocalAdapter) -> AsyncIterator[LocalStream]:
    stream = adapter.open_stream(ENGLISH, SessionLimits().policy)
    await stream.connect()
    try:
        yield stream
    finally:
        await stream.aclose()


async def send(stream: LocalStream, pcm: bytes, chunk: int = 3200) -> None:
    for offset in range(0, len(pcm), chunk):
        await stream.send_audio(pcm[offset : offset + chunk])


async def drain(stream: LocalStream, timeout: float = 20.0) -> list[VendorEvent]:
    """Every event up to and including the stream's end."""
    return await events_until_done(stream, timeout)


@pytest.fixture
def commands() -> Iterator[LocalAdapter]:
    adapter = LocalAdapter(LocalSettings(phrases=COMMANDS))
    yield adapter
    adapter.unload()


@needs_pocketsphinx
@needs_speech
async def test_stream_partials_grow_into_the_exact_command(commands: LocalAdapter) -> None:
    async with open_stream(commands) as stream:
        assert stream.ready and stream.connect_seconds is not None
        await send(stream, utterance("turn on the kitchen light", speed=125))
        await stream.end()
        events = await drain(stream)
    partials = [e.text for e in events if isinstance(e, PartialResult)]
    finals = [e for e in events if isinstance(e, FinalResult)]
    assert [f.text for f in finals] == ["turn on the kitchen light"]
    assert isinstance(events[-1], StreamCompleted)
    # The hypothesis grows word by word while the audio arrives; the final follows the last partial.
    assert len(partials) >= 3
    assert [len(p.split()) for p in partials] == sorted(len(p.split()) for p in partials)
    assert partials[-1] == "turn on the kitchen light"
    # Times on the stream's clock: the speech starts after utterance()'s 300 ms of silence.
    assert finals[0].start_ms is not None and 200 <= finals[0].start_ms <= 400
    assert finals[0].end_ms is not None and finals[0].end_ms > finals[0].start_ms + 1000


@needs_pocketsphinx
async def test_stream_of_silence_completes_with_no_final(commands: LocalAdapter) -> None:
    async with open_stream(commands) as stream:
        await send(stream, silence(2000))
        await stream.end()
        events = await drain(stream)
    assert events == [StreamCompleted()]


@needs_pocketsphinx
async def test_session_of_silence_is_an_empty_transcript(commands: LocalAdapter) -> None:
    async with Session(commands, ENGLISH, SessionLimits(final_timeout=10)) as session:
        session.feed(silence(1500), PCM16K)
        transcript = await session.finish()
    assert transcript.text == ""
    assert transcript.segments == []


@needs_pocketsphinx
async def test_no_thread_is_left_after_aclose(commands: LocalAdapter) -> None:
    before = len(local_threads())
    async with open_stream(commands) as stream:
        thread = stream.thread
        assert thread is not None and thread.is_alive()
        await send(stream, silence(300))
        await stream.end()
        await drain(stream)
    assert not thread.is_alive()
    assert stream.closed
    assert len(local_threads()) == before
    # Closing twice is harmless.
    await stream.aclose()


@needs_pocketsphinx
@needs_speech
async def test_a_stream_closed_mid_utterance_frees_its_thread_and_decoder(commands: LocalAdapter) -> None:
    pcm = utterance("turn on the kitchen light", speed=125)
    stream = commands.open_stream(ENGLISH, SessionLimits().policy)
    await stream.connect()
    thread = stream.thread
    assert thread is not None
    await send(stream, pcm[: len(pcm) // 2])
    await stream.aclose()
    assert not thread.is_alive()
    engine = commands.engine
    assert engine.leased == 0
    assert engine.idle == 1
    # The decoder it held was reset and serves the next stream without a reload.
    async with open_stream(commands) as again:
        await send(again, pcm)
        await again.end()
        events = await drain(again)
    assert [e.text for e in events if isinstance(e, FinalResult)] == ["turn on the kitchen light"]
    assert engine.loaded == 1


@needs_pocketsphinx
async def test_a_stream_never_connected_closes_cleanly(commands: LocalAdapter) -> None:
    stream = commands.open_stream(ENGLISH, SessionLimits().policy)
    await stream.aclose()
    assert stream.closed and stream.thread is None


@needs_pocketsphinx
async def test_max_streams_bounds_the_decoders_lent_out() -> None:
    adapter = LocalAdapter(LocalSettings(phrases=COMMANDS, max_streams=1, connect_timeout=0.5))
    threads_before = len(local_threads())
    async with open_stream(adapter):
        second = adapter.open_stream(ENGLISH, SessionLimits().policy)
        with pytest.raises(VendorFailure) as failure:
            await second.connect()
        assert "busy" in failure.value.error.message
        assert "max_streams" in failure.value.error.message
        assert not failure.value.error.fatal
        assert second.closed
    assert len(local_threads()) == threads_before
    async with open_stream(adapter) as third:
        assert third.ready
    assert adapter.engine.loaded == 1


@needs_pocketsphinx
async def test_a_broken_grammar_fails_the_stream_as_a_rejection(tmp_path: Path) -> None:
    grammar = tmp_path / "g.gram"
    grammar.write_text("#JSGF V1.0;\ngrammar g;\npublic <a> = stop the music;\n", encoding="utf-8")
    settings = LocalSettings(grammar=str(grammar))
    grammar.unlink()
    adapter = LocalAdapter(settings)
    with pytest.raises(VendorFailure) as failure:
        await adapter.open_stream(ENGLISH, SessionLimits().policy).connect()
    assert failure.value.error.fatal
    assert "vendors.local" in failure.value.error.message


@needs_pocketsphinx
@needs_speech
async def test_a_buffered_utterance_fed_at_once_is_transcribed(commands: LocalAdapter) -> None:
    # How a fallback uses the engine: the whole utterance is already there when the session starts.
    async with Session(commands, ENGLISH, SessionLimits(final_timeout=10)) as session:
        session.feed(utterance("turn on the kitchen light", "stop the music", speed=125, gap_ms=1200), PCM16K)
        transcript = await session.finish()
    assert transcript.text == "turn on the kitchen light stop the music"
    assert [s.text for s in transcript.segments] == ["turn on the kitchen light", "stop the music"]


@needs_pocketsphinx
@needs_speech
async def test_preload_loads_a_decoder_before_the_first_stream(commands: LocalAdapter) -> None:
    await commands.preload()
    assert commands.engine.loaded == 1 and commands.engine.idle == 1
    async with open_stream(commands) as stream:
        await send(stream, utterance("stop the music", speed=125))
        await stream.end()
        events = await drain(stream)
    assert [e.text for e in events if isinstance(e, FinalResult)] == ["stop the music"]
    assert commands.engine.loaded == 1


@needs_pocketsphinx
@needs_speech
@pytest.mark.parametrize("mode", ["open dictation", "grammar"])
async def test_decoding_runs_off_the_event_loop_while_it_goes_on(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = LocalSettings() if mode == "open dictation" else LocalSettings(phrases=COMMANDS)
    adapter = LocalAdapter(settings)
    await adapter.preload()
    # Every decoder call goes through Recogniser.feed / finish: note the thread each one ran on, and how many
    # event-loop turns had passed by then.
    decoded_on: set[int] = set()
    turns = 0
    turns_at_decoding: list[int] = []

    def recording(method: Any) -> Any:
        def call(self: Recogniser, *args: Any) -> Any:
            decoded_on.add(threading.get_ident())
            turns_at_decoding.append(turns)
            return method(self, *args)

        return call

    monkeypatch.setattr(Recogniser, "feed", recording(Recogniser.feed))
    monkeypatch.setattr(Recogniser, "finish", recording(Recogniser.finish))
    pcm = utterance("what is the weather like today", "turn on the kitchen light", "stop the music", speed=150)
    async with open_stream(adapter) as stream:

        async def decode() -> list[VendorEvent]:
            await send(stream, pcm)  # as fast as the worker takes it
            await stream.end()
            return await drain(stream, timeout=60)

        task = asyncio.create_task(decode())
        while not task.done():  # other work on the loop: it must keep getting turns while decoding goes on
            turns += 1
            await asyncio.sleep(0.005)
        events = task.result()
    assert isinstance(events[-1], StreamCompleted)
    assert any(isinstance(e, FinalResult) for e in events)
    assert decoded_on and threading.get_ident() not in decoded_on, "a decoder call ran on the event loop's thread"
    assert turns_at_decoding[-1] > turns_at_decoding[0], "the event loop made no progress while decoding"
    adapter.unload()
