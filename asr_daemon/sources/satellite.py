"""Voice satellites driven by the daemon: the connection to each satellite and to the wake-word service.

``SatelliteLink`` owns one satellite (``satellites.devices``): it connects, runs ``SatelliteProtocol``
(``satellite_protocol.py``, the protocol without I/O) over the connection, turns each spoken command into an
``Utterance`` (routing, session, events; its end found by endpointing, always on for satellites, which have no
end of their own) and carries out what the protocol answers. A satellite that reboots,
disappears or refuses is retried with ``Backoff``; each link runs in its own task, so one satellite never
delays another, nor start-up. Its state is an event on the bus (source ``satellite:<name>``): ``connected``
(waiting for its wake word), ``streaming`` (a command is being spoken), ``unavailable`` (with why).

With remote wake (the satellite sends ``run-pipeline`` from the wake stage) its audio goes to
``satellites.wake_uri`` over a connection of the link's own, opened while it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from wyoming.event import Event, async_write_event
from wyoming.satellite import PauseSatellite

from ..events import AsrEvent, EventBus, EventKind
from ..resilience.backoff import Backoff
from ..session import SessionError
from ..settings import DEFAULT_DRAIN_TIMEOUT, SatelliteSettings, SatellitesSettings
from ..utterance import Answer, Utterance, finish_in_time
from .satellite_discovery import SatelliteFinder
from .satellite_io import next_event, open_wyoming
from .satellite_protocol import (
    AbortCommand,
    Action,
    EndCommand,
    FeedCommand,
    Refuse,
    SatelliteProtocol,
    Send,
    StartCommand,
    ToWake,
)
from .wyoming_reader import EventStreamReader

_LOGGER = logging.getLogger(__name__)

CONNECTED = "connected"
STREAMING = "streaming"
UNAVAILABLE = "unavailable"

WRITE_TIMEOUT = 5.0
# A connection that lasted this long counts as a success: the next failure waits from the shortest delay again.
STABLE_SECONDS = 30.0
# A satellite that answered our ping pings us every 2 s: this long without a word from it, it is gone.
PING_SILENCE_SECONDS = 10.0
STATES = (CONNECTED, STREAMING, UNAVAILABLE)

# A new, unopened utterance for a command of this satellite.
CommandFactory = Callable[[SatelliteSettings], Utterance]


class SatelliteRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


class SatelliteLink:
    """Runs the pipeline for one satellite for as long as it is entered (``async with``)."""

    def __init__(
        self,
        settings: SatelliteSettings,
        common: SatellitesSettings,
        commands: CommandFactory,
        bus: EventBus,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        finder: SatelliteFinder | None = None,
    ) -> None:
        self.settings = settings
        self.finder = finder
        self.common = common
        self.commands = commands
        self.bus = bus
        self.drain_timeout = drain_timeout
        self.source = f"satellite:{settings.name}"
        self.state = "starting"
        self.connections = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._protocol: SatelliteProtocol | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._command: Utterance | None = None
        self._announced_speech = False
        self._finishing: set[asyncio.Task[None]] = set()
        self._wake_writer: asyncio.StreamWriter | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self._last_refusal: str | None = None

    # -- lifetime ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> SatelliteLink:
        self._task = asyncio.create_task(self._run(), name=f"satellite {self.settings.name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: the command being spoken is finished, in-flight ones get ``drain_timeout``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await finish_in_time(self._finishing, self.drain_timeout)

    # -- the connection ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.common.retry_min_delay, self.common.retry_max_delay)
        uri = self.settings.uri or "zeroconf"
        while True:
            connected_at: float | None = None
            try:
                uri = self.settings.uri or await self._discovered()
                reader, writer = await open_wyoming(uri, self.common.connect_timeout)
                connected_at = time.monotonic()
                await self._serve(reader, writer)
                message = "the satellite closed the connection"
            except SatelliteRefused as refused:
                message = refused.message
                if message != self._last_refusal:
                    _LOGGER.error("satellite %s (%s): %s", self.settings.name, uri, message)
                    self._last_refusal = message
                # Asking again soon would give the same answer.
                backoff.attempt = max(backoff.attempt, 32)
            except TimeoutError:
                message = f"no answer within {self.common.connect_timeout:g} s"
            except (OSError, EOFError, ValueError) as exc:
                message = f"cannot reach it: {exc or type(exc).__name__}"
            self.failures += 1
            if connected_at is not None and time.monotonic() - connected_at > STABLE_SECONDS:
                backoff.reset()
            delay = backoff.next_delay()
            level = logging.WARNING if self.state != UNAVAILABLE else logging.DEBUG
            _LOGGER.log(level, "satellite %s (%s): %s; retrying in %.1f s", self.settings.name, uri, message, delay)
            self._set_state(UNAVAILABLE, message)
            await asyncio.sleep(delay)

    async def _discovered(self) -> str:
        finder = self.finder
        uri = await finder.find(self.settings.name) if finder is not None else None
        if uri is None:
            raise ConnectionError("no satellite of this name is announced by zeroconf (yet)")
        return uri

    async def _serve(self, reader: EventStreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = self._protocol = SatelliteProtocol(
            wake_service=self.common.wake_uri is not None, wake_words=self.common.wake_words
        )
        self._writer = writer
        try:
            await self._execute(protocol.start())
            async with asyncio.timeout(self.common.connect_timeout) as describing:
                while protocol.identity is None:
                    event = await next_event(reader)
                    if event is None:
                        raise EOFError("the connection closed before info")
                    await self._execute(protocol.receive(event))
                describing.reschedule(None)
            identity = protocol.identity
            self.connections += 1
            version = identity.version or "1.0 (no version in info)"
            _LOGGER.info("satellite %s: connected to %r, version %s", self.settings.name, identity.name, version)
            self._set_state(CONNECTED, identity.name)
            while True:
                # One that pings is silent only when it is gone (the reader's one timer, not a timeout per event).
                reader.idle_timeout = PING_SILENCE_SECONDS if protocol.answers_pings else None
                try:
                    event = await next_event(reader)
                except TimeoutError:
                    raise ConnectionError(f"no ping from the satellite for {PING_SILENCE_SECONDS:g} s") from None
                if event is None:
                    break
                await self._execute(protocol.receive(event))
        finally:
            self._protocol = None
            await self._execute_lost(protocol)
            await self._stop_wake()
            self._writer = None
            if _cancelling():
                # The daemon is stopping: satellites that know pause-satellite stop streaming at once.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await async_write_event(PauseSatellite().event(), writer)
            await _close(writer)

    async def _execute_lost(self, protocol: SatelliteProtocol) -> None:
        command, self._command = self._command, None
        for action in protocol.lost():
            if isinstance(action, AbortCommand) and command is not None:
                if _cancelling():
                    # Shutting down: what was spoken so far is still transcribed (within drain_timeout).
                    self._spawn_finish(command, protocol, answer=False)
                else:
                    self._spawn(_abort(command, action.code, action.message), "abort")

    async def _execute(self, actions: list[Action]) -> None:
        protocol = self._protocol
        for action in actions:
            if isinstance(action, FeedCommand):
                command = self._command
                if command is None:
                    continue
                if command.session is None and not command.answered:
                    command.open(action.fmt)
                command.feed(action.pcm, action.fmt)
                if protocol is None:
                    continue
                if not self._announced_speech and command.speech_heard:
                    self._announced_speech = True
                    await self._execute(protocol.speech_started())
                if not command.taking_audio:
                    # End of speech, no speech at all, or a failure (refused, vendor down): answer now.
                    await self._execute(protocol.speech_ended())
            elif isinstance(action, Send):
                await self._send(action.event)
            elif isinstance(action, ToWake):
                await self._to_wake(action.event)
            elif isinstance(action, StartCommand):
                self._last_refusal = None  # a refusal after this one is news again
                self._command = self.commands(self.settings)
                self._announced_speech = False
                self._set_state(STREAMING, f"wake word {action.wake_word}" if action.wake_word else "wake word")
            elif isinstance(action, EndCommand):
                command, self._command = self._command, None
                if command is not None and protocol is not None:
                    self._spawn_finish(command, protocol, answer=True)
            elif isinstance(action, AbortCommand):
                command, self._command = self._command, None
                if command is not None:
                    self._spawn(_abort(command, action.code, action.message), "abort")
            elif isinstance(action, Refuse):
                raise SatelliteRefused(action.code, action.message)

    async def _send(self, event: Event) -> None:
        writer = self._writer
        if writer is None:
            return
        async with asyncio.timeout(WRITE_TIMEOUT):
            await async_write_event(event, writer)

    def _spawn_finish(self, command: Utterance, protocol: SatelliteProtocol, *, answer: bool) -> None:
        async def finish() -> None:
            try:
                result = await command.finish()
            finally:
                await command.aclose()
            # The answer goes to the connection the command came from, if it is still open.
            if answer and self._protocol is protocol:
                await self._answer(protocol, result)

        self._spawn(finish(), "finish")

    async def _answer(self, protocol: SatelliteProtocol, result: Answer) -> None:
        error = (result.error.code, result.error.message) if result.error is not None else None
        text = result.transcript.text if result.transcript is not None else None
        try:
            await self._execute(protocol.answered(text, error))
        except (OSError, TimeoutError) as exc:
            _LOGGER.warning("satellite %s: the answer could not be sent (%s)", self.settings.name, exc)
        if self._protocol is protocol and not protocol.in_command:
            self._set_state(CONNECTED, "waiting for the wake word")

    def _spawn(self, work: Any, what: str) -> None:
        task = asyncio.create_task(work, name=f"satellite {self.settings.name} {what}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    # -- the wake-word service ---------------------------------------------------------------------------

    async def _to_wake(self, event: Event) -> None:
        if self._wake_task is None:
            self._wake_task = asyncio.create_task(self._wake_loop(), name=f"satellite {self.settings.name} wake")
        writer = self._wake_writer
        if writer is None:
            return  # not connected (yet): this audio is not listened to
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await async_write_event(event, writer)
        except (OSError, TimeoutError):
            self._wake_writer = None
            await _close(writer)

    async def _wake_loop(self) -> None:
        uri = self.common.wake_uri
        assert uri is not None
        backoff = Backoff(self.common.retry_min_delay, self.common.retry_max_delay)
        while True:
            writer = None
            try:
                reader, writer = await open_wyoming(uri, self.common.connect_timeout)
                backoff.reset()
                self._wake_writer = writer
                protocol = self._protocol
                if protocol is not None:
                    await self._execute(protocol.wake_connected())
                while (event := await next_event(reader)) is not None:
                    protocol = self._protocol
                    if protocol is not None:
                        await self._execute(protocol.wake_received(event))
                message = "it closed the connection"
            except (OSError, TimeoutError, ValueError) as exc:
                message = str(exc) or type(exc).__name__
            finally:
                self._wake_writer = None
                await _close(writer)
            delay = backoff.next_delay()
            _LOGGER.warning(
                "satellite %s: wake-word service %s: %s; retrying in %.1f s", self.settings.name, uri, message, delay
            )
            await asyncio.sleep(delay)

    async def _stop_wake(self) -> None:
        task, self._wake_task = self._wake_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _set_state(self, state: str, message: str) -> None:
        if state == self.state:
            return
        self.state = state
        self.bus.publish(AsrEvent(EventKind.STATE, self.source, state=state, message=message))


async def _abort(command: Utterance, code: str, message: str) -> None:
    command.fail(SessionError(code, message))
    await command.aclose()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class SatelliteSources:
    """Every configured satellite, each on its own link."""

    def __init__(
        self,
        settings: SatellitesSettings,
        commands: CommandFactory,
        bus: EventBus,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        discovering = settings.discover and any(device.uri is None for device in settings.devices)
        self.finder = SatelliteFinder(settings.connect_timeout) if discovering else None
        self.links = [
            SatelliteLink(device, settings, commands, bus, drain_timeout=drain_timeout, finder=self.finder)
            for device in settings.devices
        ]

    async def __aenter__(self) -> SatelliteSources:
        if self.finder is not None:
            await self.finder.__aenter__()
        for link in self.links:
            await link.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(link.aclose() for link in self.links))
        if self.finder is not None:
            await self.finder.__aexit__(None, None, None)


class SatelliteStateMetric:
    """``asr_satellite_state{satellite, state}``: 1 for each satellite's current state, 0 for the others."""

    def __init__(self, sources: SatelliteSources) -> None:
        self.sources = sources

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "asr_satellite_state", "Each satellite's state (1: the current one)", labels=["satellite", "state"]
        )
        for link in self.sources.links:
            for state in STATES:
                family.add_metric([link.settings.name, state], 1.0 if link.state == state else 0.0)
        yield family
