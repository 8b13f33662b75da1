"""The local engine's stream logic, sans I/O: where sentences start and end, and which events a decoder's
hypotheses become.

``SpeechSegmenter`` turns a voice-activity decision per audio frame into sentence boundaries: speech starts
after a short run of speech frames and a sentence ends after ``end_silence_ms`` without speech, so a pause
inside a command does not split it. ``LocalCodec`` is the ``StreamCodec`` the session sees (formats, chunk
size, the ``ended``/``completed`` flags) and turns hypotheses into ``PartialResult`` (only when the text
changes), ``FinalResult`` (one per sentence, with its times) and ``StreamCompleted``. Neither touches a
decoder, a thread or a socket, so both are tested with plain values.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from ..base import (
    FinalResult,
    Outgoing,
    PartialResult,
    StreamCodec,
    StreamCompleted,
    VendorError,
    VendorEvent,
)


class Boundary(Enum):
    SPEECH_STARTED = "speech-started"
    SPEECH_ENDED = "speech-ended"


class SpeechSegmenter:
    """Sentence boundaries from per-frame speech decisions (all times in ms from the stream's start)."""

    def __init__(self, frame_ms: int = 30, min_speech_ms: int = 90, end_silence_ms: int = 800) -> None:
        if frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        self.frame_ms = frame_ms
        self._min_speech = max(1, -(-min_speech_ms // frame_ms))
        self._end_silence = max(1, -(-end_silence_ms // frame_ms))
        self.frames = 0  # frames seen
        self.in_speech = False
        self._speech_run = 0  # consecutive speech frames (outside a sentence)
        self._silence_run = 0  # consecutive non-speech frames
        self._start_frame = 0
        self._last_speech_frame = 0

    @property
    def silence_ms(self) -> int:
        """How long it has been quiet (since the stream started or the last speech frame)."""
        return self._silence_run * self.frame_ms

    @property
    def speech_start_ms(self) -> int:
        return self._start_frame * self.frame_ms

    @property
    def speech_end_ms(self) -> int:
        """End of the last speech frame of the current (or last) sentence."""
        return (self._last_speech_frame + 1) * self.frame_ms

    @property
    def position_ms(self) -> int:
        return self.frames * self.frame_ms

    def push(self, speech: bool) -> Boundary | None:
        """One frame's decision; returns the boundary it completes, if any."""
        index = self.frames
        self.frames += 1
        if speech:
            self._silence_run = 0
            self._last_speech_frame = index
        else:
            self._silence_run += 1
        if not self.in_speech:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= self._min_speech:
                self.in_speech = True
                self._start_frame = index - self._speech_run + 1
                self._speech_run = 0
                return Boundary.SPEECH_STARTED
            return None
        if self._silence_run >= self._end_silence:
            self.in_speech = False
            return Boundary.SPEECH_ENDED
        return None


class LocalCodec(StreamCodec):
    """The session's view of a local stream, and the hypothesis → event logic.

    No messages go anywhere (``start``/``send_audio``/``end`` return nothing): the engine's worker thread feeds
    the decoder and reports what it heard through ``hypothesis``, ``sentence_final`` and ``complete``.
    """

    # 100 ms per chunk: the worker looks at the hypothesis once per chunk (partials at most ten times a second).
    chunk_bytes: ClassVar[int] = 3200

    def __init__(self) -> None:
        super().__init__()
        self._partial = ""

    def start(self) -> list[Outgoing]:
        return []

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        return []

    def end_of_stream(self) -> list[Outgoing]:
        return []

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        return [VendorError("the local engine does not take messages")]

    def hypothesis(self, text: str) -> list[VendorEvent]:
        """The decoder's current best guess for the open sentence: a partial when it changed."""
        text = _clean(text)
        if self.completed or text == self._partial:
            return []
        self._partial = text
        return [PartialResult(text)]

    def sentence_final(self, text: str, start_ms: int | None, end_ms: int | None) -> list[VendorEvent]:
        """The open sentence is over. An empty one gives no final, but clears a partial already shown."""
        if self.completed:
            return []
        text = _clean(text)
        shown, self._partial = self._partial, ""
        if text:
            return [FinalResult(text, start_ms, end_ms)]
        return [PartialResult("")] if shown else []

    def complete(self) -> list[VendorEvent]:
        if self.completed:
            return []
        self.completed = True
        return [StreamCompleted()]

    def failure(self, message: str, *, fatal: bool = False) -> list[VendorEvent]:
        if self.completed:
            return []
        self.completed = True
        return [VendorError(message, fatal=fatal)]


def _clean(text: str) -> str:
    return " ".join(text.split())
