"""Audio normalisation and re-chunking: what HA really sends becomes exactly what vendors want."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from asr_daemon.audio.normalise import AudioFormatError, AudioNormaliser, parse_wav_header
from asr_daemon.vendors.base import PCM16K, AudioFormat
from tests.support.speech import wav


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def push_all(normaliser: AudioNormaliser, data: bytes, fmt: AudioFormat, sizes: list[int]) -> bytes:
    out = b""
    offset = 0
    index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        out += normaliser.push(data[offset : offset + size], fmt)
        offset += size
        index += 1
    return out + normaliser.flush()


def test_16k_mono_passes_through_unchanged() -> None:
    pcm = tone(0.5).tobytes()
    assert push_all(AudioNormaliser(PCM16K), pcm, PCM16K, [320]) == pcm


def test_riff_header_is_stripped_even_when_split_across_odd_chunks() -> None:
    pcm = tone(0.3).tobytes()
    data = wav(pcm)
    # HA's REST path splits at 0x0A bytes: chunks of any size, a sample straddling two chunks.
    for sizes in ([1], [3, 7, 11], [45], [44, 1], [1000]):
        normaliser = AudioNormaliser(PCM16K)
        assert push_all(normaliser, data, PCM16K, sizes) == pcm
        assert normaliser.wav_format == PCM16K


def test_wav_header_format_wins_over_the_declared_one() -> None:
    # A 48 kHz stereo WAV uploaded while audio-start claims 16 kHz mono.
    left = tone(1.0, 48000)
    stereo = np.column_stack([left, left]).reshape(-1).astype(np.int16)
    data = wav(stereo.tobytes(), rate=48000, channels=2)
    normaliser = AudioNormaliser(PCM16K)
    out = np.frombuffer(push_all(normaliser, data, PCM16K, [4096]), dtype=np.int16)
    assert normaliser.wav_format == AudioFormat(48000, 2, 2)
    assert abs(len(out) - 16000) <= 32
    # Still a 440 Hz tone: the dominant frequency survives resampling.
    spectrum = np.abs(np.fft.rfft(out[1000:15000].astype(float)))
    peak = np.argmax(spectrum) * 16000 / len(out[1000:15000])
    assert abs(peak - 440) < 5


def test_odd_sized_chunks_keep_samples_intact() -> None:
    pcm = tone(0.2).tobytes()
    assert push_all(AudioNormaliser(PCM16K), pcm, PCM16K, [1, 2, 3, 5, 7]) == pcm


@pytest.mark.parametrize(
    ("rate", "width", "channels"),
    [(8000, 2, 1), (22050, 2, 1), (44100, 2, 2), (16000, 1, 1), (16000, 4, 1), (16000, 3, 1), (48000, 2, 1)],
)
def test_any_layout_becomes_16k_mono_s16(rate: int, width: int, channels: int) -> None:
    samples = tone(1.0, rate)
    if width == 1:
        raw = ((samples.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(struct.pack("<i", int(s) << 8)[:3] for s in samples)
    elif width == 4:
        raw = (samples.astype(np.int32) << 16).astype("<i4").tobytes()
    else:
        raw = samples.tobytes()
    if channels == 2:
        frame = width
        raw = b"".join(raw[i : i + frame] * 2 for i in range(0, len(raw), frame))
    fmt = AudioFormat(rate, width, channels)
    out = np.frombuffer(push_all(AudioNormaliser(PCM16K), raw, fmt, [999]), dtype=np.int16)
    assert abs(len(out) - 16000) <= 40
    rms = math.sqrt(float(np.mean(out[2000:14000].astype(float) ** 2)))
    assert 4500 < rms < 6500  # 8000-amplitude sine ≈ 5657 RMS, level preserved


def test_non_pcm_wav_is_a_clear_error() -> None:
    header = bytearray(wav(b"\x00\x00" * 10))
    struct.pack_into("<H", header, 20, 3)  # IEEE float
    with pytest.raises(AudioFormatError, match="not supported"):
        AudioNormaliser(PCM16K).push(bytes(header), PCM16K)


def test_header_needs_more_bytes_returns_none() -> None:
    data = wav(b"\x01\x00" * 100)
    for cut in range(0, 44):
        assert parse_wav_header(data[:cut]) is None
    assert parse_wav_header(data) == (PCM16K, 44)


def test_declared_format_that_cannot_be_converted_is_rejected() -> None:
    with pytest.raises(AudioFormatError):
        AudioNormaliser(PCM16K).push(b"\x00" * 64, AudioFormat(16000, 8, 1))


def test_audio_shorter_than_a_header_is_still_audio() -> None:
    normaliser = AudioNormaliser(PCM16K)
    assert normaliser.push(b"RI", PCM16K) == b""
    assert normaliser.flush() == b"RI"
