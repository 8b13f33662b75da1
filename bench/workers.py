"""The benchmark's two helper processes, so that neither the daemon nor the measuring process carries the load.

* the emulators: every vendor emulator, serving both paths;
* the clients: the Wyoming clients (daemon path) and the direct vendor clients, in one process so both
  paths see the same event loop and are timed the same way.

The orchestrator (``run.py``) talks to each over a ``multiprocessing`` pipe: plain dicts and lists.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import statistics
from multiprocessing.connection import Connection
from typing import Any

from asr_daemon.vendors.transport import WebSocketAdapter

from .daemon_process import own_cpu_seconds
from .load import (
    LoopLag,
    StreamResult,
    chunk_stream,
    daemon_stream,
    direct_stream,
    encode_utterance,
    felt_daemon_stream,
    felt_direct_stream,
    run_slot,
)
from .satellite import EmulatedSatellite, MqttWatch, satellite_name, wait_connected
from .scenario import (
    BYTES_PER_SECOND,
    VendorCase,
    cases_for,
    felt_speech_for,
    home_assistant_vad_end,
    running_emulators,
    speech_for,
    vendor_adapter,
    voiced_end,
)


async def _receive(conn: Connection) -> Any:
    """The next message from the orchestrator (None once it is gone)."""
    try:
        return await asyncio.to_thread(conn.recv)
    except (EOFError, OSError):
        return None


def _freeze() -> None:
    """What set-up built out of the collector's sight, as the daemon does: a full collection during a level
    would otherwise pause every client (or emulator) at once for tens of ms and blur both paths' timings."""
    gc.collect()
    gc.freeze()


def emulators_main(conn: Connection, vendors: tuple[str, ...]) -> None:
    asyncio.run(_emulators(conn, vendors))


async def _emulators(conn: Connection, vendors: tuple[str, ...]) -> None:
    lag = LoopLag()
    lag.start()
    async with running_emulators(cases_for(vendors)) as emulators:
        _freeze()
        conn.send({vendor: emulators.vendor_settings(vendor) for vendor in vendors})
        while True:
            message = await _receive(conn)
            if message is None or message == "stop":
                break
            if message == "lag":
                conn.send(lag.samples)
                lag.samples = []
    await lag.stop()


def clients_main(conn: Connection, port: int, vendors: dict[str, dict[str, Any]]) -> None:
    asyncio.run(_clients(conn, port, vendors))


class Satellites:
    """The felt section's emulated satellites (``satellite.py``) and the MQTT watcher, once started."""

    def __init__(self) -> None:
        self.by_name: dict[str, EmulatedSatellite] = {}
        self.watch: MqttWatch | None = None

    async def start(self, names: list[str], broker: tuple[str, int]) -> dict[str, str]:
        for name in names:
            satellite = EmulatedSatellite(name)
            await satellite.start()
            self.by_name[name] = satellite
        watch = MqttWatch(*broker)
        await watch.__aenter__()
        self.watch = watch
        return {name: satellite.uri for name, satellite in self.by_name.items()}

    async def stop(self) -> None:
        if self.watch is not None:
            await self.watch.__aexit__(None, None, None)
            self.watch = None
        for satellite in self.by_name.values():
            await satellite.stop()
        self.by_name.clear()


async def _clients(conn: Connection, port: int, vendors: dict[str, dict[str, Any]]) -> None:
    satellites = Satellites()
    try:
        await _serve_clients(conn, port, vendors, satellites)
    finally:
        await satellites.stop()


async def _serve_clients(
    conn: Connection, port: int, vendors: dict[str, dict[str, Any]], satellites: Satellites
) -> None:
    cases = cases_for(tuple(vendors))
    speech = {case.vendor: speech_for(case) for case in cases}
    adapters = {vendor: vendor_adapter(vendor, settings) for vendor, settings in vendors.items()}
    encoded: dict[tuple[str, int], list[bytes]] = {}
    _freeze()
    conn.send("ready")
    while True:
        command = await _receive(conn)
        if command is None or command == "stop":
            return
        if "satellites" in command:
            names = [satellite_name(slot, case.vendor) for slot in range(command["satellites"]) for case in cases]
            try:
                conn.send(await satellites.start(names, tuple(command["broker"])))
            except Exception as exc:  # reported to the orchestrator, which stops the run with it
                conn.send({"error": f"the satellites or the MQTT watcher could not start: {exc!r}"})
            continue
        if "satellites_connected" in command:
            try:
                await wait_connected(list(satellites.by_name.values()), command["satellites_connected"])
                conn.send("connected")
            except TimeoutError:
                conn.send("the daemon did not connect to every satellite in time")
            continue
        if "satellites_stop" in command:
            await satellites.stop()
            conn.send("stopped")
            continue
        level, pace, piece = command["level"], command["pace"], command["piece"]
        for case in cases:
            if (case.vendor, piece) not in encoded:
                encoded[case.vendor, piece] = encode_utterance(speech[case.vendor], piece)
        # Clients start spread over one utterance, so ends of audio do not all fall at the same instant (they
        # would in no real house); each direct client runs half a step after its daemon twin.
        mean_seconds = statistics.fmean(len(speech[c.vendor]) / BYTES_PER_SECOND for c in cases) / pace
        step = mean_seconds / level
        if "floor" in command:
            conn.send(await _floor(command["floor"], cases, speech, encoded, command, step))
            continue
        if "felt" in command:
            conn.send(await _felt(command, cases, adapters, satellites))
            continue
        iterations = command["iterations"]
        through_daemon = functools.partial(_through_daemon, port, speech, encoded, piece, pace)
        direct = functools.partial(_direct, adapters, speech, piece, pace)
        slots = [run_slot(through_daemon, cases, slot, iterations, slot * step) for slot in range(level)]
        slots += [run_slot(direct, cases, slot, iterations, (slot + 0.5) * step) for slot in range(level)]
        lag = LoopLag()
        lag.start()
        cpu = own_cpu_seconds()
        per_slot = await asyncio.gather(*slots)
        cpu = own_cpu_seconds() - cpu
        await lag.stop()
        conn.send(
            {
                "results": [result.to_json() for results in per_slot for result in results],
                "lag": lag.samples,
                "cpu_seconds": cpu,
            }
        )


async def _felt(
    command: dict[str, Any],
    cases: tuple[VendorCase, ...],
    adapters: dict[str, WebSocketAdapter],
    satellites: Satellites,
) -> Any:
    """What users feel, the modes side by side: N clients of each at once (see ``bench.report``)."""
    level, pace, piece, iterations = command["level"], command["pace"], command["piece"], command["iterations"]
    ports: dict[str, int] = command["felt"]
    speech = {case.vendor: felt_speech_for(case, command["tail_seconds"]) for case in cases}
    voiced = {vendor: voiced_end(pcm) for vendor, pcm in speech.items()}
    encoded = {vendor: encode_utterance(pcm, piece) for vendor, pcm in speech.items()}
    # Where Home Assistant's own VAD would send audio-stop (the end of the audio if it never would).
    ha_stop = {vendor: home_assistant_vad_end(pcm) or len(pcm) for vendor, pcm in speech.items()}

    async def endpointing(case: VendorCase, slot: int, iteration: int) -> StreamResult:
        return await felt_daemon_stream(
            ports["endpointing"], case, speech[case.vendor], path="endpointing", voiced_end=voiced[case.vendor],
            stop_after=None, piece_bytes=piece, pace=pace, slot=slot, iteration=iteration,
            encoded=encoded[case.vendor],
        )  # fmt: skip

    async def with_ha_vad(case: VendorCase, slot: int, iteration: int) -> StreamResult:
        return await felt_daemon_stream(
            ports["ha-vad"], case, speech[case.vendor], path="ha-vad", voiced_end=voiced[case.vendor],
            stop_after=ha_stop[case.vendor], piece_bytes=piece, pace=pace, slot=slot, iteration=iteration,
            encoded=encoded[case.vendor],
        )  # fmt: skip

    async def vendor(case: VendorCase, slot: int, iteration: int) -> StreamResult:
        return await felt_direct_stream(
            adapters[case.vendor], case, speech[case.vendor], voiced_end=voiced[case.vendor], piece_bytes=piece,
            pace=pace, slot=slot, iteration=iteration,
        )  # fmt: skip

    async def satellite(case: VendorCase, slot: int, iteration: int) -> StreamResult:
        assert satellites.watch is not None, "the satellites were not started"
        return await satellites.by_name[satellite_name(slot, case.vendor)].command(
            satellites.watch, case, speech[case.vendor], encoded=encoded[case.vendor], voiced_end=voiced[case.vendor],
            piece_bytes=piece, pace=pace, slot=slot, iteration=iteration,
        )  # fmt: skip

    # Slots start spread over one utterance; modes that run together are a fraction of a step apart.
    step = statistics.fmean(len(pcm) / BYTES_PER_SECOND for pcm in speech.values()) / pace / level
    runners = {"endpointing": endpointing, "ha-vad": with_ha_vad, "vendor": vendor, "satellite": satellite}
    modes: list[str] = command["modes"]
    slots = [
        run_slot(runners[mode], cases, slot, iterations, (slot + shift / len(modes)) * step)
        for shift, mode in enumerate(modes)
        for slot in range(level)
    ]
    per_slot = await asyncio.gather(*slots)
    return {"results": [result.to_json() for results in per_slot for result in results]}


async def _floor(
    port: int,
    cases: tuple[VendorCase, ...],
    speech: dict[str, bytes],
    encoded: dict[tuple[str, int], list[bytes]],
    command: dict[str, Any],
    step: float,
) -> dict[str, Any]:
    """The level's chunks, started as the level's clients start, to the wake-up floor's receiver (``floor.py``)."""
    piece = command["piece"]
    chunks = [chunk for case in cases for chunk in encoded[case.vendor, piece]]
    sizes = [
        min(piece, len(speech[case.vendor]) - offset) for case in cases
        for offset in range(0, len(speech[case.vendor]), piece)
    ]  # fmt: skip
    streams = [
        chunk_stream(port, chunks, sizes, pace=command["pace"], seconds=command["seconds"], delay=slot * step)
        for slot in range(command["level"])
    ]
    return {"audio_seconds": sum(await asyncio.gather(*streams))}


async def _through_daemon(
    port: int,
    speech: dict[str, bytes],
    encoded: dict[tuple[str, int], list[bytes]],
    piece: int,
    pace: float,
    case: VendorCase,
    slot: int,
    iteration: int,
) -> StreamResult:
    return await daemon_stream(
        port, case, speech[case.vendor], piece_bytes=piece, pace=pace, slot=slot, iteration=iteration,
        encoded=encoded[case.vendor, piece],
    )  # fmt: skip


async def _direct(
    adapters: dict[str, WebSocketAdapter],
    speech: dict[str, bytes],
    piece: int,
    pace: float,
    case: VendorCase,
    slot: int,
    iteration: int,
) -> StreamResult:
    return await direct_stream(
        adapters[case.vendor], case, speech[case.vendor], piece_bytes=piece, pace=pace, slot=slot, iteration=iteration
    )
