"""``python -m bench``: run the benchmark and write RESULTS.md, results.json and the plots.

Four processes: this one measures (start-up, describe, /proc figures) and writes the report; the daemon runs as
``python -m asr_daemon run``; the vendor emulators run in one helper process and every client in another
(``workers.py``). Levels of N concurrent clients stream real speech at real-time pace through the daemon and,
at the same time, N clients stream the same speech straight to the same emulators; the difference is what
the daemon adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asr_daemon import __version__

from . import report, satellite, workers
from .daemon_process import (
    ROOT,
    DaemonProcess,
    Sampler,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    memory,
    own_cpu_seconds,
    start_daemon,
)
from .floor import FloorReceiver, running_floor
from .load import StreamResult, describe_round_trip
from .plan import PRESETS, FeltRun, LevelRun, Plan, Run
from .report import FELT_MODES
from .scenario import CASES, cases_for, daemon_config, felt_speech_for, speech_for

BENCH_DIR = Path(__file__).resolve().parent


def environment() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    import os

    return {
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "asr_daemon": __version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


async def measure_startups(plan: Plan, vendors: dict[str, dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    """Start the daemon ``plan.startups`` times: spawn → listening → describe answered; idle RSS; SIGTERM."""
    found = []
    for index in range(plan.startups):
        daemon = await start_daemon(daemon_config(free_port(), vendors, 64), workdir, f"startup-{index}")
        await asyncio.sleep(0.3)
        rss = memory(daemon.pid)
        await daemon.stop()
        found.append(
            {
                "listening_seconds": daemon.listening_seconds,
                "ready_seconds": daemon.ready_seconds,
                "rss_bytes": rss.get("VmRSS", 0),
                "exit_code": daemon.exit_code,
                "stop_seconds": daemon.stop_seconds,
            }
        )
    return found


async def describe_probe(port: int, into: list[float], interval: float) -> None:
    """Describe round trips while a level runs (Home Assistant gives describe 1 s, the budget is 5 ms)."""
    while True:
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            into.append(await describe_round_trip(port))
        await asyncio.sleep(interval)


class Worker:
    """A helper process (``workers.py``) and its end of the pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def ask(self, message: Any = None, timeout: float = 600.0) -> Any:
        if message is not None:
            self.conn.send(message)
        ready = await asyncio.to_thread(self.conn.poll, timeout)
        if not ready:
            raise TimeoutError(f"no answer from {self.process.name} within {timeout:g} s")
        return self.conn.recv()

    async def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 5)
        self.conn.close()


async def run_level(
    plan: Plan,
    level: int,
    daemon: DaemonProcess,
    clients: Worker,
    emulators: Worker,
    workdir: Path,
    *,
    iterations: int | None = None,
    pace: float | None = None,
    piece: int | None = None,
    profiled: bool = True,
) -> LevelRun:
    iterations = iterations or plan.iterations(level)
    piece = piece or plan.piece_bytes
    sampler = Sampler(daemon.pid)
    describes: list[float] = []
    # Describe probes cost the daemon CPU too (~0.1 ms each, spread over the level's streams): none at one stream
    # (the idle figure covers describe there). Ten a second, so that one late answer does not decide the p99.
    probe = asyncio.create_task(describe_probe(daemon.port, describes, 0.1)) if level > 1 else None
    profiler = _start_profiler(daemon.pid, workdir, level) if plan.profile and profiled else None
    sampler.start()
    await emulators.ask("lag")  # start the emulators' loop-lag window here
    before = [cpu_seconds(pid) for pid in (daemon.pid, clients.pid, emulators.pid)]
    machine, own = machine_busy_seconds(), own_cpu_seconds()
    started = time.monotonic()
    try:
        command = {"level": level, "iterations": iterations, "pace": pace or plan.pace, "piece": piece}
        answer = await clients.ask(command)
    finally:
        wall = time.monotonic() - started
        after = [cpu_seconds(pid) for pid in (daemon.pid, clients.pid, emulators.pid)]
        machine, own = machine_busy_seconds() - machine, own_cpu_seconds() - own
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        await sampler.stop()
    emulator_lag = await emulators.ask("lag")
    profile = await _stop_profiler(profiler) if profiler else None
    return LevelRun(
        level=level,
        iterations=iterations,
        wall_seconds=wall,
        results=[StreamResult(**result) for result in answer["results"]],
        daemon_cpu_seconds=after[0] - before[0],
        clients_cpu_seconds=after[1] - before[1],
        emulators_cpu_seconds=after[2] - before[2],
        # What the rest of the machine used meanwhile (another job here makes every timing noisier).
        other_cpu_seconds=max(0.0, machine - own - sum(a - b for a, b in zip(after, before, strict=True))),
        rss_samples=sampler.rss,
        describe_seconds=describes,
        clients_loop_lag=answer["lag"],
        emulators_loop_lag=emulator_lag,
        profile=profile,
        piece_bytes=piece,
    )


def _start_profiler(pid: int, workdir: Path, level: int) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy on the daemon while the level runs (collapsed stacks), when py-spy is installed."""
    import shutil

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("bench: py-spy not found; --profile skipped", file=sys.stderr)
        return None
    out = workdir / f"profile-{level}.txt"
    command = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


async def _stop_profiler(profiler: tuple[subprocess.Popen[bytes], Path] | None) -> str | None:
    if profiler is None:
        return None
    process, out = profiler
    process.send_signal(2)  # SIGINT: py-spy writes its output and exits
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(process.wait, 20)
    if process.poll() is None:
        process.kill()
        process.wait()
    return out.read_text() if out.exists() else None


async def run(plan: Plan) -> Run:
    cases = cases_for(plan.vendors)
    if not cases:
        raise SystemExit(f"bench: no vendor selected (known: {', '.join(c.vendor for c in CASES)})")
    for case in cases:
        # Made (and cached) once here, before the helpers read it.
        speech_for(case)
        felt_speech_for(case, plan.felt_tail_seconds)
    result = Run(plan=plan, environment=environment())
    # The load daemon also serves the felt section's Home Assistant-VAD clients.
    max_sessions = min(1024, max(64, 2 * max(plan.levels + plan.felt_levels) + 16))
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        workdir = plan.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        emulators = Worker(workers.emulators_main, tuple(case.vendor for case in cases))
        try:
            vendors: dict[str, dict[str, Any]] = await emulators.ask(timeout=60)
            _say(f"start-up: {plan.startups} cold start(s) of the daemon")
            result.startups = await measure_startups(plan, vendors, workdir)
            config = daemon_config(free_port(), vendors, max_sessions, endpointing=False)
            daemon = await start_daemon(config, workdir, "daemon")
            clients: Worker | None = None
            try:
                result.idle = await measure_idle(plan, daemon)
                clients = Worker(workers.clients_main, daemon.port, vendors)
                await clients.ask(timeout=60)
                _say("warm-up: one utterance per vendor through both paths (reported apart)")
                warm = await run_level(
                    plan, 1, daemon, clients, emulators, workdir, iterations=len(cases), pace=8.0, profiled=False
                )
                result.warmup = warm.results
                async with contextlib.AsyncExitStack() as stack:
                    floor = await stack.enter_async_context(running_floor()) if plan.floor_seconds > 0 else None
                    result.environment["floor_event_loop"] = floor.event_loop if floor is not None else None
                    for level in plan.levels:
                        _say(f"level {level}: {level} + {level} clients x {plan.iterations(level)} utterances")
                        level_run = await run_level(plan, level, daemon, clients, emulators, workdir)
                        if floor is not None:
                            await measure_floor(plan, level_run, floor, clients)
                        result.levels.append(level_run)
                        _say("  " + report.level_line(level_run))
                    for piece in plan.other_piece_bytes:
                        for level in (n for n in plan.other_piece_levels if piece != plan.piece_bytes):
                            _say(f"level {level}, {piece}-byte chunks: CPU and added latency")
                            level_run = await run_level(
                                plan, level, daemon, clients, emulators, workdir,
                                iterations=plan.other_piece_iterations(level), piece=piece, profiled=False,
                            )  # fmt: skip
                            if floor is not None:
                                await measure_floor(plan, level_run, floor, clients)
                            result.other_pieces.append(level_run)
                            _say("  " + report.level_line(level_run))
                if plan.felt_levels or plan.satellite_levels:
                    await measure_felt(plan, result, vendors, daemon, clients, workdir)
                await asyncio.sleep(plan.idle_seconds)
                result.after = {"rss_bytes": memory(daemon.pid).get("VmRSS", 0)}
            except BaseException:
                print(daemon.log_tail(), file=sys.stderr)
                raise
            finally:
                if clients is not None:
                    await clients.stop()
                await daemon.stop()
                result.after.update(
                    {
                        "peak_rss_bytes": _peak_rss(result),
                        "exit_code": daemon.exit_code,
                        "stop_seconds": daemon.stop_seconds,
                        "log_errors": _log_errors(daemon),
                    }
                )
        finally:
            await emulators.stop()
    return result


async def measure_felt(
    plan: Plan, result: Run, vendors: dict[str, dict[str, Any]], daemon: DaemonProcess, clients: Worker, workdir: Path
) -> None:
    """What users feel, the modes side by side at each felt level: a second daemon with endpointing on, the
    load daemon (endpointing off) behind a client that ends audio like Home Assistant's VAD, the direct client;
    and, with mosquitto, a third daemon driving emulated satellites whose transcripts are timed on MQTT."""
    max_sessions = min(1024, max(64, 2 * max(plan.felt_levels, default=1) + 16))
    config = daemon_config(free_port(), vendors, max_sessions, endpointing=True)
    endpointing = await start_daemon(config, workdir, "daemon-endpointing")
    ports = {"endpointing": endpointing.port, "ha-vad": daemon.port}
    watched = [endpointing]
    try:
        async with contextlib.AsyncExitStack() as stack:
            satellites = await _start_satellites(plan, result, vendors, clients, workdir, stack)
            if satellites is not None:
                watched.append(satellites)
            base = {"felt": ports, "piece": plan.piece_bytes, "tail_seconds": plan.felt_tail_seconds}
            modes = [mode for mode in FELT_MODES if mode != "satellite" or satellites is not None]
            # The new daemons' first utterance per vendor imports its codec: not measured.
            warm = {**base, "modes": modes, "level": 1, "iterations": len(cases_for(plan.vendors)), "pace": 8.0}
            await clients.ask(warm)
            satellite_levels = set(plan.satellite_levels) if satellites is not None else set()
            for level in sorted(set(plan.felt_levels) | satellite_levels):
                if level in plan.felt_levels:
                    iterations = plan.felt_iterations(level)
                    level_modes = [mode for mode in modes if mode != "satellite" or level in satellite_levels]
                else:
                    # A satellite level of its own: the satellites beside mode (a) only.
                    iterations = plan.satellite_iterations(level)
                    level_modes = ["endpointing", "satellite"]
                felt = await _felt_level(plan, base, level, iterations, level_modes, clients, endpointing, satellites)
                result.felt.append(felt)
                _say("  " + report.felt_line(felt))
    except BaseException:
        for process in watched:
            print(process.log_tail(), file=sys.stderr)
        raise
    finally:
        for process in watched:
            await process.stop()
        result.felt_log_errors = [line for process in watched for line in _log_errors(process)]


async def _felt_level(
    plan: Plan,
    base: dict[str, Any],
    level: int,
    iterations: int,
    modes: list[str],
    clients: Worker,
    endpointing: DaemonProcess,
    satellites: DaemonProcess | None,
) -> FeltRun:
    # One client of each mode at once loads nothing; at N streams each mode runs alone, so that each sees N
    # streams (and the emulators N, not N times the modes).
    rounds = [modes] if level == 1 else [[mode] for mode in modes]
    _say(f"felt latency, level {level}: {' then '.join('+'.join(r) for r in rounds)}, x {iterations} each")
    results: list[StreamResult] = []
    felt = FeltRun(level, iterations, results, 0.0, 0.0, 0.0)
    for round_modes in rounds:
        command = {**base, "modes": round_modes, "level": level, "iterations": iterations, "pace": plan.pace}
        before = cpu_seconds(endpointing.pid)
        satellite_before = cpu_seconds(satellites.pid) if satellites is not None else 0.0
        started = time.monotonic()
        answer = await clients.ask(command)
        if "endpointing" in round_modes:
            felt.wall_seconds = time.monotonic() - started
            felt.endpointing_cpu_seconds = cpu_seconds(endpointing.pid) - before
        if "satellite" in round_modes and satellites is not None:
            felt.satellite_cpu_seconds = cpu_seconds(satellites.pid) - satellite_before
        results += [StreamResult(**stream) for stream in answer["results"]]
    felt.endpointing_audio_seconds = _sent_seconds(results, "endpointing")
    felt.satellite_audio_seconds = _sent_seconds(results, "satellite")
    return felt


async def _start_satellites(
    plan: Plan,
    result: Run,
    vendors: dict[str, dict[str, Any]],
    clients: Worker,
    workdir: Path,
    stack: contextlib.AsyncExitStack,
) -> DaemonProcess | None:
    """mosquitto on 127.0.0.1, the emulated satellites (in the clients' process, one per slot and vendor) and a
    daemon driving them with endpointing on and its MQTT sink on that broker; None when the mode is skipped."""
    if not plan.satellite_levels:
        return None
    from tests.support.mosquitto import Mosquitto, have_mosquitto

    if not have_mosquitto():
        result.satellite_skipped = "mosquitto is not installed (apt install mosquitto)"
        _say(f"satellite mode skipped: {result.satellite_skipped}")
        return None
    broker = stack.enter_context(Mosquitto(workdir / "mqtt", for_timing=True))
    count = max(plan.satellite_levels)
    uris: dict[str, str] = await clients.ask({"satellites": count, "broker": [broker.host, broker.port]})
    if "error" in uris:
        raise RuntimeError(f"satellite mode: {uris['error']}")

    async def stop_satellites() -> None:
        await clients.ask({"satellites_stop": True}, timeout=30)

    stack.push_async_callback(stop_satellites)
    languages = {case.vendor: case.language for case in cases_for(plan.vendors)}
    devices = [{"uri": uri, "name": name, "language": languages[name.rsplit("-", 1)[1]]} for name, uri in uris.items()]
    config = daemon_config(free_port(), vendors, 64, endpointing=True)
    config["mqtt"] = {
        "host": broker.host, "port": broker.port, "node_id": satellite.NODE, "discovery": False, "partials": False,
        "spool_dir": str(workdir / "mqtt-spool"),
    }  # fmt: skip
    config["satellites"] = {"devices": devices, "retry_min_delay": 0.2, "retry_max_delay": 1.0}
    daemon = await start_daemon(config, workdir, "daemon-satellites")
    stack.push_async_callback(daemon.stop)
    connected = await clients.ask({"satellites_connected": 20.0}, timeout=40)
    if connected != "connected":
        raise RuntimeError(f"satellite mode: {connected}\n{daemon.log_tail()}")
    return daemon


def _sent_seconds(results: list[StreamResult], path: str) -> float:
    """Audio seconds the clients of ``path`` sent (an early answer stops the upload)."""
    return sum(result.sent_seconds or 0.0 for result in results if result.path == path)


async def measure_floor(plan: Plan, level: LevelRun, floor: FloorReceiver, clients: Worker) -> None:
    """The level's chunks, at its pace and concurrency, sent to a process that only receives them (floor.py)."""
    command = {
        "floor": floor.port, "level": level.level, "seconds": plan.floor_seconds, "pace": plan.pace,
        "piece": level.piece_bytes,
    }  # fmt: skip
    before = await floor.cpu_seconds()
    answer = await clients.ask(command)
    level.floor_cpu_seconds = await floor.cpu_seconds() - before
    level.floor_audio_seconds = answer["audio_seconds"]


async def measure_idle(plan: Plan, daemon: DaemonProcess) -> dict[str, Any]:
    """Right after start: RSS, CPU while nothing happens, and describe round trips."""
    cpu_before = cpu_seconds(daemon.pid)
    await asyncio.sleep(plan.idle_seconds)
    cpu = cpu_seconds(daemon.pid) - cpu_before
    rss = memory(daemon.pid).get("VmRSS", 0)
    describes = [await describe_round_trip(daemon.port) for _ in range(plan.describes)]
    return {
        "ready_seconds": daemon.ready_seconds,
        "listening_seconds": daemon.listening_seconds,
        "rss_bytes": rss,
        "cpu_per_second": cpu / plan.idle_seconds,
        "describe_seconds": describes,
    }


def _peak_rss(result: Run) -> int:
    sampled = [rss for level in result.levels for rss in level.rss_samples]
    return max(sampled, default=0)


def _log_errors(daemon: DaemonProcess) -> list[str]:
    """Warnings and errors the daemon logged (a clean run has none)."""
    found = []
    with contextlib.suppress(OSError):
        for line in daemon.log_path.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                found.append(line)
    return found[:50]


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="full", help="full (default, ~9 min), quick (~4 min), tiny"
    )
    parser.add_argument("--quick", dest="preset", action="store_const", const="quick", help="same as --preset quick")
    parser.add_argument("--tiny", dest="preset", action="store_const", const="tiny", help="same as --preset tiny")
    parser.add_argument("--levels", help="concurrency levels, e.g. 1,10,50,100,150")
    parser.add_argument("--vendors", help=f"comma-separated subset of {','.join(c.vendor for c in CASES)}")
    parser.add_argument("--samples", type=int, help="streams per path and level (level 1: --samples-single)")
    parser.add_argument("--samples-single", type=int, help="streams per path at level 1")
    parser.add_argument("--pace", type=float, help="1 = real time (default)")
    parser.add_argument(
        "--piece-bytes", type=int, help="bytes per audio-chunk (default 320: the 10 ms Home Assistant's pipeline sends)"
    )
    parser.add_argument(
        "--other-piece-bytes",
        help="more chunk sizes measured at levels 1 and 50 for CPU and added latency (default 1024; '' for none)",
    )
    parser.add_argument(
        "--felt-levels", help="levels of the felt-latency section, its modes side by side (default 1,50; '' skips)"
    )
    parser.add_argument(
        "--satellite-levels",
        help="satellites commanding at once in the satellite mode (default 1,5; '' skips; needs mosquitto)",
    )
    parser.add_argument(
        "--floor-seconds", type=float, help="seconds per level of the wake-up floor's measurement (0: skip it)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon during each level (profile.md)")
    parser.add_argument("--keep", type=Path, help="keep the daemon's configs and logs in this directory")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where RESULTS.md, results.json, *.png go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = PRESETS[args.preset]
    changes: dict[str, Any] = {}
    if args.levels:
        changes["levels"] = tuple(int(level) for level in args.levels.split(","))
    if args.other_piece_bytes is not None:
        changes["other_piece_bytes"] = _numbers(args.other_piece_bytes)
    if args.felt_levels is not None:
        changes["felt_levels"] = _numbers(args.felt_levels)
    if args.satellite_levels is not None:
        changes["satellite_levels"] = _numbers(args.satellite_levels)
    if args.vendors:
        changes["vendors"] = tuple(v.strip() for v in args.vendors.split(",") if v.strip())
    for name in ("samples", "samples_single", "pace", "piece_bytes", "floor_seconds"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.profile:
        changes["profile"] = True
    if args.keep:
        changes["keep"] = args.keep
    plan = _replace(plan, **changes)
    started = time.monotonic()
    result = asyncio.run(run(plan))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = report.write(result, args.out, time.monotonic() - started)
    _say(f"wrote {args.out / 'RESULTS.md'} in {time.monotonic() - started:.0f} s")
    print(json.dumps(summary["budgets"], indent=1, ensure_ascii=False))
    return 0 if summary["clean"] else 1


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _replace(plan: Plan, **changes: Any) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)
