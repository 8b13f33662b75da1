"""Test speech: espeak-ng speaks, sox converts to 16 kHz s16le mono; cached per text and voice."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

RATE = 16000
_CACHE = Path(os.environ.get("ASR_DAEMON_TEST_AUDIO_CACHE", Path(tempfile.gettempdir()) / "asr-daemon-test-audio"))


def have_speech_tools() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def speech(text: str, voice: str = "en-us", speed: int = 150) -> bytes:
    """PCM (16 kHz, 16-bit, mono) of espeak-ng saying ``text``, trimmed of leading/trailing silence."""
    key = hashlib.sha256(f"{voice}|{speed}|{text}".encode()).hexdigest()[:20]
    path = _CACHE / f"{key}.pcm"
    if path.exists():
        return path.read_bytes()
    _CACHE.mkdir(parents=True, exist_ok=True)
    spoken = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    pcm = subprocess.run(
        [
            "sox",
            "-D",
            "-t",
            "wav",
            "-",
            "-r",
            str(RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
            "-",
            "silence",
            "1",
            "0.01",
            "0.5%",
            "reverse",
            "silence",
            "1",
            "0.01",
            "0.5%",
            "reverse",
        ],
        input=spoken,
        check=True,
        capture_output=True,
    ).stdout
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pcm)
    tmp.replace(path)
    return pcm


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


def utterance(
    *texts: str, voice: str = "en-us", speed: int = 150, gap_ms: int = 1000, lead_ms: int = 300, tail_ms: int = 1200
) -> bytes:
    """Sentences separated by ``gap_ms`` of silence, with silence before and after (as HA's VAD leaves it)."""
    parts = [silence(lead_ms)]
    for index, text in enumerate(texts):
        if index:
            parts.append(silence(gap_ms))
        parts.append(speech(text, voice, speed))
    parts.append(silence(tail_ms))
    return b"".join(parts)


def wav(pcm: bytes, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    """A complete WAV file of ``pcm``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return out.getvalue()
