"""Keeps secrets out of logs, error events and ``check`` output.

Every configured secret is registered once at startup; ``redact()`` replaces each occurrence in a text, and
also masks the usual carriers of secrets whose values we never saw (``token=`` query parameters, bearer
tokens, ``authorization=`` in AmiVoice commands).
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

_CARRIERS = re.compile(
    r"(?P<key>(?:[?&](?:token|key|api_key|apikey|access_token)=)"
    r"|(?:authorization=)"
    r"|(?:Bearer\s+))"
    r"(?P<value>\"(?:[^\"]|\"\")*\"|[^\s&\"',;]+)",
    re.IGNORECASE,
)

# Secrets shorter than this are not registered: masking "1" or "ab" everywhere would garble logs.
_MIN_SECRET = 4


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact()`` masks it from now on."""
    global _pattern
    if not value or len(value) < _MIN_SECRET:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """``text`` with every registered secret and every recognised secret carrier masked."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _CARRIERS.sub(lambda m: m.group("key") + MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message through ``redact()`` (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_text is None and record.exc_info[0] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True
