"""The PCM layout audio is described in (a leaf: the sources, the normaliser and the vendors all use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Raw PCM layout: samples per second, bytes per sample, interleaved channels."""

    rate: int = 16000
    width: int = 2
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.rate * self.frame_bytes

    def bytes_for_ms(self, ms: int) -> int:
        return self.bytes_per_second * ms // 1000


PCM16K = AudioFormat(16000, 2, 1)
