"""The replay buffer: utterance audio not yet covered by a final result, kept to be sent again after a drop.

Positions are byte offsets into the utterance's normalised audio. A vendor connection that starts at buffer
position ``base`` reports times relative to its own start; ``to_utterance_ms`` maps them back, also taking
out keepalive silence we inserted into that connection (silence the vendor heard but the client never sent).
"""

from __future__ import annotations

import bisect


class ReplayBuffer:
    """Audio from ``start`` (a byte position in the utterance) to the newest byte."""

    def __init__(self, bytes_per_second: int, align: int = 2) -> None:
        self.bytes_per_second = bytes_per_second
        # Trim points fall on whole frames of this size (10 ms), counted from the utterance's start.
        self.align = align
        self.start = 0
        self._data = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self._data)

    def append(self, pcm: bytes) -> None:
        self._data += pcm

    def read(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position`` (which must not be before ``start``)."""
        offset = max(position - self.start, 0)
        return bytes(self._data[offset : offset + size])

    def trim(self, position: int) -> None:
        """Forget audio before ``position`` (it is covered by a final result)."""
        position = min(max(position, self.start), self.end)
        position -= position % self.align
        if position <= self.start:
            return
        del self._data[: position - self.start]
        self.start = position


class ConnectionTimeline:
    """Maps a vendor connection's audio clock to utterance positions."""

    def __init__(self, base: int, bytes_per_second: int) -> None:
        self.base = base
        self.bytes_per_second = bytes_per_second
        self.sent = 0  # bytes the vendor received on this connection, silence included
        self._inserted_at: list[int] = []  # vendor positions where silence was inserted
        self._inserted_total: list[int] = []  # silence inserted up to and including that point

    def audio(self, size: int) -> None:
        self.sent += size

    def silence(self, size: int) -> None:
        self._inserted_at.append(self.sent)
        total = (self._inserted_total[-1] if self._inserted_total else 0) + size
        self._inserted_total.append(total)
        self.sent += size

    def to_utterance_bytes(self, vendor_ms: int) -> int:
        vendor_pos = self.bytes_per_second * max(vendor_ms, 0) // 1000
        index = bisect.bisect_right(self._inserted_at, vendor_pos) - 1
        inserted = self._inserted_total[index] if index >= 0 else 0
        return self.base + max(vendor_pos - inserted, 0)

    def to_utterance_ms(self, vendor_ms: int) -> int:
        return self.to_utterance_bytes(vendor_ms) * 1000 // self.bytes_per_second
