"""A bounded, ordered, on-disk queue of records that survives restarts (the MQTT sink's outbox for finals).

One JSON file per record, named by a sequence number that only grows (``000000000042.json``), written to a
temporary name, synced and renamed, so a crash leaves either the whole record or none of it. Reading the
directory back at start restores the order. When the spool is full (``max_items`` records or ``max_bytes``)
the oldest record is dropped, with a warning: the newest transcripts are the ones worth keeping.

A record that cannot be read back (a corrupt file) or that its consumer cannot use (``set_aside``) is moved to
``rejected/`` inside the spool, logged once, and the records behind it go on: one bad file never blocks the
queue. ``rejected/`` keeps the newest ``MAX_REJECTED`` files for inspection.

The methods do blocking file I/O; call them from a worker thread (``asyncio.to_thread``). They are
thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

_SUFFIX = ".json"
_DIGITS = 12
REJECTED = "rejected"
MAX_REJECTED = 100


class Spool:
    def __init__(self, directory: Path, *, max_items: int = 10000, max_bytes: int = 16 << 20) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("the spool needs room for at least one record")
        self.directory = directory
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        # sequence number → size in bytes, oldest first
        self._entries: OrderedDict[int, int] = OrderedDict()
        self._bytes = 0
        self._next = 1
        self._opened = False

    def open(self) -> None:
        """Create the directory if needed and take in what an earlier run left."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            found: list[tuple[int, int]] = []
            for path in self.directory.iterdir():
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)  # a write cut short by a crash
                    continue
                if not path.name.endswith(_SUFFIX):
                    continue
                stem = path.name[: -len(_SUFFIX)]
                if not stem.isdigit():
                    continue
                found.append((int(stem), path.stat().st_size))
            found.sort()
            self._entries = OrderedDict(found)
            self._bytes = sum(size for _, size in found)
            self._next = (found[-1][0] + 1) if found else 1
            self._opened = True
        if found:
            _LOGGER.info("spool %s: %d record(s) from an earlier run are waiting", self.directory, len(found))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, record: dict[str, Any]) -> int:
        """Store ``record`` durably; returns its sequence number."""
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) > self.max_bytes:
            raise ValueError(f"record of {len(data)} bytes does not fit a spool of {self.max_bytes} bytes")
        with self._lock:
            self._require_open()
            while self._entries and (len(self._entries) >= self.max_items or self._bytes + len(data) > self.max_bytes):
                oldest = next(iter(self._entries))
                self._remove_locked(oldest)
                self.dropped += 1
                _LOGGER.warning(
                    "spool %s is full (%d records, %d bytes): dropped the oldest record",
                    self.directory,
                    self.max_items,
                    self.max_bytes,
                )
            seq = self._next
            self._next += 1
            path = self._path(seq)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            tmp.replace(path)
            self._sync_directory()
            self._entries[seq] = len(data)
            self._bytes += len(data)
            return seq

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """The oldest record and its sequence number, or None when the spool is empty."""
        with self._lock:
            self._require_open()
            while self._entries:
                seq = next(iter(self._entries))
                try:
                    record = json.loads(self._path(seq).read_bytes())
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except (OSError, ValueError) as exc:
                    self._set_aside_locked(seq, f"it is unreadable ({exc})")
                    continue
                return seq, record
            return None

    def set_aside(self, seq: int, reason: str) -> None:
        """Move a record its consumer cannot use to ``rejected/`` so that the next one comes up."""
        with self._lock:
            self._set_aside_locked(seq, reason)

    def remove(self, seq: int) -> None:
        """Forget a record once it was delivered."""
        with self._lock:
            self._remove_locked(seq)

    # -- internals ---------------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("spool not opened")

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:0{_DIGITS}d}{_SUFFIX}"

    def _set_aside_locked(self, seq: int, reason: str) -> None:
        if seq not in self._entries:
            return
        rejected = self.directory / REJECTED
        path = self._path(seq)
        try:
            rejected.mkdir(exist_ok=True, mode=0o700)
            path.replace(rejected / path.name)
            kept = sorted(rejected.glob(f"*{_SUFFIX}"))
            for old in kept[: max(0, len(kept) - MAX_REJECTED)]:
                old.unlink(missing_ok=True)
            where = f"moved to {rejected}"
        except OSError as exc:
            where = f"dropped ({exc.strerror or exc})"
        _LOGGER.error("spool %s: record %d is skipped: %s; %s", self.directory, seq, reason, where)
        self._remove_locked(seq)
        self.dropped += 1

    def _remove_locked(self, seq: int) -> None:
        size = self._entries.pop(seq, None)
        if size is None:
            return
        self._bytes -= size
        self._path(seq).unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
