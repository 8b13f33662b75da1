"""Re-chunking: whatever sizes arrive, the vendor gets the message size it prefers."""

from __future__ import annotations


class Rechunker:
    """Collects bytes and hands out chunks of exactly ``size`` bytes (the last one via ``flush``)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = size
        self._buffer = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        if not self._buffer and len(data) == self.size:
            return [data]
        self._buffer += data
        if len(self._buffer) < self.size:
            return []
        usable = len(self._buffer) - len(self._buffer) % self.size
        view = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        return [view[i : i + self.size] for i in range(0, usable, self.size)]

    def flush(self) -> bytes:
        """What is left (shorter than ``size``), emptying the buffer."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    @property
    def pending(self) -> int:
        return len(self._buffer)
