"""The knobs every emulator shares, apart from the emulators themselves: the command line's options build on this
without loading a WebSocket server (the daemon's own command line stays light)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from enum import StrEnum


class Fault(StrEnum):
    """How an emulator misbehaves."""

    NONE = "none"
    # Cut the TCP connection (no close frame) after ``fault_after_bytes`` of PCM.
    DROP = "drop"
    # Stop answering (keep reading and discarding) after ``fault_after_bytes`` of PCM.
    STALL = "stall"
    # Refuse the stream at its start the way the vendor does (auth/config error).
    ERROR_AT_START = "error_at_start"
    # Apply the vendor's idle cut after ``idle_timeout`` seconds without data (short, for tests).
    IDLE_TIMEOUT = "idle_timeout"
    # Hold the final answer back by ``slow_final_seconds``.
    SLOW_FINAL = "slow_final"
    # Cut the TCP connection (no close frame) when the end of audio arrives, before the final answer.
    DROP_AT_END = "drop_at_end"


@dataclass
class EmulatorOptions:
    """Knobs shared by every emulator (CLI flags of ``asr-daemon emulate``)."""

    script: list[str] = field(default_factory=list)
    # Per-stream scripts: stream i follows stream_scripts[i % n] (tests tell concurrent streams apart by text).
    stream_scripts: list[list[str]] = field(default_factory=list)
    # Accepted credentials; anything else is rejected as the vendor would.
    api_keys: list[str] = field(default_factory=lambda: ["test-key"])
    fault: Fault = Fault.NONE
    # Streams the fault applies to: the first N (0 = every stream), so a retry can succeed.
    fault_streams: int = 0
    # Keep every stream's PCM in its record (tests check which audio reached which connection).
    keep_pcm: bool = False
    # Recognise a segment by its audio rather than by its order in the stream: the same speech gets the
    # same sentence on any connection (as a real recogniser would), and new speech the script's next one.
    # Needed when a client replays audio on a new connection; off, every stream starts at the script's top.
    recognise_by_audio: bool = False
    fault_after_bytes: int = 16000
    slow_final_seconds: float = 3.0
    # Seconds without any client message before the vendor's idle cut; None uses the vendor's own limit.
    idle_timeout: float | None = None
    # Segmentation: a segment ends after this much silence.
    silence_ms: int = 500
    # A new word of the script is revealed per this much speech.
    word_ms: int = 250
    # RMS of a 10 ms frame above which it counts as speech.
    energy_threshold: float = 300.0
    # Serve wss:// (and https:// for a token endpoint) with this context; None serves plain ws://.
    tls: ssl.SSLContext | None = None
