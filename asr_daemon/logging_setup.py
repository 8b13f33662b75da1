"""Log output: human lines by default, JSON lines for log shippers; secrets masked in both.

Under systemd (stderr is the journal's stream) each line starts with its syslog priority, ``<4>`` for a
warning, which journald strips and stores, so ``journalctl -p warning`` filters; the human format then leaves
the time out, as journald records it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

from .redact import RedactingFilter

_HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_HUMAN_JOURNAL = "%(levelname)-7s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: error 3, warning 4, info 6, debug 7 (critical 2)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def writes_to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's stream systemd connected us to (``$JOURNAL_STREAM`` is device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


class JournalPriorityFormatter(logging.Formatter):
    """Prefixes every line of ``inner``'s text (a traceback's too) with the record's ``<priority>``."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return prefix + self._inner.format(record).replace("\n", "\n" + prefix)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "human") -> None:
    """Configure the root logger once (idempotent: replaces our own handler)."""
    handler = logging.StreamHandler(sys.stderr)
    journal = writes_to_journal(sys.stderr)
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(_HUMAN_JOURNAL if journal else _HUMAN)
    handler.setFormatter(JournalPriorityFormatter(formatter) if journal else formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_asr_daemon", False):
            root.removeHandler(existing)
    handler._asr_daemon = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows a record's source line, thread or process: not looking them up saves a stack walk
    # and system calls on every line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Library chatter stays at warning unless we debug.
    noisy = logging.WARNING if level != "debug" else logging.INFO
    for name in ("websockets", "zeroconf", "asyncio"):
        logging.getLogger(name).setLevel(noisy)
