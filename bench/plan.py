"""What a benchmark run is asked to do (``Plan``) and what it measured (``Run``): shared by the runner and the
report, so the report needs nothing from the runner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import StreamResult
from .scenario import CASES


@dataclass
class Plan:
    levels: tuple[int, ...] = (1, 10, 50, 100)
    # Streams wanted per path and level (rounded up to whole iterations of every client); level 1 gets its own.
    samples: int = 200
    samples_single: int = 100
    min_iterations: int = 2
    # 1 = real time; the tiny smoke run goes faster.
    pace: float = 1.0
    # Bytes per Wyoming audio-chunk: 320 = 10 ms, what Home Assistant's voice pipeline sends (as seen on the wire).
    piece_bytes: int = 320
    # More chunk sizes whose CPU (and added latency) is measured at the levels in ``other_piece_levels`` too:
    # the CPU budget holds at 10 ms and at 32 ms chunks (1024 bytes).
    other_piece_bytes: tuple[int, ...] = (1024,)
    other_piece_levels: tuple[int, ...] = (1, 50)
    # Streams wanted per path at those levels (CPU needs less than the latency percentiles at level 1).
    other_piece_samples: int = 30
    startups: int = 5
    describes: int = 50
    # Per level: seconds the wake-up floor (floor.py) gets the level's chunks; 0 = not measured.
    floor_seconds: float = 10.0
    idle_seconds: float = 3.0
    vendors: tuple[str, ...] = tuple(case.vendor for case in CASES)
    profile: bool = False
    # What users feel (last voiced frame → transcript), three client modes side by side: levels, and utterances
    # per mode and level (level 1 gets its own); the speech is followed by ``felt_tail_seconds`` of silence.
    felt_levels: tuple[int, ...] = (1, 50)
    felt_samples: int = 100
    felt_samples_single: int = 20
    felt_tail_seconds: float = 3.0
    # The satellite mode (emulated satellites, the transcript timed on MQTT; needs mosquitto): at these numbers
    # of satellites commanding at once. At a level also in ``felt_levels`` it joins that level's rounds; at
    # another it runs with mode (a) alone, ``satellite_samples`` commands per mode.
    satellite_levels: tuple[int, ...] = (1, 5)
    satellite_samples: int = 20
    # Keep the daemon's configs and logs here (default: a temporary directory, removed at the end).
    keep: Path | None = None
    name: str = "full"

    def iterations(self, level: int) -> int:
        wanted = self.samples_single if level == 1 else self.samples
        return max(self.min_iterations, math.ceil(wanted / level))

    def other_piece_iterations(self, level: int) -> int:
        return max(self.min_iterations, math.ceil(self.other_piece_samples / level))

    def felt_iterations(self, level: int) -> int:
        wanted = self.felt_samples_single if level == 1 else self.felt_samples
        return max(self.min_iterations, math.ceil(wanted / level))

    def satellite_iterations(self, level: int) -> int:
        """Commands per satellite at a satellite level that is not a felt level."""
        return max(self.min_iterations, math.ceil(self.satellite_samples / level))


PRESETS: dict[str, Plan] = {
    "full": Plan(),
    "quick": Plan(
        samples=100,
        samples_single=30,
        startups=3,
        describes=30,
        idle_seconds=2.0,
        floor_seconds=5.0,
        felt_samples=50,
        felt_samples_single=8,
        satellite_samples=10,
        name="quick",
    ),
    # CI's smoke run: proves the machinery works end to end in seconds; its figures mean nothing.
    "tiny": Plan(
        levels=(1, 5),
        samples=1,
        samples_single=1,
        min_iterations=1,
        pace=4.0,
        startups=1,
        describes=3,
        idle_seconds=0.3,
        floor_seconds=0.5,
        other_piece_levels=(1,),
        other_piece_samples=1,
        felt_levels=(1, 2),
        felt_samples=1,
        felt_samples_single=1,
        felt_tail_seconds=1.5,
        satellite_levels=(1, 2),
        satellite_samples=1,
        name="tiny",
    ),
}


@dataclass
class LevelRun:
    level: int
    iterations: int
    wall_seconds: float
    results: list[StreamResult]
    daemon_cpu_seconds: float
    clients_cpu_seconds: float
    emulators_cpu_seconds: float
    other_cpu_seconds: float
    rss_samples: list[int]
    describe_seconds: list[float]
    clients_loop_lag: list[float]
    emulators_loop_lag: list[float]
    profile: str | None = None
    # Bytes per audio-chunk the level's clients sent.
    piece_bytes: int = 0
    # The wake-up floor at this level (floor.py): its CPU seconds for the audio seconds it was sent.
    floor_cpu_seconds: float | None = None
    floor_audio_seconds: float | None = None


@dataclass
class FeltRun:
    """One level of the felt-latency section: the streams of every mode, and the endpointing daemon's CPU (and
    the satellite daemon's, when the satellite mode ran)."""

    level: int
    iterations: int
    results: list[StreamResult]
    endpointing_cpu_seconds: float
    endpointing_audio_seconds: float
    wall_seconds: float
    satellite_cpu_seconds: float = 0.0
    satellite_audio_seconds: float = 0.0


@dataclass
class Run:
    plan: Plan
    startups: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, Any] = field(default_factory=dict)
    warmup: list[StreamResult] = field(default_factory=list)
    levels: list[LevelRun] = field(default_factory=list)
    # The same levels with the plan's other chunk sizes (CPU and added latency only).
    other_pieces: list[LevelRun] = field(default_factory=list)
    # What users feel: one per felt level (and satellite level), the modes side by side.
    felt: list[FeltRun] = field(default_factory=list)
    # Warnings and errors the endpointing daemon (and the satellite daemon) logged.
    felt_log_errors: list[str] = field(default_factory=list)
    # Why the satellite mode did not run (None: it ran, or was not asked for).
    satellite_skipped: str | None = None
    after: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
