"""Audio normalisation: whatever the client sends, the vendor gets the PCM layout it wants.

Handles what Home Assistant really sends: a RIFF/WAVE header at the start of the audio (its REST STT path
forwards the uploaded file unchanged, header included, possibly split across chunks), chunks that split a
sample in two, and any rate, sample width and channel count. Resampling uses soxr (a real resampler, with
state kept across chunks), never ``audioop``.

Audio that already is what the vendor wants (16 kHz 16-bit mono: Home Assistant's own format) passes through
untouched, and numpy and soxr are imported only when a stream needs converting: the daemon starts faster and
idles some 12 MB smaller without them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .format import AudioFormat

if TYPE_CHECKING:
    import numpy as np

# A WAV header larger than this is not a header we accept (a real one is 44 bytes, rarely a few hundred).
MAX_WAV_HEADER = 64 * 1024
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class AudioFormatError(ValueError):
    """The audio cannot be understood (unsupported WAV encoding, absurd header, bad declared format)."""


def parse_wav_header(data: bytes) -> tuple[AudioFormat, int] | None:
    """Parse a RIFF/WAVE header at the start of ``data``.

    Returns (format, offset of the first PCM byte), or None when more bytes are needed. Raises
    ``AudioFormatError`` for WAV files that are not integer PCM.
    """
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a RIFF/WAVE header")
    offset = 12
    found: AudioFormat | None = None
    while True:
        if offset + 8 > len(data):
            return None
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"data":
            if found is None:
                raise AudioFormatError("WAV data chunk before its fmt chunk")
            return found, body
        if body + size + (size & 1) > MAX_WAV_HEADER:
            raise AudioFormatError(f"WAV header chunk {chunk_id!r} of {size} bytes is too large")
        if body + size > len(data):
            return None
        if chunk_id == b"fmt ":
            if size < 16:
                raise AudioFormatError("WAV fmt chunk too short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40:
                (tag,) = struct.unpack_from("<H", data, body + 24)
            if tag != _WAVE_FORMAT_PCM:
                raise AudioFormatError(f"WAV encoding {tag} is not supported (integer PCM only)")
            if bits not in (8, 16, 24, 32) or channels < 1 or rate < 1000:
                raise AudioFormatError(f"WAV format {rate} Hz, {bits} bit, {channels} channels is not supported")
            found = AudioFormat(rate, bits // 8, channels)
        offset = body + size + (size & 1)


def check_format(fmt: AudioFormat) -> None:
    """Reject declared formats we cannot convert."""
    if fmt.width not in (1, 2, 3, 4):
        raise AudioFormatError(f"sample width {fmt.width} bytes is not supported (1-4)")
    if not 1 <= fmt.channels <= 32:
        raise AudioFormatError(f"{fmt.channels} channels is not supported")
    if not 1000 <= fmt.rate <= 384000:
        raise AudioFormatError(f"sample rate {fmt.rate} Hz is not supported")


def _to_int16_mono(data: bytes, fmt: AudioFormat) -> np.ndarray:
    import numpy as np  # only for audio that needs converting

    if fmt.width == 2:
        samples = np.frombuffer(data, dtype="<i2")
    elif fmt.width == 1:
        samples = ((np.frombuffer(data, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    elif fmt.width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        samples = (raw[:, 1].astype(np.int16) | (raw[:, 2].astype(np.int8).astype(np.int16) << 8)).astype(np.int16)
    else:
        samples = (np.frombuffer(data, dtype="<i4") >> 16).astype(np.int16)
    if fmt.channels > 1:
        samples = samples.reshape(-1, fmt.channels).mean(axis=1).astype(np.int16)
    return samples


class AudioNormaliser:
    """Stateful converter for one stream: push client audio, get vendor PCM."""

    def __init__(self, target: AudioFormat) -> None:
        if target.width != 2 or target.channels != 1:
            raise ValueError("vendors take 16-bit mono PCM")
        self.target = target
        self._at_start = True
        self._head = b""
        self._carry = b""
        self._source: AudioFormat | None = None
        self._wav_format: AudioFormat | None = None
        self._resampler: Any = None
        # The source is already the target layout: whole samples go through untouched.
        self._passthrough = False

    @property
    def wav_format(self) -> AudioFormat | None:
        """The format found in a leading WAV header, if there was one."""
        return self._wav_format

    def push(self, data: bytes, declared: AudioFormat) -> bytes:
        """Convert one chunk; returns vendor PCM (possibly empty while a header or a split sample is pending)."""
        if self._at_start:
            data = self._strip_header(data)
            if self._at_start:
                return b""
        fmt = self._wav_format or declared
        # What Home Assistant sends: the same 16 kHz mono 16-bit format object for every chunk of whole samples.
        if fmt is self._source and self._passthrough and not self._carry and not len(data) & 1:
            return data
        out = b""
        if fmt != self._source:
            out = self._finish_source()
            check_format(fmt)
            self._resampler = None
            self._passthrough = fmt.width == 2 and fmt.channels == 1 and fmt.rate == self.target.rate
        # An equal format in another object (audio-start's, then the chunks') is adopted for the check above.
        self._source = fmt
        if self._carry:
            data = self._carry + data
        usable = len(data) - len(data) % fmt.frame_bytes
        self._carry = data[usable:]
        if usable == 0:
            return out
        return out + self._convert(data[:usable] if self._carry else data, fmt)

    def flush(self) -> bytes:
        """End of stream: what the resampler still holds (a trailing partial sample is dropped)."""
        if self._at_start and self._head:
            # Fewer than 12 bytes ever arrived: they are audio, not a header.
            head, self._head, self._at_start = self._head, b"", False
            return self.push(head, self._source or self.target) + self._finish_source()
        self._carry = b""
        return self._finish_source()

    # -- internals ---------------------------------------------------------------------------------------

    def _strip_header(self, data: bytes) -> bytes:
        head = self._head + data
        if len(head) < 4:
            if b"RIFF".startswith(head):
                self._head = head
                return b""
        elif head[:4] == b"RIFF":
            if len(head) > MAX_WAV_HEADER + 64 and parse_wav_header(head[:MAX_WAV_HEADER]) is None:
                raise AudioFormatError("WAV header never ends")
            parsed = parse_wav_header(head)
            if parsed is None:
                self._head = head
                return b""
            self._wav_format, offset = parsed
            self._at_start = False
            self._head = b""
            return head[offset:]
        self._at_start = False
        self._head = b""
        return head

    def _convert(self, data: bytes, fmt: AudioFormat) -> bytes:
        if fmt.width == 2 and fmt.channels == 1 and fmt.rate == self.target.rate:
            return data
        samples = _to_int16_mono(data, fmt)
        if fmt.rate != self.target.rate:
            samples = self._resample(samples, fmt.rate, last=False)
        return samples.astype("<i2", copy=False).tobytes()

    def _resample(self, samples: np.ndarray, rate: int, last: bool) -> np.ndarray:
        import soxr  # imported on first use: most streams arrive at 16 kHz already

        if self._resampler is None:
            self._resampler = soxr.ResampleStream(rate, self.target.rate, 1, dtype="int16", quality="HQ")
        result: np.ndarray = self._resampler.resample_chunk(samples, last=last)
        return result

    def _finish_source(self) -> bytes:
        if self._resampler is None or self._source is None:
            return b""
        import numpy as np

        tail = self._resample(np.zeros(0, dtype=np.int16), self._source.rate, last=True)
        self._resampler = None
        return tail.astype("<i2", copy=False).tobytes()
