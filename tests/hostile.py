"""Hostile Wyoming clients against the daemon as its own process, on 127.0.0.1: what they cost it.

    python -m tests.hostile flood --connections 4 --seconds 10 [--data-bytes 262144] [--root CHECKOUT]
    python -m tests.hostile slow --connections 4 --seconds 10 [--data-bytes 61440]

``flood``: each connection sends ``describe`` events carrying a data block of ``--data-bytes`` of JSON that
grows ~25-fold once parsed (a list of empty lists, slow to parse too), as fast as the daemon takes them, and
never reads an answer (so answers back up and events wait); a connection the daemon closes is opened again.
``slow``: each connection sends a header claiming a data block and a 512 KiB payload, the data block whole,
(the same heavy JSON), then the payload one byte every 20 ms (~50 bytes/s), the way a slow-loris client would.

Reported: the daemon's RSS growth (peak over the run, from /proc VmHWM, against its RSS before the attack),
its CPU seconds per hostile byte (slow), and the describe round trip Home Assistant would see meanwhile.
``--root`` runs another checkout's daemon (for before/after figures). Bounded: the run stops after
``--seconds`` and the daemon is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.daemon_process import cpu_seconds, free_port, memory
from bench.load import describe_round_trip

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD_BYTES = 512 * 1024


@dataclass
class Figures:
    mode: str
    connections: int
    seconds: float
    rss_before: int = 0
    rss_peak_growth: int = 0
    hostile_bytes: int = 0
    cpu_seconds: float = 0.0
    describe_seconds: list[float] = field(default_factory=list)
    describe_failures: int = 0

    def report(self) -> dict[str, Any]:
        latencies = sorted(self.describe_seconds)
        return {
            "mode": self.mode,
            "connections": self.connections,
            "seconds": self.seconds,
            "rss_before_mib": round(self.rss_before / 2**20, 1),
            "rss_peak_growth_mib": round(self.rss_peak_growth / 2**20, 1),
            "hostile_bytes": self.hostile_bytes,
            "daemon_cpu_seconds": round(self.cpu_seconds, 2),
            "cpu_ms_per_hostile_byte": (
                round(1000 * self.cpu_seconds / self.hostile_bytes, 4) if self.hostile_bytes else None
            ),
            "describe_median_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "describe_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
            "describe_failures": self.describe_failures,
        }


def heavy_json(data_bytes: int) -> bytes:
    """About ``data_bytes`` of JSON object that parses slowly into many small objects (a list of empty lists)."""
    items = max(0, (data_bytes - 10) // 3)
    return ('{"x":[' + ",".join(["[]"] * items) + "]}").encode()


def flood_event(data_bytes: int) -> bytes:
    """A describe with a data block of about ``data_bytes`` of heavy JSON."""
    block = heavy_json(data_bytes)
    header = json.dumps({"type": "describe", "data_length": len(block)}).encode() + b"\n"
    return header + block


async def flood(port: int, data_bytes: int, until: float, figures: Figures) -> None:
    event = flood_event(data_bytes)
    while time.monotonic() < until:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < until and not writer.is_closing():
                writer.write(event)
                async with asyncio.timeout(max(0.01, until - time.monotonic())):
                    await writer.drain()
                figures.hostile_bytes += len(event)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def slow(port: int, data_bytes: int, until: float, figures: Figures) -> None:
    block = heavy_json(data_bytes)
    header = json.dumps({"type": "audio-chunk", "data_length": len(block), "payload_length": PAYLOAD_BYTES}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(header + b"\n" + block)
        await writer.drain()
        while time.monotonic() < until:
            writer.write(b"\0")
            await writer.drain()
            figures.hostile_bytes += 1
            await asyncio.sleep(0.02)
    except OSError:
        pass
    finally:
        writer.close()


async def watch(port: int, until: float, figures: Figures) -> None:
    while time.monotonic() < until:
        try:
            figures.describe_seconds.append(await describe_round_trip(port, timeout=5.0))
        except (OSError, TimeoutError, ConnectionError):
            figures.describe_failures += 1
        await asyncio.sleep(0.5)


async def start(root: Path, workdir: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = {"wyoming": {"uri": f"tcp://127.0.0.1:{port}", "zeroconf": False}, **config}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASR_DAEMON_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(root)
    process = _spawn(root, path, env, workdir / "daemon.log")
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                raise RuntimeError((workdir / "daemon.log").read_text())
            with contextlib.suppress(OSError, TimeoutError, ConnectionError):
                await describe_round_trip(port, timeout=2.0)
                return process, port
            await asyncio.sleep(0.1)


def _spawn(root: Path, config: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "asr_daemon", "run", "--config", str(config)]
        return subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


async def measure(
    mode: str,
    connections: int,
    seconds: float,
    data_bytes: int,
    root: Path = ROOT,
    config: dict[str, Any] | None = None,
) -> Figures:
    figures = Figures(mode, connections, seconds)
    with tempfile.TemporaryDirectory() as workdir:
        process, port = await start(root, Path(workdir), config or {})
        try:
            await asyncio.sleep(0.5)
            figures.rss_before = memory(process.pid)["VmRSS"]
            cpu_before = cpu_seconds(process.pid)
            until = time.monotonic() + seconds
            attack = flood if mode == "flood" else slow
            await asyncio.gather(
                *(attack(port, data_bytes, until, figures) for _ in range(connections)), watch(port, until, figures)
            )
            figures.cpu_seconds = cpu_seconds(process.pid) - cpu_before
            figures.rss_peak_growth = memory(process.pid)["VmHWM"] - figures.rss_before
        finally:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("flood", "slow"))
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--data-bytes", type=int, default=None, help="data block size (flood: 256 KiB, slow: 60 KiB)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose daemon is run")
    args = parser.parse_args()
    data_bytes = args.data_bytes or (256 * 1024 if args.mode == "flood" else 60 * 1024)
    figures = asyncio.run(measure(args.mode, args.connections, args.seconds, data_bytes, args.root.resolve()))
    print(json.dumps({"root": str(args.root), "data_bytes": data_bytes, **figures.report()}))


if __name__ == "__main__":
    main()
