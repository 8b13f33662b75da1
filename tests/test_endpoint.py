"""End of speech on real (espeak-ng) speech with background noise: ends after the silence, never at a pause."""

from __future__ import annotations

import random
import subprocess

import pytest

from asr_daemon.audio.endpoint import Endpointer, EndpointSettings
from asr_daemon.audio.format import PCM16K, AudioFormat
from tests.support.speech import RATE, have_speech_tools, silence, speech

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

SOX_RAW_OUT = ["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-"]
COMMAND = "turn on the kitchen light, and the hallway light"


def noise(ms: int, colour: str = "pink", level_db: float = -40.0, seed: int = 1) -> bytes:
    """``ms`` of sox-made noise (16 kHz mono s16le) at ``level_db`` dBFS peak-ish."""
    return subprocess.run(
        [*SOX_RAW_OUT, "synth", f"{ms / 1000}", f"{colour}noise", "vol", f"{level_db}dB"],
        check=True,
        capture_output=True,
    ).stdout[: RATE * ms // 1000 * 2]


def mix(speech_pcm: bytes, noise_pcm: bytes) -> bytes:
    """Sample-wise sum, clipped; the noise runs as long as the speech."""
    import numpy as np

    a = np.frombuffer(speech_pcm, dtype="<i2").astype(np.int32)
    b = np.frombuffer(noise_pcm, dtype="<i2").astype(np.int32)[: len(a)]
    a[: len(b)] += b
    return np.clip(a, -32768, 32767).astype("<i2").tobytes()


def command_with_noise(text: str = COMMAND, tail_ms: int = 3000, colour: str = "pink") -> tuple[bytes, float]:
    """Noise, the spoken command, then noise only; returns the audio and where the speech ends (seconds)."""
    spoken = silence(500) + speech(text) + silence(tail_ms)
    return mix(spoken, noise(len(spoken) * 1000 // 32000 + 10, colour)), (500 + len(speech(text)) / 32) / 1000


def run(
    pcm: bytes, settings: EndpointSettings, chunk: int = 320, fmt: AudioFormat = PCM16K
) -> tuple[Endpointer, float]:
    """Feed ``pcm`` in ``chunk``-byte pieces; returns the endpointer and the audio time it first said ended."""
    endpointer = Endpointer(settings, fmt)
    ended_at = -1.0
    for offset in range(0, len(pcm), chunk):
        endpointer.feed(pcm[offset : offset + chunk])
        if endpointer.ended and ended_at < 0:
            ended_at = endpointer.audio_seconds
    return endpointer, ended_at


def test_a_command_ends_after_the_silence_not_at_its_pause() -> None:
    settings = EndpointSettings()
    pcm, speech_end = command_with_noise()
    endpointer, ended_at = run(pcm, settings)
    assert endpointer.speech_heard and endpointer.ended and not endpointer.no_speech
    # Not before the last word, and not long after the silence it waits for.
    assert speech_end + settings.silence_seconds <= ended_at + 0.02
    assert ended_at <= speech_end + settings.silence_seconds + 0.4
    assert speech_end - 0.1 <= endpointer.last_voiced_end <= speech_end + 0.3


def test_noise_alone_is_no_speech_after_no_speech_seconds() -> None:
    settings = EndpointSettings(no_speech_seconds=3.0)
    pcm = noise(4000, "pink", -30.0)
    endpointer = Endpointer(settings, PCM16K)
    endpointer.feed(pcm[: 2 * RATE * 2])
    assert not endpointer.no_speech and not endpointer.speech_heard
    endpointer.feed(pcm[2 * RATE * 2 :])
    assert endpointer.no_speech and not endpointer.speech_heard and not endpointer.ended


def test_same_audio_same_result_whatever_the_chunk_sizes() -> None:
    pcm, _ = command_with_noise()
    settings = EndpointSettings()
    reference, ended_at = run(pcm, settings, 320)
    state = (reference.ended, reference.speech_heard, reference.last_voiced_end, ended_at)
    for chunk in (1024, 7, 333, 4001):
        endpointer, ended = run(pcm, settings, chunk)
        # The first end is seen at the end of the chunk that holds it.
        assert abs(ended - ended_at) <= chunk / 32000 + 0.01
        assert (endpointer.ended, endpointer.speech_heard, endpointer.last_voiced_end) == state[:3]
    # Random cuts too.
    rng = random.Random(5)
    endpointer = Endpointer(settings, PCM16K)
    offset = 0
    while offset < len(pcm):
        step = rng.randint(1, 2000)
        endpointer.feed(pcm[offset : offset + step])
        offset += step
    assert (endpointer.ended, endpointer.speech_heard, endpointer.last_voiced_end) == state[:3]


def converted(pcm: bytes, fmt: AudioFormat) -> bytes:
    """16 kHz mono s16le as ``fmt``: resampled by soxr, widened, the channel repeated."""
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm, dtype="<i2")
    if fmt.rate != RATE:
        samples = soxr.resample(samples, RATE, fmt.rate)
    wide = samples.astype("<i4")
    if fmt.width == 3:
        wide = wide << 8
        data = np.frombuffer(wide.astype("<i4").tobytes(), dtype=np.uint8).reshape(-1, 4)[:, :3]
        frames = data.reshape(-1, 3)
    else:
        frames = np.frombuffer(samples.astype("<i2").tobytes(), dtype=np.uint8).reshape(-1, 2)
    return np.repeat(frames, fmt.channels, axis=0).tobytes()


@pytest.mark.parametrize(
    "fmt",
    [
        AudioFormat(48000, 2, 1),
        AudioFormat(44100, 2, 1),
        AudioFormat(16000, 2, 2),
        AudioFormat(16000, 3, 1),
        AudioFormat(22050, 3, 2),
        AudioFormat(8000, 2, 1),
    ],
    ids=str,
)
def test_other_formats_end_like_home_assistants(fmt: AudioFormat) -> None:
    pcm, speech_end = command_with_noise()
    settings = EndpointSettings()
    _, reference = run(pcm, settings)
    other = converted(pcm, fmt)
    endpointer, ended_at = run(other, settings, chunk=fmt.bytes_for_ms(10) * 3 + fmt.frame_bytes, fmt=fmt)
    assert endpointer.speech_heard and endpointer.ended
    assert abs(endpointer.audio_seconds - len(pcm) / 32000) < 0.01
    assert abs(ended_at - reference) <= 0.1
    assert speech_end - 0.1 <= endpointer.last_voiced_end <= speech_end + 0.3


def test_settings_and_formats_out_of_range_are_refused() -> None:
    from asr_daemon.audio.normalise import AudioFormatError

    with pytest.raises(ValueError, match="aggressiveness"):
        EndpointSettings(aggressiveness=4)
    with pytest.raises(ValueError, match="silence_seconds"):
        EndpointSettings(silence_seconds=0)
    with pytest.raises(AudioFormatError):
        Endpointer(EndpointSettings(), AudioFormat(16000, 5, 1))


def test_a_hesitation_shorter_than_the_silence_does_not_end_the_command() -> None:
    settings = EndpointSettings()
    first, second = speech("turn on the kitchen light"), speech("and the hallway light")
    hesitation = silence(round(settings.silence_seconds * 1000) - 150)
    spoken = silence(500) + first + hesitation + second + silence(2000)
    pcm = mix(spoken, noise(len(spoken) // 32 + 10))
    second_starts = (500 + (len(first) + len(hesitation)) / 32) / 1000
    _, ended_at = run(pcm, settings)
    assert ended_at > second_starts + len(second) / 32000
    # The same pause made longer than the silence does end it there.
    longer = silence(500) + first + silence(round(settings.silence_seconds * 1000) + 300) + second + silence(2000)
    _, ended_at = run(mix(longer, noise(len(longer) // 32 + 10)), settings)
    assert 0 < ended_at < (500 + len(first) / 32) / 1000 + settings.silence_seconds + 0.3


def test_once_ended_more_speech_does_not_reopen_the_turn() -> None:
    pcm, _ = command_with_noise(tail_ms=1500)
    endpointer, _ = run(pcm, EndpointSettings())
    assert endpointer.ended
    endpointer.feed(speech("and the porch light"))
    assert endpointer.ended and endpointer.speech_heard and not endpointer.no_speech
