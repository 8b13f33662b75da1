"""The benchmark still runs: its tiny configuration, end to end, once (its timings are not looked at)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.speech import have_speech_tools

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")


def test_tiny_benchmark_runs_every_vendor_through_both_paths(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["clean"]
    levels = results["levels"]
    assert [level["figures"]["level"] for level in levels] == [1, 5]
    streams = [stream for level in levels for stream in level["streams"]]
    # Both paths, every vendor, every answer the scripted text.
    assert {(s["path"], s["vendor"]) for s in streams} >= {
        (path, vendor)
        for path in ("daemon", "direct")
        for vendor in ("amivoice", "iapp", "tiro", "yating", "zyun360")
    }
    assert all(s["error"] is None and s["text"] == s["expected"] for s in streams)
    assert all(s["latency"] is not None for s in streams)
    # Every figure the report promises is there (its value is not judged here).
    budgets = {row["budget"] for row in results["budgets"]}
    assert any(name.startswith("CPU per real-time stream") for name in budgets)
    assert any(name.startswith("idle RSS") for name in budgets)
    assert any(name.startswith("start → ready") for name in budgets)
    # The wake-up floor got each level's chunks and its CPU was read.
    for level in levels:
        assert level["floor_audio_seconds"] > 0
        assert level["figures"]["floor_pct_per_stream"] > 0
    assert results["environment"]["floor_event_loop"] in ("uvloop", "asyncio")
    assert results["after"]["exit_code"] == 0
    assert [line for line in results["after"]["log_errors"] if " ERROR " in line or "Traceback" in line] == []

    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Budgets ([docs/architecture.md](../docs/architecture.md#performance-budgets))" in report
    assert "| 5 | 5 + 5 |" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latency.png").stat().st_size > 0
