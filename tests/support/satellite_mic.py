"""A satellite's ``--mic-command`` without a sound card: raw 16 kHz mono 16-bit audio on stdout, in real time.

Plays silence, and each WAV that appears in the queue directory (argv[1]), oldest name first, deleting it once
it starts; ``<name>.started`` beside it then holds the wall-clock time its first chunk was written (tests
measure latencies from it). Runs under the satellite's own interpreter, with the standard library only.
"""

from __future__ import annotations

import contextlib
import sys
import time
import wave
from pathlib import Path

RATE = 16000
CHUNK_SAMPLES = 1024
CHUNK_BYTES = CHUNK_SAMPLES * 2
SILENCE = bytes(CHUNK_BYTES)


def next_wav(queue: Path) -> tuple[Path, bytes] | None:
    for path in sorted(queue.glob("*.wav")):
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) != (RATE, 2, 1):
                raise SystemExit(f"{path}: expected 16 kHz 16-bit mono")
            pcm = wav.readframes(wav.getnframes())
        path.unlink()
        return path, pcm
    return None


def main() -> None:
    queue = Path(sys.argv[1])
    out = sys.stdout.buffer
    pending = b""
    started = time.monotonic()
    sent = 0
    while True:
        if not pending and (found := next_wav(queue)) is not None:
            path, pending = found
            started_file = path.with_suffix(".started")
            started_file.with_suffix(".tmp").write_text(repr(time.time()))
            started_file.with_suffix(".tmp").rename(started_file)
        chunk, pending = (pending[:CHUNK_BYTES], pending[CHUNK_BYTES:]) if pending else (SILENCE, b"")
        chunk = chunk.ljust(CHUNK_BYTES, b"\0")
        out.write(chunk)
        out.flush()
        sent += CHUNK_SAMPLES
        # Paced by the samples sent, so the average rate stays exact however late a wake-up is.
        delay = started + sent / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        main()
