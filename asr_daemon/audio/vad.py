"""Voice activity detection: cuts continuous microphone audio into utterances.

A ``SpeechDetector`` gives a speech probability per 10 ms of 16 kHz mono s16le: ``webrtc_vad()`` (the detector
every source uses for end of speech, in the base install: docs/speech-detector.md) or ``micro_vad()``
(pymicro-vad, Home Assistant's, with the ``mic`` extra). ``VadSegmenter`` turns those into utterances the
way Home Assistant's segmenter does: ``speech_seconds`` of speech start one, ``silence_seconds`` of silence
end it. The detector notices speech up to some hundred milliseconds late, so each utterance starts
``pre_roll_seconds`` before the speech the detector heard (the ``speech_seconds`` that started it are always
included): the first syllable is never cut. All
decisions are made in audio time, never wall time, so the same audio always gives the same utterances,
whatever the pace it arrives at.

With ``always_stream`` nothing is held back: every frame belongs to an utterance, the next one starting
right where the previous ended, so the vendor hears all audio (for vendors that segment speech
themselves); speech still decides where one utterance ends, and a long stretch without any ends at
``max_seconds``.

Sans-I/O: ``process()`` takes PCM and returns what happened; it never touches a device or a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .endpoint import DEFAULT_AGGRESSIVENESS

FRAME_BYTES = 320  # 10 ms of 16 kHz s16le mono
FRAME_SECONDS = 0.01


class SpeechDetector(Protocol):
    def process_10ms(self, audio: bytes) -> float:
        """Speech probability of 10 ms of 16 kHz s16le mono (negative while the detector warms up)."""
        ...


class _WebrtcDetector:
    """webrtcvad's yes/no per frame as a probability of 1.0 or 0.0."""

    __slots__ = ("_is_speech",)

    def __init__(self, aggressiveness: int) -> None:
        import webrtcvad

        self._is_speech = webrtcvad.Vad(aggressiveness).is_speech

    def process_10ms(self, audio: bytes) -> float:
        return 1.0 if self._is_speech(audio, 16000) else 0.0


def webrtc_vad(aggressiveness: int = DEFAULT_AGGRESSIVENESS) -> SpeechDetector:
    """WebRTC's detector (base install), at the aggressiveness end of speech uses (0-3)."""
    return _WebrtcDetector(aggressiveness)


def micro_vad() -> SpeechDetector:
    """pymicro-vad's detector (needs the ``mic`` extra)."""
    from pymicro_vad import MicroVad

    detector: SpeechDetector = MicroVad()
    return detector


@dataclass(frozen=True, slots=True)
class VadSettings:
    threshold: float = 0.5
    speech_seconds: float = 0.3
    silence_seconds: float = 0.7
    pre_roll_seconds: float = 1.0
    # An utterance is ended here even while speech goes on (the vendor's session limit).
    max_seconds: float = 60.0
    always_stream: bool = False


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    """An utterance begins; ``audio`` is its first audio (the pre-roll), ``offset`` its start in the stream."""

    audio: bytes
    offset: float


@dataclass(frozen=True, slots=True)
class UtteranceAudio:
    audio: bytes


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """The utterance is over; ``speech`` tells whether the detector heard any speech in it."""

    offset: float
    reason: str
    speech: bool


Segment = UtteranceStarted | UtteranceAudio | UtteranceEnded


class VadSegmenter:
    """Feed 16 kHz s16le mono audio; get utterance starts, their audio, and their ends."""

    def __init__(self, settings: VadSettings, detector: SpeechDetector) -> None:
        self.settings = settings
        self._detector = detector
        self._carry = b""
        self._frames = 0  # 10 ms frames seen since the start of the stream
        # The speech that decided the start, and the pre-roll before it.
        keep = settings.pre_roll_seconds + settings.speech_seconds
        self._pre_roll: deque[bytes] = deque(maxlen=max(1, round(keep / FRAME_SECONDS)))
        self._speech_needed = max(1, round(settings.speech_seconds / FRAME_SECONDS))
        self._silence_needed = max(1, round(settings.silence_seconds / FRAME_SECONDS))
        self._max_frames = max(1, int(settings.max_seconds / FRAME_SECONDS))
        self._speech_run = 0
        self._silence_run = 0
        self._active = False
        self._heard_speech = False
        self._utterance_frames = 0
        self.utterances = 0

    @property
    def active(self) -> bool:
        """An utterance is open."""
        return self._active

    @property
    def position(self) -> float:
        """Seconds of audio processed so far."""
        return self._frames * FRAME_SECONDS

    def process(self, pcm: bytes) -> list[Segment]:
        data = self._carry + pcm if self._carry else pcm
        usable = len(data) - len(data) % FRAME_BYTES
        self._carry = data[usable:]
        out: list[Segment] = []
        pending = bytearray()
        for offset in range(0, usable, FRAME_BYTES):
            frame = data[offset : offset + FRAME_BYTES]
            for event in self._frame(frame):
                if isinstance(event, UtteranceAudio):
                    pending += event.audio
                    continue
                if pending:
                    out.append(UtteranceAudio(bytes(pending)))
                    pending.clear()
                out.append(event)
        if pending:
            out.append(UtteranceAudio(bytes(pending)))
        return out

    def flush(self) -> list[Segment]:
        """End of the stream: close an open utterance."""
        self._carry = b""
        if self._active:
            return [self._end("end of audio")]
        return []

    # -- internals ---------------------------------------------------------------------------------------

    def _frame(self, frame: bytes) -> list[Segment]:
        self._frames += 1
        probability = self._detector.process_10ms(frame)
        speech = probability >= self.settings.threshold
        if speech:
            self._speech_run += 1
            self._silence_run = 0
        else:
            self._speech_run = 0
            self._silence_run += 1
        if not self._active:
            self._pre_roll.append(frame)
            if self.settings.always_stream or self._speech_run >= self._speech_needed:
                return [self._start()]
            return []
        self._utterance_frames += 1
        events: list[Segment] = [UtteranceAudio(frame)]
        if self._speech_run >= self._speech_needed:
            self._heard_speech = True
        if self._heard_speech and self._silence_run >= self._silence_needed:
            events.append(self._end("silence"))
        elif self._utterance_frames >= self._max_frames:
            events.append(self._end("max length"))
        return events

    def _start(self) -> UtteranceStarted:
        audio = b"".join(self._pre_roll)
        self._pre_roll.clear()
        self._active = True
        self._utterance_frames = len(audio) // FRAME_BYTES
        self._heard_speech = self._speech_run >= self._speech_needed
        self.utterances += 1
        return UtteranceStarted(audio, self.position - len(audio) / (FRAME_BYTES / FRAME_SECONDS))

    def _end(self, reason: str) -> UtteranceEnded:
        self._active = False
        heard, self._heard_speech = self._heard_speech, False
        self._utterance_frames = 0
        self._speech_run = 0
        return UtteranceEnded(self.position, reason, heard)
