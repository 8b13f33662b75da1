"""End of speech: tells, from the audio alone, when the user has finished talking.

The detector is WebRTC's voice activity detector (``webrtcvad-wheels``, part of the base install): about 2 µs
per 10 ms frame against 125-200 µs for pymicro-vad, as accurate at ordinary noise levels, and it hears the end
some 0.6 s sooner (figures, its weak spot and the choice of defaults: docs/speech-detector.md).
``Endpointer`` counts its per-frame decisions in audio time, never wall time, so the same audio gives the same
result whatever the pace and the chunk sizes it arrives in.

Home Assistant's format (16 kHz mono 16-bit) goes to the detector as it comes; any other format is first
converted by ``AudioNormaliser`` to 16-bit mono at a rate the detector takes (its own rate when that is 8, 16,
32 or 48 kHz, else 16 kHz).

Sans-I/O: ``feed()`` takes PCM and updates the state; nothing here touches a socket or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from .format import AudioFormat
from .normalise import AudioNormaliser, check_format

FRAME_SECONDS = 0.01  # the detector decides per 10 ms frame
# The rates webrtcvad takes as they are; audio at any other rate is resampled to 16 kHz first.
DETECTOR_RATES = (8000, 16000, 32000, 48000)
_DEFAULT_DETECTOR_RATE = 16000
# webrtcvad's mode 3: at ordinary noise levels (20 dB SNR) every utterance ends, 0.5-0.6 s after its last word,
# and it takes the least steady noise for speech (docs/speech-detector.md).
DEFAULT_AGGRESSIVENESS = 3


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """When an utterance has speech, and when it is over."""

    # Silence after speech that ends the utterance: longer than the pauses inside a spoken command.
    silence_seconds: float = 0.5
    # Speech, in one stretch, before the utterance counts as having any.
    speech_seconds: float = 0.3
    # Audio without speech after which the utterance is given up as empty.
    no_speech_seconds: float = 5.0
    # webrtcvad's mode: 0 (keeps the most speech) to 3 (filters the most noise).
    aggressiveness: int = DEFAULT_AGGRESSIVENESS

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0-3, not {self.aggressiveness}")
        for name in ("silence_seconds", "speech_seconds", "no_speech_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0")


def detector_rate(fmt: AudioFormat) -> int:
    """The rate the detector runs at for audio in ``fmt``."""
    return fmt.rate if fmt.rate in DETECTOR_RATES else _DEFAULT_DETECTOR_RATE


class Endpointer:
    """Feed one utterance's audio; read whether speech was heard and whether it has ended.

    ``ended`` and ``speech_heard`` stay True once set: the user's turn is over, later audio changes nothing.
    """

    __slots__ = (
        "_carry",
        "_fed_bytes",
        "_fmt",
        "_frame_bytes",
        "_frames",
        "_is_speech",
        "_last_voiced_frame",
        "_no_speech_bytes",
        "_normaliser",
        "_rate",
        "_silence_needed",
        "_silence_run",
        "_speech_needed",
        "_speech_run",
        "ended",
        "in_speech",
        "settings",
        "speech_heard",
    )

    def __init__(self, settings: EndpointSettings, fmt: AudioFormat) -> None:
        import webrtcvad  # loaded with the first utterance, not at daemon start

        check_format(fmt)
        self.settings = settings
        self._fmt = fmt
        self._rate = detector_rate(fmt)
        self._frame_bytes = self._rate // 100 * 2  # 10 ms of 16-bit mono
        target = AudioFormat(self._rate, 2, 1)
        self._normaliser = None if fmt == target else AudioNormaliser(target)
        self._is_speech = webrtcvad.Vad(settings.aggressiveness).is_speech
        self._speech_needed = max(1, round(settings.speech_seconds / FRAME_SECONDS))
        self._silence_needed = max(1, round(settings.silence_seconds / FRAME_SECONDS))
        self._no_speech_bytes = round(settings.no_speech_seconds * fmt.bytes_per_second)
        self._carry = b""
        self._fed_bytes = 0
        self._frames = 0
        self._speech_run = 0
        self._silence_run = 0
        self._last_voiced_frame = 0
        self.speech_heard = False
        self.in_speech = False
        self.ended = False

    @property
    def no_speech(self) -> bool:
        """``no_speech_seconds`` of audio went by without ``speech_heard``."""
        return not self.speech_heard and self._fed_bytes >= self._no_speech_bytes

    @property
    def last_voiced_end(self) -> float:
        """Audio seconds from the start to the end of the last frame the detector heard as speech (0.0: none)."""
        return self._last_voiced_frame * FRAME_SECONDS

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio fed so far."""
        return self._fed_bytes / self._fmt.bytes_per_second

    def feed(self, pcm: bytes) -> None:
        """Any number of bytes in the format given at construction; a partial frame waits for the next call."""
        self._fed_bytes += len(pcm)
        if self._normaliser is not None:
            pcm = self._normaliser.push(pcm, self._fmt)
        if self._carry:
            pcm = self._carry + pcm
        size = self._frame_bytes
        usable = len(pcm) - len(pcm) % size
        self._carry = pcm[usable:] if usable != len(pcm) else b""
        is_speech, rate = self._is_speech, self._rate
        # A whole-buffer slice is the buffer itself: Home Assistant's 320-byte chunk is not copied.
        for offset in range(0, usable, size):
            self._frame(is_speech(pcm[offset : offset + size], rate))

    def _frame(self, speech: bool) -> None:
        self._frames += 1
        self.in_speech = speech
        if speech:
            self._silence_run = 0
            self._speech_run += 1
            self._last_voiced_frame = self._frames
            if self._speech_run >= self._speech_needed:
                self.speech_heard = True
        else:
            self._speech_run = 0
            self._silence_run += 1
            if self.speech_heard and self._silence_run >= self._silence_needed:
                self.ended = True
