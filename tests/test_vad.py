"""Voice activity detection on real (espeak-ng) speech, with webrtcvad and pymicro-vad: cuts, pre-roll, thresholds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asr_daemon.audio.vad import (
    FRAME_BYTES,
    Segment,
    SpeechDetector,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
    VadSegmenter,
    VadSettings,
    micro_vad,
    webrtc_vad,
)
from tests.support.speech import have_speech_tools, silence, speech

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

FIRST, SECOND = "Turn on the kitchen lights", "What is the weather like today"


Factory = Callable[[], SpeechDetector]


@pytest.fixture(params=["webrtcvad", "pymicro-vad"])
def factory(request: pytest.FixtureRequest) -> Factory:
    if request.param == "pymicro-vad":
        pytest.importorskip("pymicro_vad", reason="pymicro-vad is needed (the mic extra)")
        return micro_vad
    return webrtc_vad


def run(factory: Factory, pcm: bytes, settings: VadSettings, step: int = 480) -> list[Segment]:
    segmenter = VadSegmenter(settings, factory())
    out: list[Segment] = []
    for offset in range(0, len(pcm), step):
        out.extend(segmenter.process(pcm[offset : offset + step]))
    out.extend(segmenter.flush())
    return out


def utterances(segments: list[Segment]) -> list[tuple[float, bytes, UtteranceEnded]]:
    found: list[tuple[float, bytes, UtteranceEnded]] = []
    start = 0.0
    audio = bytearray()
    for segment in segments:
        if isinstance(segment, UtteranceStarted):
            start, audio = segment.offset, bytearray(segment.audio)
        elif isinstance(segment, UtteranceAudio):
            audio += segment.audio
        elif isinstance(segment, UtteranceEnded):
            found.append((start, bytes(audio), segment))
    return found


def test_two_sentences_with_a_pause_are_two_utterances_with_pre_roll(factory: Factory) -> None:
    first, second = speech(FIRST), speech(SECOND)
    pcm = silence(1500) + first + silence(1500) + second + silence(1500)
    found = utterances(run(factory, pcm, VadSettings(pre_roll_seconds=0.5, speech_seconds=0.3)))
    assert len(found) == 2
    for (start, audio, end), (spoken_at, spoken) in zip(
        found, [(1.5, first), (3.0 + len(first) / 32000, second)], strict=True
    ):
        # The pre-roll reaches back before the speech: the first syllable is inside the utterance...
        assert start < spoken_at
        assert spoken_at - start <= 0.51  # ...by at most the pre-roll (and the frame the speech starts in)
        offset = round((spoken_at - start) * 32000) // 2 * 2
        assert audio[offset : offset + len(spoken)] == spoken  # the whole sentence, byte for byte
        assert end.reason == "silence" and end.speech
    # Silence between utterances is not sent.
    assert sum(len(audio) for _, audio, _ in found) < len(pcm) - 32000


def test_a_longer_silence_threshold_keeps_a_short_pause_inside_one_utterance(factory: Factory) -> None:
    pcm = silence(1000) + speech(FIRST) + silence(2000) + speech(SECOND) + silence(3000)
    assert len(utterances(run(factory, pcm, VadSettings(silence_seconds=0.5)))) == 2
    assert len(utterances(run(factory, pcm, VadSettings(silence_seconds=2.5)))) == 1


def test_a_longer_speech_threshold_ignores_a_short_blip(factory: Factory) -> None:
    pcm = silence(1000) + speech(FIRST)[:16000] + silence(2000)  # half a second of speech
    assert len(utterances(run(factory, pcm, VadSettings(speech_seconds=0.3)))) == 1
    assert utterances(run(factory, pcm, VadSettings(speech_seconds=1.0))) == []


def test_silence_alone_is_never_an_utterance(factory: Factory) -> None:
    assert run(factory, silence(5000), VadSettings()) == []


def test_always_stream_sends_every_byte_and_still_cuts_at_speech_ends(factory: Factory) -> None:
    pcm = silence(1000) + speech(FIRST) + silence(1500) + speech(SECOND) + silence(1500)
    segments = run(factory, pcm, VadSettings(always_stream=True, max_seconds=30))
    found = utterances(segments)
    assert b"".join(audio for _, audio, _ in found) == pcm[: len(pcm) - len(pcm) % FRAME_BYTES]
    assert [end.speech for _, _, end in found][:2] == [True, True]
    assert len(found) == 3  # two spoken, then the trailing silence closed at the end of audio


def test_an_endless_utterance_is_cut_at_max_seconds(factory: Factory) -> None:
    pcm = b"".join(speech(FIRST) for _ in range(3))
    found = utterances(run(factory, pcm, VadSettings(max_seconds=2.0, silence_seconds=5)))
    assert found[0][2].reason == "max length"
    assert len(found[0][1]) <= 2.0 * 32000 + FRAME_BYTES


def test_the_result_does_not_depend_on_chunk_sizes(factory: Factory) -> None:
    pcm = silence(1000) + speech(FIRST) + silence(1500)
    assert utterances(run(factory, pcm, VadSettings(), step=320)) == utterances(
        run(factory, pcm, VadSettings(), step=4410)
    )
