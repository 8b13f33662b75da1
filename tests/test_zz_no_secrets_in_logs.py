"""Runs last (by name): no key configured by any test appears in any log line the daemon wrote."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import KEYS_USED


def test_no_key_in_any_log_line_of_the_run(all_daemon_logs: Path) -> None:
    for handler in __import__("logging").getLogger("asr_daemon").handlers:
        handler.flush()
        if hasattr(handler, "file"):
            handler.file.flush()
    text = all_daemon_logs.read_text(encoding="utf-8")
    assert text, "no log lines were captured"
    leaks = [key for key in KEYS_USED if key in text]
    lines = [line for line in text.splitlines() if any(key in line for key in leaks)][:5]
    assert not leaks, f"keys in logs: {leaks}: {lines}"
