"""Run the daemon in-process for a test, on 127.0.0.1 and a free port."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asr_daemon.config import load_settings
from asr_daemon.daemon import Daemon


def settings_for(config: dict[str, Any]) -> Any:
    config = copy.deepcopy(config)
    wyoming = config.setdefault("wyoming", {})
    wyoming.setdefault("uri", "tcp://127.0.0.1:0")
    wyoming.setdefault("zeroconf", False)
    limits = config.setdefault("limits", {})
    limits.setdefault("final_timeout", 5.0)
    limits.setdefault("drain_timeout", 2.0)
    # Utterances end at audio-stop unless a test asks for endpointing (tests/test_endpointing_e2e.py does).
    config.setdefault("endpointing", {}).setdefault("enabled", False)
    return load_settings(None, config)


@asynccontextmanager
async def running_daemon(config: dict[str, Any]) -> AsyncIterator[Daemon]:
    """``async with running_daemon({...}) as daemon:`` then connect to ``daemon.port``."""
    daemon = Daemon(settings_for(config))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
