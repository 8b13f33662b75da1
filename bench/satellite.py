"""The felt-latency section's satellite mode: emulated wyoming-satellite devices and a watcher on the MQTT broker.

``EmulatedSatellite`` is what the daemon sees of a wyoming-satellite 1.0.0 with a local wake word (the release on
PyPI): a Wyoming *server* that the daemon connects to (``satellites.devices``); it answers ``describe`` with an
``info`` holding a ``satellite``, waits for ``run-satellite``, and for each command sends ``run-pipeline``
(start_stage asr: the wake word was heard on the device), then the command's audio in the same pieces and at the
same pace as the Wyoming client of mode (a), until the daemon's ``transcript`` (or ``error``) comes back on the
connection, as the real satellite streams until then. ``MqttWatch`` subscribes to the daemon's transcript and
error topics and timestamps each arrival, so a command's latency runs from sending the piece that holds its last
voiced frame to its transcript arriving on MQTT, the way an MQTT consumer sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite

from .load import STREAM_TIMEOUT, StreamResult, _pace, encode
from .scenario import BYTES_PER_SECOND, CHANNELS, RATE, WIDTH, VendorCase

# The daemon's MQTT node in the satellite daemon's config: topics are asr-daemon/<NODE>/...
NODE = "bench"
TOPIC_PREFIX = f"asr-daemon/{NODE}"
# What the satellite sends when its wake word was heard (no speaker: the pipeline ends at handle).
_RUN_PIPELINE = encode(RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.HANDLE).event())


def satellite_name(slot: int, vendor: str) -> str:
    """One satellite per client slot and vendor: a satellite's language is fixed in the daemon's config, and the
    slots rotate through the vendors as mode (a)'s clients do."""
    return f"bench-{slot}-{vendor}"


@dataclass
class Arrival:
    """A transcript or error the daemon published on MQTT for one satellite."""

    at: float
    text: str | None
    error: str | None


class MqttWatch:
    """The daemon's ``transcript`` and ``error`` topics, each arrival timestamped on this process's clock."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._waiting: dict[str, asyncio.Future[Arrival]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> MqttWatch:
        self._task = asyncio.create_task(self._run(), name="bench mqtt watch")
        async with asyncio.timeout(10):
            waiter = asyncio.create_task(self._subscribed.wait())
            done, _ = await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
            if self._task in done:
                waiter.cancel()
                self._task.result()
                raise ConnectionError("the MQTT watcher stopped before subscribing")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def expect(self, name: str) -> asyncio.Future[Arrival]:
        """The next arrival for satellite ``name`` (one command at a time per satellite)."""
        future: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        self._waiting[name] = future
        return future

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client(self.host, self.port, identifier="bench-watch") as client:
            await client.subscribe(f"{TOPIC_PREFIX}/transcript", qos=1)
            await client.subscribe(f"{TOPIC_PREFIX}/error", qos=1)
            self._subscribed.set()
            async for message in client.messages:
                at = time.monotonic()
                payload = message.payload
                if not isinstance(payload, bytes):
                    continue
                with contextlib.suppress(ValueError):
                    self._arrived(str(message.topic), json.loads(payload), at)

    def _arrived(self, topic: str, data: object, at: float) -> None:
        if not isinstance(data, dict):
            return
        source = str(data.get("source", ""))
        future = self._waiting.pop(source.removeprefix("satellite:"), None)
        if future is None or future.done():
            return
        if topic.endswith("/error"):
            future.set_result(Arrival(at, None, f"{data.get('code')}: {data.get('message')}"))
        else:
            future.set_result(Arrival(at, str(data.get("text") or ""), None))


class EmulatedSatellite:
    """One satellite: a Wyoming server on 127.0.0.1 that the daemon connects to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.ready = asyncio.Event()  # the daemon is connected and sent run-satellite
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answer: asyncio.Future[tuple[float, Event]] | None = None

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A satellite serves one pipeline runner: a new connection replaces the old one.
        if self._writer is not None:
            self._writer.close()
        self.ready.clear()
        self._writer = writer
        try:
            while (event := await async_read_event(reader)) is not None:
                if Describe.is_type(event.type):
                    writer.write(encode(self._info()))
                elif RunSatellite.is_type(event.type):
                    self.ready.set()
                elif Transcript.is_type(event.type) or Error.is_type(event.type):
                    answer = self._answer
                    if answer is not None and not answer.done():
                        answer.set_result((time.monotonic(), event))
                # ping (1.0.0 does not answer it), voice-started, voice-stopped: nothing to do
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.ready.clear()
            writer.close()

    def _info(self) -> Event:
        satellite = Satellite(
            name=self.name,
            attribution=Attribution(name="asr-daemon bench", url=""),
            installed=True,
            description="emulated wyoming-satellite",
            version=None,  # 1.0.0 sends none
        )
        return Info(satellite=satellite).event()

    async def command(
        self,
        watch: MqttWatch,
        case: VendorCase,
        pcm: bytes,
        *,
        encoded: list[bytes],
        voiced_end: int,
        piece_bytes: int,
        pace: float,
        slot: int,
        iteration: int,
    ) -> StreamResult:
        """One spoken command: run-pipeline, its audio at real-time pace until the daemon answers on the
        connection; latency from the piece holding the last voiced frame to the transcript on MQTT."""
        result = StreamResult(
            "satellite", case.vendor, slot, iteration, len(pcm) / BYTES_PER_SECOND, expected=case.text
        )
        voiced_at = 0.0
        silence = encode_silence(piece_bytes)
        try:
            async with asyncio.timeout(result.audio_seconds / pace + STREAM_TIMEOUT):
                await self.ready.wait()
                writer = self._writer
                assert writer is not None
                answer = self._answer = asyncio.get_running_loop().create_future()
                arrival = watch.expect(self.name)
                writer.write(_RUN_PIPELINE)
                await writer.drain()
                started = time.monotonic()
                sent = 0
                index = 0
                # The real satellite streams until it gets its transcript (or error): past the recording,
                # its microphone hears silence.
                while not answer.done():
                    chunk = encoded[index] if index < len(encoded) else silence
                    size = min(piece_bytes, len(pcm) - sent) if index < len(encoded) else piece_bytes
                    await _pace(started, sent + size, pace)
                    if answer.done():
                        break
                    writer.write(chunk)
                    await writer.drain()
                    sent += size
                    index += 1
                    if not voiced_at and sent >= voiced_end:
                        voiced_at = time.monotonic()
                result.sent_seconds = min(sent, len(pcm)) / BYTES_PER_SECOND
                result.early = index <= len(encoded)
                answered_at, event = await answer
                if Error.is_type(event.type):
                    error = Error.from_event(event)
                    result.error = f"{error.code}: {error.text}"
                elif voiced_at:
                    result.link_latency = answered_at - voiced_at
                published = await arrival
                if published.error is not None:
                    result.error = result.error or published.error
                result.text = published.text
                if voiced_at and result.error is None:
                    result.latency = published.at - voiced_at
        except TimeoutError:
            result.error = result.error or "timeout"
        except (OSError, AssertionError) as exc:
            result.error = result.error or f"satellite connection: {exc or type(exc).__name__}"
        finally:
            self._answer = None
        return result


def encode_silence(piece_bytes: int) -> bytes:
    return encode(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=bytes(piece_bytes)).event())


async def wait_connected(satellites: list[EmulatedSatellite], timeout: float) -> None:
    """Until the daemon has connected to every satellite and sent it run-satellite."""
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(satellite.ready.wait() for satellite in satellites))
