"""The composition root: builds everything from one ``Settings`` and owns its lifetime.

Start: vendors and routes, the pre-built ``info``, the event bus and its sinks (MQTT, JSON lines, Wyoming
forwarding), pre-warmed vendor connections, the Wyoming listener, the zeroconf announcement, the microphone,
the satellites, the health endpoint; then systemd hears READY=1 and the watchdog starts.
Everything started sits on one exit stack: a failed start undoes what it had started, and stop unwinds it.
Stop (SIGTERM/SIGINT): STOPPING=1, stop accepting, withdraw the announcement, let in-flight utterances
(Wyoming and microphone) finish within ``limits.drain_timeout``, close the rest, then flush the sinks (MQTT
says ``offline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import __version__
from .audio.endpoint import EndpointSettings
from .budget import AudioBudget
from .config import Settings
from .events import AsrEvent, EventBus, EventKind
from .info import build_info
from .resilience.policy import ResiliencePolicy
from .routing import Router
from .service.health import HealthServer, VendorStates
from .service.notify import SystemdNotifier, run_watchdog, watchdog_interval
from .session import Session, SessionError, SessionLimits, Transcript
from .settings import EndpointingSettings
from .sources.wyoming_handler import HandlerContext, WyomingAsrHandler
from .sources.wyoming_server import WyomingServer
from .vendors import registry
from .vendors.base import VendorAdapter
from .vendors.prewarm import StreamPool

if TYPE_CHECKING:
    from .service.metrics import Metrics
    from .sinks.mqtt import MqttSink
    from .sources.mic import MicSource
    from .sources.satellite import SatelliteSources

_LOGGER = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        adapters: dict[str, VendorAdapter] = {
            name: registry.adapter_class(name)(vendor) for name, vendor in settings.configured_vendors().items()
        }
        self.router = Router(adapters, settings.default_vendor)
        self.info = build_info(self.router, endpointing=settings.endpointing.enabled)
        limits = settings.limits
        self.policy = ResiliencePolicy.from_settings(settings.resilience)
        self.events = EventBus(settings.events.queue_size)
        budget = settings.budget
        # One budget for every source (Wyoming clients and the microphone).
        self.budget = (
            AudioBudget(budget.daily_seconds, budget.per_client_hourly_seconds, budget.exempt_clients)
            if budget.daily_seconds is not None or budget.per_client_hourly_seconds is not None
            else None
        )
        # Metrics exist only for the /metrics endpoint: without it they would cost a module and a lock per chunk.
        self.metrics: Metrics | None = None
        if settings.health.port is not None:
            from .service.metrics import Metrics

            self.metrics = Metrics()
        self.vendor_states = VendorStates(list(adapters))
        self.pools = {
            name: StreamPool(a, self.policy)
            for name, a in adapters.items()
            if a.settings.prewarm and a.prewarms_connections
        }
        self.context = HandlerContext(
            info=self.info.event(),
            router=self.router,
            limits=SessionLimits(
                max_audio_seconds=limits.max_utterance_seconds,
                final_timeout=limits.final_timeout,
                policy=self.policy,
                fallback_after=limits.fallback_after,
            ),
            idle_timeout=settings.wyoming.idle_timeout,
            events=self.events,
            pools=self.pools,
            observe=self._observe,
            metrics=self.metrics,
            fallback=adapters.get(settings.fallback_vendor) if settings.fallback_vendor else None,
            utterance_wall_seconds=limits.utterance_wall_seconds(),
            budget=self.budget,
            endpointing=endpoint_settings(settings.endpointing),
        )
        self.server = WyomingServer(
            settings.wyoming.uri,
            partial(WyomingAsrHandler, self.context),
            max_sessions=settings.wyoming.max_sessions,
            max_event_bytes=settings.wyoming.max_event_bytes,
            allow=settings.wyoming.allowed_networks(),
            info=self.context.info,
        )
        # Everything ``start`` started, undone by ``stop`` (see ``start`` for the order).
        self._stack = contextlib.AsyncExitStack()
        self.mqtt: MqttSink | None = None
        self.mic: MicSource | None = None
        self.satellites: SatelliteSources | None = None
        self._stop_requested = asyncio.Event()
        if self.metrics is not None:
            self.metrics.watch_connections(
                lambda: self.server.active,
                lambda: self.server.connections_total,
                lambda: self.server.rejected_total,
                lambda: self.server.denied_total,
            )
        self.notifier = SystemdNotifier()
        self.health: HealthServer | None = None

    @property
    def port(self) -> int | None:
        return self.server.port

    async def start(self) -> None:
        # A setup with no vendor at all is reported by the start-up checks (setup_check), with what to do.
        if list(self.router.adapters) == ["local"]:
            _LOGGER.info("no cloud vendor configured: serving English with the offline engine (vendors.local)")
        if self.context.fallback is not None:
            _LOGGER.info("fallback: %s transcribes what the routed vendor cannot", self.context.fallback.name)
        for language in self.router.languages():
            adapter = self.router.route(language)
            _LOGGER.debug("route %s → %s", language, adapter.name if adapter else "-")
        # One stack owns everything started: a failure at any step undoes the steps before it, and ``stop``
        # unwinds the same stack. Entries are made so that the reverse order is the stop order: stop accepting,
        # withdraw the announcement, drain Wyoming and the microphone together, the health endpoint, then the
        # pools and the sinks last (in-flight utterances have had their say).
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.notifier.close)
            for adapter in self.router.adapters.values():
                # Engines that load a model do it now, not during the first utterance.
                await adapter.preload()
            await self._start_outputs(stack)
            for pool in self.pools.values():
                await stack.enter_async_context(pool)
            stack.push_async_callback(self._stop_health)
            await self.server.start()
            sources = contextlib.AsyncExitStack()  # the microphone, closed while Wyoming drains
            stack.push_async_callback(self._drain, sources)
            _LOGGER.info(
                "asr-daemon %s listening on %s (port %s); vendors: %s; languages: %s",
                __version__,
                self.settings.wyoming.uri,
                self.port,
                ", ".join(self.router.adapters) or "none",
                ", ".join(self.router.languages()) or "none",
            )
            if self.settings.wyoming.zeroconf:
                await self._announce(stack)
            stack.push_async_callback(self.server.stop_accepting)
            if self.settings.mic.enabled:
                await self._start_mic(sources)
            if self.settings.satellites.devices:
                await self._start_satellites(sources)
            if self.settings.health.port is not None and self.metrics is not None:
                self.health = HealthServer(
                    self.settings.health.host, self.settings.health.port, self.check, self.metrics
                )
                await self.health.start()
            self.events.publish(AsrEvent(EventKind.STATE, "daemon", state="ready", message=f"asr-daemon {__version__}"))
            self.notifier.ready(self.status_line())
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                watchdog = asyncio.create_task(
                    run_watchdog(self.notifier, interval, self.listener_answers, self.status_line), name="watchdog"
                )
                stack.push_async_callback(_cancelled, watchdog)
            self._stack = stack.pop_all()

    async def _drain(self, sources: contextlib.AsyncExitStack) -> None:
        # Already done on a normal stop; here too for a start that failed before it got that far.
        await self.server.stop_accepting()
        await asyncio.gather(self.server.drain(self.settings.limits.drain_timeout), sources.aclose())

    async def _stop_health(self) -> None:
        if self.health is not None:
            await self.health.stop()

    def status_line(self) -> str:
        """The one-line state systemd shows (``systemctl status``)."""
        return (
            f"{len(self.context.sessions)} utterance(s) in flight, {self.server.active} connection(s); "
            f"vendors: {self.vendor_states.summary()}"
        )

    def _observe(self, session: Session, result: Transcript | None, error: SessionError | None) -> None:
        if self.metrics is not None:
            self.metrics.observe(session, result, error)
        if result is not None:
            self.vendor_states.success(session.adapter.name)
        elif error is not None:
            self.vendor_states.failure(session.adapter.name, error.code, error.message, error.fatal)

    async def listener_answers(self, timeout: float = 1.0) -> bool:
        """Whether our own Wyoming listener answers (the watchdog's liveness check)."""
        return await self.listener_state(timeout) is not None

    async def listener_state(self, timeout: float = 1.0) -> str | None:
        """How our own Wyoming listener answers a describe (what Home Assistant does first); ``None``: it does not.

        With every session slot taken the answer is still ``info`` (or a ``busy`` error when refused connections
        pile up too): the listener is alive, so liveness never waits for a free slot.
        """
        from wyoming.error import Error
        from wyoming.event import async_read_event, async_write_event
        from wyoming.info import Describe, Info

        parsed = urlparse(self.settings.wyoming.uri)
        try:
            async with asyncio.timeout(timeout), contextlib.AsyncExitStack() as stack:
                if parsed.scheme == "tcp":
                    host = parsed.hostname if parsed.hostname not in ("0.0.0.0", "::", "", None) else "127.0.0.1"
                    reader, writer = await stack.enter_async_context(self.server.probe(str(host)))
                else:
                    reader, writer = await asyncio.open_unix_connection(parsed.path)
                    stack.callback(writer.close)
                await async_write_event(Describe().event(), writer)
                while (event := await async_read_event(reader)) is not None:
                    if Info.is_type(event.type):
                        return "answers describe"
                    if Error.is_type(event.type) and Error.from_event(event).code == "busy":
                        return "busy (every session slot is taken)"
        except (OSError, TimeoutError):
            return None
        return None

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: the listener answers describe and no vendor is rejecting us or down."""
        state = await self.listener_state()
        detail: dict[str, Any] = {
            "wyoming": state or "no answer to describe",
            "utterances_in_flight": len(self.context.sessions),
            "connections": self.server.active,
            "vendors": self.vendor_states.snapshot(),
        }
        return state is not None and self.vendor_states.healthy, detail

    async def _start_outputs(self, stack: contextlib.AsyncExitStack) -> None:
        events = self.settings.events
        sinks: list[Any] = []
        if self.settings.mqtt.host:
            from .sinks.mqtt import MqttSink

            mqtt = self.mqtt = MqttSink(self.settings.mqtt, flush_timeout=events.flush_timeout)
            if self.metrics is not None:
                self.metrics.spool_depth.set_function(lambda: len(mqtt.spool))
            sinks.append(mqtt)
        if events.jsonl:
            from .sinks.jsonl import JsonLinesSink

            sinks.append(JsonLinesSink(events.jsonl, partials=events.jsonl_partials))
        if events.forward_uris:
            from .sinks.wyoming_forward import WyomingForwardSink

            sinks.append(WyomingForwardSink(events.forward_uris))
        for sink in sinks:
            await stack.enter_async_context(sink)
            await stack.enter_async_context(self.events.attached(sink, flush_timeout=events.flush_timeout))

    async def _start_mic(self, stack: contextlib.AsyncExitStack) -> None:
        from .sources.mic import MicSource

        mic = self.settings.mic
        adapter = self.router.adapters.get(mic.vendor) if mic.vendor else self.router.route(mic.language)
        self.mic = MicSource(
            mic,
            self.router,
            self.context.limits,
            self.events,
            drain_timeout=self.settings.limits.drain_timeout,
            pool=self.pools.get(adapter.name) if adapter is not None else None,
            observe=self._observe,
            fallback=self.context.fallback,
            budget=self.budget,
            endpointing=self.context.endpointing,
        )
        if self.mic.adapter() is None:
            _LOGGER.warning(
                "microphone: no configured vendor serves it (mic.vendor %s, mic.language %s)", mic.vendor, mic.language
            )
        await stack.enter_async_context(self.mic)

    async def _start_satellites(self, stack: contextlib.AsyncExitStack) -> None:
        from .settings import SatelliteSettings
        from .sources.satellite import SatelliteSources, SatelliteStateMetric
        from .utterance import Utterance

        # A satellite streams until it is told the command is over: its end of speech is always detected.
        always = self.settings.endpointing.model_copy(update={"enabled": True})
        services = dataclasses.replace(self.context.services, endpointing=endpoint_settings(always))

        def command(device: SatelliteSettings) -> Utterance:
            # An empty transcript (a wake word and nothing after it) is not worth an event.
            return Utterance(
                services,
                f"satellite:{device.name}",
                language=device.language,
                vendor=device.vendor,
                publish_empty=False,
            )

        self.satellites = SatelliteSources(
            self.settings.satellites, command, self.events, drain_timeout=self.settings.limits.drain_timeout
        )
        if self.metrics is not None:
            self.metrics.registry.register(SatelliteStateMetric(self.satellites))
        await stack.enter_async_context(self.satellites)

    async def _announce(self, stack: contextlib.AsyncExitStack) -> None:
        from .discovery import ZeroconfAdvertiser

        wyoming = self.settings.wyoming
        port = self.port
        if port is None:
            _LOGGER.warning("zeroconf needs a tcp:// listener; %s is not announced", wyoming.uri)
            return
        advertiser = ZeroconfAdvertiser.for_wyoming(wyoming, port)
        await stack.enter_async_context(advertiser)
        # READY=1 means "announced": give the first announcement a moment (it waits for the name check).
        try:
            async with asyncio.timeout(5.0):
                await advertiser.wait_announced()
        except TimeoutError:
            _LOGGER.warning("zeroconf: not announced yet after 5 s (state: %s); carrying on", advertiser.state)

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait_for_stop(self) -> None:
        """Block until SIGTERM/SIGINT (or ``request_stop``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)

    async def stop(self) -> None:
        _LOGGER.info("stopping: no new connections; %d session(s) in flight", len(self.context.sessions))
        self.notifier.stopping()
        self.events.publish(AsrEvent(EventKind.STATE, "daemon", state="stopping"))
        await self._stack.aclose()
        _LOGGER.info("stopped")

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def endpoint_settings(endpointing: EndpointingSettings) -> EndpointSettings | None:
    """The end-of-speech detector's settings, None when ``endpointing.enabled`` is off."""
    if not endpointing.enabled:
        return None
    return EndpointSettings(
        silence_seconds=endpointing.silence_seconds,
        speech_seconds=endpointing.speech_seconds,
        no_speech_seconds=endpointing.no_speech_seconds,
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
