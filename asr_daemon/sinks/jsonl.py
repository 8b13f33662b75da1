"""JSON lines: one object per event, to stdout or appended to a file (``events.jsonl``).

For scripts (``asr-daemon run | jq``), Node-RED's file/exec nodes and ``journalctl``. Each line is
``AsrEvent.to_dict()``: ``id``, ``kind``, ``time`` first, then the fields the event has. Writes happen on a
worker thread, so a slow pipe or disk never stalls the event loop; the file is opened in append mode and
each line flushed, so ``logrotate``'s ``copytruncate`` works and a crash loses no written line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

from ..events import AsrEvent, EventKind
from ..settings import ConfigError

_LOGGER = logging.getLogger(__name__)

STDOUT = "-"


class JsonLinesSink:
    name = "jsonl"

    def __init__(self, target: str, *, partials: bool = False) -> None:
        self.target = target
        self.partials = partials
        self._file: IO[str] | None = None
        self._owns_file = False
        self.written = 0

    async def __aenter__(self) -> JsonLinesSink:
        if self.target == STDOUT:
            self._file = sys.stdout
        else:
            path = Path(self.target)
            try:
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                self._file = await asyncio.to_thread(open, path, "a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"events.jsonl = {self.target!r}: cannot write to it ({exc.strerror or exc})"
                ) from None
            self._owns_file = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        file, self._file = self._file, None
        if file is not None and self._owns_file:
            await asyncio.to_thread(file.close)
        elif file is not None:
            await asyncio.to_thread(file.flush)

    async def handle(self, event: AsrEvent) -> None:
        if event.kind is EventKind.PARTIAL and not self.partials:
            return
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._write, line)

    def _write(self, text: str) -> None:
        file = self._file
        if file is None:
            return
        try:
            file.write(text)
            file.flush()
        except (OSError, ValueError) as exc:
            _LOGGER.warning("events.jsonl %s: cannot write (%s)", self.target, exc)
            return
        self.written += 1
