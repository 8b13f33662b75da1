"""Log output: human lines by default, JSON lines for log shippers; secrets masked in both."""

from __future__ import annotations

import json
import logging
import sys
import time

from .redact import RedactingFilter

_HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_HUMAN))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_asr_daemon", False):
            root.removeHandler(existing)
    handler._asr_daemon = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter stays at warning unless we debug.
    noisy = logging.WARNING if level != "debug" else logging.INFO
    for name in ("websockets", "zeroconf", "asyncio"):
        logging.getLogger(name).setLevel(noisy)
