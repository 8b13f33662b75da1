"""Figures from a run: statistics, the budget verdicts, RESULTS.md, results.json and the plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .load import StreamResult
    from .plan import FeltRun, LevelRun, Run

MB = 1024 * 1024
QUANTILES = (50, 95, 99)
# Everything after this line in RESULTS.md is hand-written and kept when the benchmark rewrites the file.
NOTES_MARKER = "<!-- Hand-written notes below this line are kept when the benchmark rewrites this file. -->"

# docs/architecture.md#performance-budgets.
BUDGET_ADDED_P50_1 = 2.0
BUDGET_ADDED_P99_1 = 10.0
BUDGET_ADDED_P99_50 = 25.0
# CPU per real-time stream: at most this many times the wake-up floor at 1 and 50 streams (10 ms and 32 ms
# chunks), and at most BUDGET_CPU_PCT_PER_STREAM % of a core at 100 streams.
BUDGET_CPU_FLOOR_FACTOR = 3.0
BUDGET_CPU_PCT_PER_STREAM = 0.5
# What users feel (last voiced frame → transcript): endpointing ≤ this × Home Assistant-style VAD at 1 stream,
# at most BUDGET_FELT_VENDOR_MS after the vendor's own final, and its p95 at 50 streams at most
# BUDGET_FELT_SPREAD_MS above its p95 at 1 stream.
BUDGET_FELT_RATIO = 0.5
BUDGET_FELT_VENDOR_MS = 50.0
BUDGET_FELT_SPREAD_MS = 100.0
# A satellite's transcript on MQTT at most this much later than mode (a)'s answer, p50 at 1 stream.
BUDGET_FELT_SATELLITE_MS = 50.0
# The felt-latency modes, in the order shown.
FELT_MODES = {
    "endpointing": "(a) endpointing on, client stops uploading at the transcript",
    "ha-vad": "(b) endpointing off, audio-stop where Home Assistant's VAD would send it (pymicro-vad, 0.7 s)",
    "vendor": "(c) direct vendor client: the vendor's own final",
    "satellite": "(d) an emulated wyoming-satellite driven by a daemon with endpointing on (its `satellites:`), "
    "the same audio in the same pieces at the same pace as (a): the transcript's arrival on MQTT (mosquitto)",
}
BUDGET_IDLE_RSS_MB = 45.0
BUDGET_READY_S = 1.0
BUDGET_DESCRIBE_MS = 5.0


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), or None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _latencies(results: Iterable[StreamResult], path: str, vendor: str | None = None) -> list[float]:
    return [
        r.latency
        for r in results
        if r.path == path and r.ok and r.latency is not None and (vendor is None or r.vendor == vendor)
    ]


def _first_partials(results: Iterable[StreamResult], path: str) -> list[float]:
    return [r.first_partial for r in results if r.path == path and r.ok and r.first_partial is not None]


def latency_figures(results: Sequence[StreamResult], vendor: str | None = None) -> dict[str, Any]:
    """Daemon and direct percentiles (ms) and the added latency: daemon minus direct, quantile by quantile."""
    daemon = _latencies(results, "daemon", vendor)
    direct = _latencies(results, "direct", vendor)
    figures: dict[str, Any] = {"n_daemon": len(daemon), "n_direct": len(direct)}
    for q in QUANTILES:
        d, b = ms(pct(daemon, q)), ms(pct(direct, q))
        figures[f"daemon_p{q}"] = d
        figures[f"direct_p{q}"] = b
        figures[f"added_p{q}"] = None if d is None or b is None else d - b
    # The same difference taken per pair (the daemon stream and its direct twin: same client slot, same
    # utterance, half an utterance apart): noisier, since both sides' jitter adds up.
    twins = {(r.slot, r.iteration): r.latency for r in results if r.path == "direct" and r.ok and r.latency}
    paired = [
        r.latency - twins[(r.slot, r.iteration)]
        for r in results
        if r.path == "daemon"
        and r.ok
        and r.latency is not None
        and (r.slot, r.iteration) in twins
        and (vendor is None or r.vendor == vendor)
    ]
    for q in (50, 99):
        figures[f"paired_p{q}"] = ms(pct(paired, q))
    return figures


def level_figures(level: LevelRun) -> dict[str, Any]:
    results = level.results
    figures = latency_figures(results)
    daemon_partials, direct_partials = _first_partials(results, "daemon"), _first_partials(results, "direct")
    for q in (50, 95):
        d, b = ms(pct(daemon_partials, q)), ms(pct(direct_partials, q))
        figures[f"partial_daemon_p{q}"] = d
        figures[f"partial_direct_p{q}"] = b
        figures[f"partial_added_p{q}"] = None if d is None or b is None else d - b
    audio = sum(r.audio_seconds for r in results if r.path == "daemon")
    figures["audio_seconds"] = audio
    figures["cpu_s_per_audio_s"] = level.daemon_cpu_seconds / audio if audio else None
    figures["cpu_pct_per_stream"] = 100 * level.daemon_cpu_seconds / audio if audio else None
    floor_audio = level.floor_audio_seconds
    figures["floor_pct_per_stream"] = (
        100 * level.floor_cpu_seconds / floor_audio if level.floor_cpu_seconds is not None and floor_audio else None
    )
    figures["daemon_cpu_pct"] = 100 * level.daemon_cpu_seconds / level.wall_seconds
    figures["clients_cpu_pct"] = 100 * level.clients_cpu_seconds / level.wall_seconds
    figures["emulators_cpu_pct"] = 100 * level.emulators_cpu_seconds / level.wall_seconds
    figures["other_cpu_pct"] = 100 * level.other_cpu_seconds / level.wall_seconds
    figures["rss_peak_mb"] = max(level.rss_samples, default=0) / MB
    figures["describe_p50"] = ms(pct(level.describe_seconds, 50))
    figures["describe_p99"] = ms(pct(level.describe_seconds, 99))
    figures["describe_n"] = len(level.describe_seconds)
    figures["clients_lag_p99"] = ms(pct(level.clients_loop_lag, 99))
    figures["emulators_lag_p99"] = ms(pct(level.emulators_loop_lag, 99))
    figures["errors_daemon"] = sum(1 for r in results if r.path == "daemon" and not r.ok)
    figures["errors_direct"] = sum(1 for r in results if r.path == "direct" and not r.ok)
    figures["wall_seconds"] = level.wall_seconds
    figures["piece_bytes"] = level.piece_bytes
    floor = figures["floor_pct_per_stream"]
    cpu = figures["cpu_pct_per_stream"]
    figures["cpu_floor_ratio"] = cpu / floor if cpu is not None and floor else None
    figures["vendors"] = {vendor: latency_figures(results, vendor) for vendor in sorted({r.vendor for r in results})}
    return figures


def level_line(level: LevelRun) -> str:
    """One line of progress on stderr."""
    f = level_figures(level)
    return (
        f"added p50/p99 {_f(f['added_p50'])}/{_f(f['added_p99'])} ms "
        f"(daemon p99 {_f(f['daemon_p99'])}, direct p99 {_f(f['direct_p99'])}); "
        f"CPU {_f(f['cpu_pct_per_stream'], 2)} % of a core per stream (floor {_f(f['floor_pct_per_stream'], 2)}); "
        f"errors {f['errors_daemon']}+{f['errors_direct']}"
    )


def felt_figures(felt: FeltRun) -> dict[str, Any]:
    """Per mode: last voiced frame → answer (ms) p50/p95, answers before the end of audio, failures."""
    figures: dict[str, Any] = {"level": felt.level, "iterations": felt.iterations}
    for mode in FELT_MODES:
        streams = [r for r in felt.results if r.path == mode]
        latencies = [r.latency for r in streams if r.ok and r.latency is not None]
        links = [r.link_latency for r in streams if r.ok and r.link_latency is not None]
        figures[mode] = {
            "n": len(latencies),
            "streams": len(streams),
            "link_p50": ms(pct(links, 50)),
            "p50": ms(pct(latencies, 50)),
            "p95": ms(pct(latencies, 95)),
            "early": sum(1 for r in streams if r.early),
            "failed": sum(1 for r in streams if not r.ok or r.latency is None),
            "vendors_p50": {
                vendor: ms(pct([r.latency for r in streams if r.vendor == vendor and r.ok and r.latency], 50))
                for vendor in sorted({r.vendor for r in felt.results})
            },
        }
    audio = felt.endpointing_audio_seconds
    figures["endpointing_cpu_pct_per_stream"] = 100 * felt.endpointing_cpu_seconds / audio if audio else None
    audio = felt.satellite_audio_seconds
    figures["satellite_cpu_pct_per_stream"] = 100 * felt.satellite_cpu_seconds / audio if audio else None
    figures["wall_seconds"] = felt.wall_seconds
    return figures


def felt_line(felt: FeltRun) -> str:
    """One line of progress on stderr."""
    f = felt_figures(felt)
    return "; ".join(
        f"{mode} p50/p95 {_f(f[mode]['p50'])}/{_f(f[mode]['p95'])} ms ({f[mode]['failed']} failed)"
        for mode in FELT_MODES
        if f[mode]["streams"]
    )


def _chunk_ms(piece_bytes: int) -> str:
    return f"{piece_bytes / 32:g} ms"


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _by_level(figures: list[dict[str, Any]], level: int) -> dict[str, Any] | None:
    return next((f for f in figures if f["level"] == level), None)


def budgets(
    run: Run,
    figures: list[dict[str, Any]],
    other_pieces: list[dict[str, Any]] | None = None,
    felt: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Each budget of docs/architecture.md with the measured figure and pass/miss (None: not measured in this run)."""
    rows: list[dict[str, Any]] = []
    cpu_levels = figures + (other_pieces or [])

    def row(name: str, limit: str, value: float | None, shown: str, ok: bool | None, where: str) -> None:
        rows.append({"budget": name, "limit": limit, "value": value, "shown": shown, "pass": ok, "where": where})

    one, fifty = _by_level(figures, 1), _by_level(figures, 50)
    for key, limit, label in (("added_p50", BUDGET_ADDED_P50_1, "p50"), ("added_p99", BUDGET_ADDED_P99_1, "p99")):
        value = one[key] if one else None
        row(f"added latency {label}, 1 stream", f"≤ {limit:g} ms", value, f"{_f(value)} ms", _le(value, limit), "1")
    value = fifty["added_p99"] if fifty else None
    row("added latency p99, 50 streams", f"≤ {BUDGET_ADDED_P99_50:g} ms", value, f"{_f(value)} ms",
        _le(value, BUDGET_ADDED_P99_50), "50")  # fmt: skip
    # CPU per stream against the wake-up floor of the same run, at 1 and 50 streams, for every chunk size
    # measured; in absolute terms at 100 streams.
    for f in sorted(cpu_levels, key=lambda f: (f["piece_bytes"], f["level"])):
        if f["level"] not in (1, 50) or f["cpu_pct_per_stream"] is None:
            continue
        cpu: float = f["cpu_pct_per_stream"]
        floor_pct: float | None = f["floor_pct_per_stream"]
        cpu_limit = BUDGET_CPU_FLOOR_FACTOR * floor_pct if floor_pct is not None else None
        streams = "1 stream" if f["level"] == 1 else f"{f['level']} streams"
        shown_limit = f"≤ {BUDGET_CPU_FLOOR_FACTOR:g} × floor" + (
            f" ({cpu_limit:.2f} %)" if cpu_limit is not None else ""
        )
        ratio = f" ({cpu / floor_pct:.1f} × floor)" if floor_pct else ""
        row(f"CPU per real-time stream, {streams}, {_chunk_ms(f['piece_bytes'])} chunks", shown_limit, cpu,
            f"{cpu:.2f} %{ratio}", _le(cpu, cpu_limit) if cpu_limit is not None else None, str(f["level"]))  # fmt: skip
    hundred = _by_level(figures, 100)
    value = hundred["cpu_pct_per_stream"] if hundred else None
    row("CPU per real-time stream, 100 streams", f"≤ {BUDGET_CPU_PCT_PER_STREAM:g} % of a core", value,
        f"{_f(value, 2)} %", _le(value, BUDGET_CPU_PCT_PER_STREAM), "100")  # fmt: skip
    idle_rss = max([run.idle.get("rss_bytes", 0)] + [s["rss_bytes"] for s in run.startups]) / MB
    row("idle RSS (worst start)", f"≤ {BUDGET_IDLE_RSS_MB:g} MB", idle_rss, f"{idle_rss:.1f} MB",
        _le(idle_rss, BUDGET_IDLE_RSS_MB), "idle")  # fmt: skip
    readies = [s["ready_seconds"] for s in run.startups] + [run.idle.get("ready_seconds", 0.0)]
    ready = max(readies)
    row("start → ready (worst start)", f"≤ {BUDGET_READY_S:g} s", ready, f"{ready:.3f} s (median "
        f"{statistics.median(readies):.3f})", _le(ready, BUDGET_READY_S), "start")  # fmt: skip
    describe = ms(pct(run.idle.get("describe_seconds", []), 99))
    row("describe round trip p99, idle", f"≤ {BUDGET_DESCRIBE_MS:g} ms", describe, f"{_f(describe, 2)} ms",
        _le(describe, BUDGET_DESCRIBE_MS), "idle")  # fmt: skip
    if fifty:
        value = fifty["describe_p99"]
        row("describe round trip p99, 50 streams", f"≤ {BUDGET_DESCRIBE_MS:g} ms", value,
            f"{_f(value, 2)} ms (of {fifty['describe_n']})", _le(value, BUDGET_DESCRIBE_MS), "50")  # fmt: skip
    _felt_budgets(felt or [], row)
    return rows


def _felt_budgets(felt: list[dict[str, Any]], row: Any) -> None:
    """What users feel: endpointing against Home Assistant's VAD and the vendor's own final, and under load."""
    one = next((f for f in felt if f["level"] == 1), None)
    loaded = max((f for f in felt if f["level"] > 1), key=lambda f: f["level"], default=None)
    a, b, c, d = (one[mode]["p50"] if one else None for mode in ("endpointing", "ha-vad", "vendor", "satellite"))
    ratio = a / b if a is not None and b else None
    row("felt latency p50, 1 stream: endpointing ÷ Home Assistant's VAD", f"≤ {BUDGET_FELT_RATIO:g}", ratio,
        f"{_f(a)} ÷ {_f(b)} ms = {_f(ratio, 2)}", _le(ratio, BUDGET_FELT_RATIO), "felt 1")  # fmt: skip
    late = a - c if a is not None and c is not None else None
    row("felt latency p50, 1 stream: endpointing − vendor's own final", f"≤ {BUDGET_FELT_VENDOR_MS:g} ms", late,
        f"{_f(a)} − {_f(c)} = {_f(late)} ms", _le(late, BUDGET_FELT_VENDOR_MS), "felt 1")  # fmt: skip
    low = one["endpointing"]["p95"] if one else None
    high = loaded["endpointing"]["p95"] if loaded else None
    spread = high - low if high is not None and low is not None else None
    level = loaded["level"] if loaded else 50
    row(f"felt latency p95, endpointing: {level} streams − 1 stream", f"≤ {BUDGET_FELT_SPREAD_MS:g} ms", spread,
        f"{_f(high)} − {_f(low)} = {_f(spread)} ms", _le(spread, BUDGET_FELT_SPREAD_MS), f"felt {level}")  # fmt: skip
    behind = d - a if d is not None and a is not None else None
    row("felt latency p50, satellite → MQTT − Wyoming request", f"≤ {BUDGET_FELT_SATELLITE_MS:g} ms", behind,
        f"{_f(d)} − {_f(a)} = {_f(behind)} ms", _le(behind, BUDGET_FELT_SATELLITE_MS), "felt 1")  # fmt: skip


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def highest_level_under(figures: list[dict[str, Any]], limit_ms: float) -> int | None:
    """The highest level tested that, with every lower level, keeps p99 added latency under ``limit_ms``."""
    best = None
    for f in sorted(figures, key=lambda f: f["level"]):
        value = f["added_p99"]
        if value is None or value >= limit_ms or f["errors_daemon"]:
            break
        best = f["level"]
    return best


# ---------------------------------------------------------------------------------------------------------
# Output


def write(run: Run, out: Path, seconds: float) -> dict[str, Any]:
    figures = []
    for level in run.levels:
        f = level_figures(level)
        f["level"] = level.level
        f["iterations"] = level.iterations
        figures.append(f)
    other_pieces = []
    for level in run.other_pieces:
        f = level_figures(level)
        f["level"] = level.level
        f["iterations"] = level.iterations
        other_pieces.append(f)
    felt = [felt_figures(level) for level in run.felt]
    verdicts = budgets(run, figures, other_pieces, felt)
    best = highest_level_under(figures, BUDGET_ADDED_P99_50)
    warm = latency_figures(run.warmup)
    clean = (
        all(f["errors_daemon"] == 0 and f["errors_direct"] == 0 for f in figures + other_pieces)
        and all(r.ok for r in run.warmup)
        and all(f[mode]["failed"] == 0 for f in felt for mode in FELT_MODES)
    )
    summary: dict[str, Any] = {
        "environment": run.environment,
        "plan": {k: v for k, v in vars(run.plan).items()},
        "seconds": seconds,
        "clean": clean,
        "budgets": verdicts,
        "highest_level_p99_added_under_25ms": best,
        "startups": run.startups,
        "idle": run.idle,
        "after": run.after,
        "warmup": {"figures": warm, "streams": [r.to_json() for r in run.warmup]},
        "levels": [
            {
                "figures": f,
                "daemon_cpu_seconds": level.daemon_cpu_seconds,
                "clients_cpu_seconds": level.clients_cpu_seconds,
                "emulators_cpu_seconds": level.emulators_cpu_seconds,
                "other_cpu_seconds": level.other_cpu_seconds,
                "floor_cpu_seconds": level.floor_cpu_seconds,
                "floor_audio_seconds": level.floor_audio_seconds,
                "rss_samples": level.rss_samples,
                "describe_seconds": level.describe_seconds,
                "loop_lag_p50_p99_max_ms": {
                    name: [ms(pct(lag, 50)), ms(pct(lag, 99)), ms(max(lag, default=0.0))]
                    for name, lag in (("clients", level.clients_loop_lag), ("emulators", level.emulators_loop_lag))
                },
                "streams": [r.to_json() for r in level.results],
            }
            for f, level in zip(figures, run.levels, strict=True)
        ],
        "other_pieces": [
            {
                "figures": f,
                "floor_cpu_seconds": level.floor_cpu_seconds,
                "floor_audio_seconds": level.floor_audio_seconds,
                "streams": [r.to_json() for r in level.results],
            }
            for f, level in zip(other_pieces, run.other_pieces, strict=True)
        ],
        "felt": [
            {"figures": f, "streams": [r.to_json() for r in level.results]}
            for f, level in zip(felt, run.felt, strict=True)
        ],
        "felt_log_errors": run.felt_log_errors,
        "satellite_skipped": run.satellite_skipped,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str) + "\n")
    plots = _plots(figures, out)
    profiles = _profiles(run, out)
    _write_markdown(run, figures, verdicts, best, warm, plots, profiles, out, seconds, other_pieces, felt)
    return summary


def _write_markdown(
    run: Run,
    figures: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    best: int | None,
    warm: dict[str, Any],
    plots: list[str],
    profiles: list[str],
    out: Path,
    seconds: float,
    other_pieces: list[dict[str, Any]] | None = None,
    felt: list[dict[str, Any]] | None = None,
) -> None:
    env, plan = run.environment, run.plan
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench --preset {plan.name}` in {seconds:.0f} s on {env['date']}: {env['cpu']}, "
        f"{env['cores']} cores, Linux {env['kernel']}, Python {env['python']}, asr-daemon {env['asr_daemon']} "
        f"(commit {env['commit'] or '?'}, plus the working tree). Vendors: {', '.join(plan.vendors)}; audio "
        f"pace {plan.pace:g}× real time in {plan.piece_bytes}-byte chunks ({_chunk_ms(plan.piece_bytes)}; "
        f"also {', '.join(str(p) for p in plan.other_piece_bytes) or 'no other size'} for CPU).",
        "",
        "## Budgets ([docs/architecture.md](../docs/architecture.md#performance-budgets))",
        "",
        "| budget | limit | measured | result |",
        "|---|---|---|---|",
    ]
    for v in verdicts:
        verdict = {True: "**pass**", False: "**MISS**", None: "not measured"}[v["pass"]]
        lines.append(f"| {v['budget']} | {v['limit']} | {v['shown']} | {verdict} |")
    shown_best = f"**{best}**" if best is not None else "none of the levels tested"
    floors = [f for f in figures if f["floor_pct_per_stream"] is not None]
    if floors:
        shown = ", ".join(f"{_f(f['floor_pct_per_stream'], 2)} % at {f['level']}" for f in floors)
        lines += [
            "",
            f"The wake-up floor on this machine: a Python process ({env.get('floor_event_loop')}) that is sent the "
            f"same chunks at the same pace and only receives them costs, per real-time stream, {shown} (Resources).",
        ]
    lines += _felt_section(felt or [], len(run.felt_log_errors), run.satellite_skipped)
    lines += _other_pieces_section(figures, other_pieces or [])
    lines += [
        "",
        f"Highest concurrency tested that keeps p99 added latency under 25 ms: {shown_best} "
        f"(levels tested: {', '.join(str(f['level']) for f in figures)}).",
        "",
        "## Latency after the end of audio (ms)",
        "",
        "Daemon: Wyoming `audio-stop` → `transcript`. Direct: the vendor's end-of-stream message → the codec's "
        "completion, same emulator, same run. Added = daemon − direct, quantile by quantile; paired = the "
        "per-utterance difference against its direct twin (noisier: both sides' jitter adds up).",
        "",
        "| clients | streams | daemon p50 / p95 / p99 | direct p50 / p95 / p99 | **added p50 / p95 / p99** "
        "| paired p50 / p99 | failed (daemon + direct) |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['level']} | {f['n_daemon']} + {f['n_direct']} | {_trio(f, 'daemon')} | {_trio(f, 'direct')} "
            f"| **{_trio(f, 'added')}** | {_f(f['paired_p50'])} / {_f(f['paired_p99'])} "
            f"| {f['errors_daemon']} + {f['errors_direct']} |"
        )
    lines += [
        "",
        f"First utterance per vendor after start (warm-up, {warm['n_daemon']} streams, 8× real time, not in the "
        f"table): daemon p50 {_f(warm['daemon_p50'])} ms, direct p50 {_f(warm['direct_p50'])} ms.",
        "",
        "## Time to first partial (ms, from the first audio sent)",
        "",
        "Includes opening the vendor connection (both paths open it when audio starts).",
        "",
        "| clients | daemon p50 / p95 | direct p50 / p95 | added p50 / p95 |",
        "|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['level']} | {_f(f['partial_daemon_p50'])} / {_f(f['partial_daemon_p95'])} "
            f"| {_f(f['partial_direct_p50'])} / {_f(f['partial_direct_p95'])} "
            f"| {_f(f['partial_added_p50'])} / {_f(f['partial_added_p95'])} |"
        )
    lines += [
        "",
        "## Resources",
        "",
        "Daemon CPU from /proc (user + system, all threads) over the level, divided by the seconds of audio "
        "streamed through it. The helper processes (the emulators; all clients) are shown so that a saturated "
        "load generator would be visible: its event-loop lag delays both paths' timings. The last column is "
        "what other processes used meanwhile (100 % = one core): anything but ~0 makes the run noisy. The floor is "
        "the same figure for a process that is only woken for the level's chunks (`bench/floor.py`): what being "
        "woken per chunk costs before any work.",
        "",
        "| clients | daemon CPU, % of a core | **CPU per real-time stream, % of a core** | floor, % per stream "
        "| CPU s per audio s "
        "| peak RSS MB | describe p50 / p99 ms under load | emulators CPU % / lag p99 ms "
        "| clients CPU % / lag p99 ms | rest of the machine CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['level']} | {_f(f['daemon_cpu_pct'])} | **{_f(f['cpu_pct_per_stream'], 2)}** "
            f"| {_f(f['floor_pct_per_stream'], 2)} | {_f(f['cpu_s_per_audio_s'], 4)} | {f['rss_peak_mb']:.1f} "
            f"| {_f(f['describe_p50'], 2)} / {_f(f['describe_p99'], 2)} "
            f"| {_f(f['emulators_cpu_pct'])} / {_f(f['emulators_lag_p99'])} "
            f"| {_f(f['clients_cpu_pct'])} / {_f(f['clients_lag_p99'])} | {_f(f['other_cpu_pct'])} |"
        )
    idle = run.idle
    readies = [s["ready_seconds"] for s in run.startups]
    listens = [s["listening_seconds"] for s in run.startups]
    idle_describe = idle.get("describe_seconds", [])
    lines += [
        "",
        "| at rest | figure |",
        "|---|---|",
        f"| start → listening (median / max of {len(listens)}) | "
        f"{_f(_median(listens), 3)} / {_f(max(listens, default=None), 3)} s |",
        f"| start → ready: listening and describe answered (median / max) | "
        f"{_f(_median(readies), 3)} / {_f(max(readies, default=None), 3)} s |",
        "| RSS at idle after start (each start) | "
        + ", ".join(f"{s['rss_bytes'] / MB:.1f}" for s in run.startups)
        + f"; load daemon {idle.get('rss_bytes', 0) / MB:.1f} MB |",
        f"| RSS at idle after the load | {run.after.get('rss_bytes', 0) / MB:.1f} MB |",
        f"| peak RSS (sampled every 100 ms) | {run.after.get('peak_rss_bytes', 0) / MB:.1f} MB |",
        f"| CPU at idle | {100 * idle.get('cpu_per_second', 0):.2f} % of a core |",
        f"| describe round trip at idle, p50 / p99 of {len(idle_describe)} (connect + describe + info) | "
        f"{_f(ms(pct(idle_describe, 50)), 2)} / {_f(ms(pct(idle_describe, 99)), 2)} ms |",
        f"| SIGTERM → exit (exit code) | {_f(run.after.get('stop_seconds'), 3)} s ({run.after.get('exit_code')}) |",
        f"| warnings/errors in the daemon's log | {len(run.after.get('log_errors', []))} |",
        "",
        "## Added latency per vendor (ms, p50 / p99)",
        "",
    ]
    vendors = sorted({v for f in figures for v in f["vendors"]})
    lines += ["| clients | " + " | ".join(vendors) + " |", "|---" * (len(vendors) + 1) + "|"]
    for f in figures:
        cells = []
        for vendor in vendors:
            v = f["vendors"].get(vendor)
            cells.append("–" if v is None else f"{_f(v['added_p50'])} / {_f(v['added_p99'])} (n={v['n_daemon']})")
        lines.append(f"| {f['level']} | " + " | ".join(cells) + " |")
    if plots:
        lines += ["", "## Plots", "", *(f"![{name}]({name})" for name in plots)]
    if profiles:
        lines += ["", "## Profiles (py-spy, own time in the daemon)", "", *profiles]
    lines += [
        "",
        "## Method",
        "",
        "- Four processes: the daemon (`python -m asr_daemon run`, log level info, all five vendors "
        "configured, 127.0.0.1 only); the emulators; every client (both paths, one event loop); and the "
        "measuring process (start-up, describe round trips, /proc).",
        "- Each level runs N Wyoming clients (like Home Assistant: `transcribe`, `audio-start`, audio chunks at "
        "real-time pace, `audio-stop`, read to `transcript-stop`) and, at the same time, N direct clients "
        "that send the same speech in the same pieces at the same pace straight to the same emulator with the "
        "vendor's codec over `VendorStream` (no session, no Wyoming). Clients start spread over one utterance; "
        "each runs its utterances back to back, rotating through the vendors (one espeak-ng command per "
        "vendor, in its language, ~2 s with silence around it).",
        "- Emulators run with their defaults (no fault, no slow final), the same instance for both paths.",
        "- The load daemon runs with `endpointing` off (its figures are timed from `audio-stop`); start-up and idle "
        "figures are for the daemon's defaults. Audio goes in the chunk size above; levels 1 and 50 run again with "
        "each other chunk size, each with its own wake-up floor (CPU is judged against it).",
        "- What users feel: a second daemon with `endpointing` on serves mode (a); the load daemon serves (b); (c) "
        "goes straight to the emulators. The last voiced frame is the last 10 ms frame whose RMS reaches "
        "300 (about −40 dBFS); its time is when the client sent the piece holding it.",
        "- Satellite mode (d), with mosquitto: a third daemon (endpointing on, its MQTT sink on a mosquitto the bench "
        "starts on 127.0.0.1, its spool on this machine's disk) drives emulated satellites (`bench/satellite.py`) in "
        "the clients' process; the transcript's time is its arrival at an MQTT subscriber in that process.",
        "- Percentiles are linear-interpolated; p99 of fewer than 100 streams is close to the maximum.",
        "- Start-up: spawn → the port accepts → a describe is answered, for separate cold starts.",
        "",
        NOTES_MARKER,
    ]
    path = out / "RESULTS.md"
    notes = ""
    if path.exists():
        previous = path.read_text()
        if NOTES_MARKER in previous:
            notes = previous.split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(lines) + (notes if notes else "\n"))


def _felt_section(felt: list[dict[str, Any]], log_errors: int, satellite_skipped: str | None = None) -> list[str]:
    if not felt:
        return []
    lines = [
        "",
        "## What users feel: last voiced frame → transcript (ms)",
        "",
        "From sending the audio piece that holds the command's last voiced 10 ms frame to reading the answer, "
        "the modes side by side in the same run, against the same emulators (their default end-of-speech). At "
        "one client they run at once; at N clients each mode runs alone, one after the other, so that each "
        "sees N streams. The audio is the command followed by seconds of silence. Clients upload at real-time "
        "pace while reading, and stop uploading at the first `transcript`, as Home Assistant 2026.11 does.",
        "",
        *(f"- {text}" for text in FELT_MODES.values()),
        "",
        "| clients | mode | streams | p50 | p95 | answered before the end of audio | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in felt:
        for mode in FELT_MODES:
            m = f[mode]
            if m["streams"]:
                lines.append(
                    f"| {f['level']} | {mode} | {m['n']} | {_f(m['p50'])} | {_f(m['p95'])} | {m['early']} "
                    f"| {m['failed']} |"
                )
    vendors = sorted({vendor for f in felt for vendor in f["endpointing"]["vendors_p50"]})
    lines += ["", "p50 per vendor (ms):", "", "| clients | mode | " + " | ".join(vendors) + " |"]
    lines.append("|---|---|" + "---|" * len(vendors))
    for f in felt:
        for mode in FELT_MODES:
            if f[mode]["streams"]:
                cells = " | ".join(_f(f[mode]["vendors_p50"].get(vendor)) for vendor in vendors)
                lines.append(f"| {f['level']} | {mode} | {cells} |")
    cpu = ", ".join(f"{_f(f['endpointing_cpu_pct_per_stream'], 2)} % at {f['level']}" for f in felt)
    lines += [
        "",
        f"CPU per real-time stream of the endpointing daemon meanwhile (audio sent to it): {cpu}; warnings and "
        f"errors in its log (and the satellite daemon's): {log_errors}.",
    ]
    with_satellites = [f for f in felt if f["satellite"]["streams"]]
    if with_satellites:
        links = ", ".join(f"p50 {_f(f['satellite']['link_p50'])} ms at {f['level']}" for f in with_satellites)
        cpu = ", ".join(f"{_f(f['satellite_cpu_pct_per_stream'], 2)} % at {f['level']}" for f in with_satellites)
        lines += [
            "",
            "Satellite mode: one satellite per client slot and vendor (a satellite's language is fixed), each "
            "command sent as `run-pipeline` (start_stage asr) and audio chunks, the satellite streaming until the "
            "daemon's `transcript` comes back on its connection, as wyoming-satellite does. The transcript on that "
            f"connection: {links} (the rest of (d) is the MQTT sink, the broker and the subscriber). The satellite "
            f"daemon's CPU per real-time stream: {cpu}.",
        ]
    if satellite_skipped:
        lines += ["", f"Satellite mode not run: {satellite_skipped}."]
    return lines


def _other_pieces_section(figures: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[str]:
    if not other:
        return []
    lines = [
        "",
        "## Chunk sizes: CPU against the wake-up floor",
        "",
        "| clients | chunk | CPU per real-time stream | floor | × floor | added latency p50 / p99 ms | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    levels = {f["level"] for f in other}
    shown = [f for f in figures if f["level"] in levels] + other
    for f in sorted(shown, key=lambda f: (f["level"], f["piece_bytes"])):
        lines.append(
            f"| {f['level']} | {f['piece_bytes']} B ({_chunk_ms(f['piece_bytes'])}) "
            f"| {_f(f['cpu_pct_per_stream'], 2)} % | {_f(f['floor_pct_per_stream'], 2)} % "
            f"| {_f(f['cpu_floor_ratio'], 1)} | {_f(f['added_p50'])} / {_f(f['added_p99'])} "
            f"| {f['errors_daemon']} + {f['errors_direct']} |"
        )
    return lines


def _trio(f: dict[str, Any], prefix: str) -> str:
    return " / ".join(_f(f[f"{prefix}_p{q}"]) for q in QUANTILES)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _plots(figures: list[dict[str, Any]], out: Path) -> list[str]:
    """latency.png and resources.png (skipped when matplotlib is not installed: ``pip install -e .[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not figures:
        return []
    levels = [f["level"] for f in figures]

    def series(key: str) -> list[float]:
        return [f[key] if f[key] is not None else float("nan") for f in figures]

    fig, (added, absolute) = plt.subplots(1, 2, figsize=(12, 4.5))
    for q, style in zip(QUANTILES, ("o-", "s-", "^-"), strict=True):
        added.plot(levels, series(f"added_p{q}"), style, label=f"added p{q}")
    added.axhline(BUDGET_ADDED_P99_50, color="red", linestyle="--", linewidth=1, label="p99 budget at 50 (25 ms)")
    added.plot([1], [BUDGET_ADDED_P99_1], "rx", label="p99 budget at 1 (10 ms)")
    added.plot([1], [BUDGET_ADDED_P50_1], "r+", label="p50 budget at 1 (2 ms)")
    added.set_title("Added latency: daemon − direct, audio-stop → transcript")
    absolute.set_title("audio-stop → transcript, both paths")
    for path, color in (("daemon", "tab:blue"), ("direct", "tab:gray")):
        absolute.plot(levels, series(f"{path}_p50"), "o-", color=color, label=f"{path} p50")
        absolute.plot(levels, series(f"{path}_p99"), "^--", color=color, label=f"{path} p99")
    for ax in (added, absolute):
        ax.set_xscale("log")
        ax.set_xticks(levels)
        ax.set_xticklabels([str(level) for level in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("ms")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)

    fig, (cpu, rss) = plt.subplots(1, 2, figsize=(12, 4))
    cpu.plot(levels, series("cpu_pct_per_stream"), "o-", label="daemon CPU per real-time stream")
    cpu.axhline(BUDGET_CPU_PCT_PER_STREAM, color="red", linestyle="--", linewidth=1, label="budget 0.5 %")
    cpu.set_ylabel("% of one core per stream")
    cpu.set_title("CPU per stream")
    rss.plot(levels, series("rss_peak_mb"), "o-", label="daemon peak RSS")
    rss.axhline(BUDGET_IDLE_RSS_MB, color="red", linestyle="--", linewidth=1, label="idle budget 45 MB")
    rss.set_ylabel("MB")
    rss.set_title("Memory")
    for ax in (cpu, rss):
        ax.set_xscale("log")
        ax.set_xticks(levels)
        ax.set_xticklabels([str(level) for level in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "resources.png", dpi=100)
    plt.close(fig)
    return ["latency.png", "resources.png"]


# Leaf frames of a thread that waits (py-spy's idle detection misses some): not CPU.
_IDLE_LEAVES = ("EpollSelector.select", "_worker (concurrent/futures/thread.py", "wait (threading.py")


def _profiles(run: Run, out: Path) -> list[str]:
    """Top frames of each profiled level (py-spy's collapsed stacks, waiting threads left out)."""
    lines: list[str] = []
    for level in run.levels:
        if not level.profile:
            continue
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in level.profile.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if frames[-1].startswith(_IDLE_LEAVES):
                continue
            samples = int(count)
            total += samples
            own[frames[-1]] = own.get(frames[-1], 0) + samples
            for function in {frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0] + ")"
                             for frame in frames if "asr_daemon/" in frame}:  # fmt: skip
                inclusive[function] = inclusive.get(function, 0) + samples
        (out / f"profile-{level.level}.txt").write_text(level.profile)
        lines += [f"Level {level.level}: {total} busy samples (raw stacks in profile-{level.level}.txt).", ""]
        lines += ["| own % | frame | | incl. % | asr_daemon function |", "|---|---|---|---|---|"]
        top_own = sorted(own.items(), key=lambda item: -item[1])[:20]
        top_incl = sorted(inclusive.items(), key=lambda item: -item[1])[:20]
        for index in range(max(len(top_own), len(top_incl))):
            a = top_own[index] if index < len(top_own) else ("", 0)
            b = top_incl[index] if index < len(top_incl) else ("", 0)
            lines.append(
                f"| {100 * a[1] / max(total, 1):.1f} | `{a[0]}` | | {100 * b[1] / max(total, 1):.1f} | `{b[0]}` |"
            )
        lines.append("")
    return lines
