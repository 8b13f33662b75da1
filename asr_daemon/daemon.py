"""The composition root: builds everything from one ``Settings`` and owns its lifetime.

Start: vendors and routes, the pre-built ``info``, the event bus and its sinks (MQTT, JSON lines, Wyoming
forwarding), the Wyoming listener, the zeroconf announcement, then the microphone.
Stop (SIGTERM/SIGINT): stop accepting, withdraw the announcement, let in-flight utterances (Wyoming and
microphone) finish within ``limits.drain_timeout``, close the rest, then flush the sinks (MQTT says
``offline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import __version__
from .events import AsrEvent, EventBus, EventKind
from .info import build_info
from .routing import Router
from .session import SessionLimits
from .settings import Settings
from .sources.wyoming_handler import HandlerContext, WyomingAsrHandler
from .sources.wyoming_server import WyomingServer
from .vendors import registry
from .vendors.base import VendorAdapter

if TYPE_CHECKING:
    from .sinks.mqtt import MqttSink
    from .sources.mic import MicSource

_LOGGER = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        adapters: dict[str, VendorAdapter] = {
            name: registry.adapter_class(name)(vendor) for name, vendor in settings.configured_vendors().items()
        }
        self.router = Router(adapters, settings.default_vendor)
        self.info = build_info(self.router)
        limits = settings.limits
        self.events = EventBus(settings.events.queue_size)
        self.context = HandlerContext(
            info=self.info.event(),
            router=self.router,
            limits=SessionLimits(max_audio_seconds=limits.max_utterance_seconds, final_timeout=limits.final_timeout),
            idle_timeout=settings.wyoming.idle_timeout,
            events=self.events,
        )
        self.server = WyomingServer(
            settings.wyoming.uri,
            partial(WyomingAsrHandler, self.context),
            max_sessions=settings.wyoming.max_sessions,
            max_event_bytes=settings.wyoming.max_event_bytes,
        )
        self._stack = contextlib.AsyncExitStack()
        # Sinks outlive the sources: they are closed last, after in-flight utterances had their say.
        self._outputs = contextlib.AsyncExitStack()
        self._mic_stack = contextlib.AsyncExitStack()
        self.mqtt: MqttSink | None = None
        self.mic: MicSource | None = None
        self._stop_requested = asyncio.Event()

    @property
    def port(self) -> int | None:
        return self.server.port

    async def start(self) -> None:
        if not self.router.adapters:
            _LOGGER.warning("no vendor is configured: every request will get an error (see config.example.yaml)")
        for language in self.router.languages():
            adapter = self.router.route(language)
            _LOGGER.debug("route %s → %s", language, adapter.name if adapter else "-")
        await self._start_outputs()
        try:
            await self.server.start()
        except BaseException:
            await self._outputs.aclose()
            raise
        _LOGGER.info(
            "asr-daemon %s listening on %s (port %s); vendors: %s; languages: %s",
            __version__,
            self.settings.wyoming.uri,
            self.port,
            ", ".join(self.router.adapters) or "none",
            ", ".join(self.router.languages()) or "none",
        )
        if self.settings.wyoming.zeroconf:
            await self._announce()
        if self.settings.mic.enabled:
            await self._start_mic()
        self.events.publish(AsrEvent(EventKind.STATE, "daemon", state="ready", message=f"asr-daemon {__version__}"))

    async def _start_outputs(self) -> None:
        events = self.settings.events
        sinks: list[Any] = []
        if self.settings.mqtt.host:
            from .sinks.mqtt import MqttSink

            self.mqtt = MqttSink(self.settings.mqtt, flush_timeout=events.flush_timeout)
            sinks.append(self.mqtt)
        if events.jsonl:
            from .sinks.jsonl import JsonLinesSink

            sinks.append(JsonLinesSink(events.jsonl, partials=events.jsonl_partials))
        if events.forward_uris:
            from .sinks.wyoming_forward import WyomingForwardSink

            sinks.append(WyomingForwardSink(events.forward_uris))
        for sink in sinks:
            await self._outputs.enter_async_context(sink)
            await self._outputs.enter_async_context(self.events.attached(sink, flush_timeout=events.flush_timeout))

    async def _start_mic(self) -> None:
        from .sources.mic import MicSource

        mic = self.settings.mic
        self.mic = MicSource(
            mic, self.router, self.context.limits, self.events, drain_timeout=self.settings.limits.drain_timeout
        )
        if self.mic.adapter() is None:
            _LOGGER.warning(
                "microphone: no configured vendor serves it (mic.vendor %s, mic.language %s)", mic.vendor, mic.language
            )
        await self._mic_stack.enter_async_context(self.mic)

    async def _announce(self) -> None:
        from .discovery import ZeroconfAdvertiser

        wyoming = self.settings.wyoming
        port = self.port
        if port is None:
            _LOGGER.warning("zeroconf needs a tcp:// listener; %s is not announced", wyoming.uri)
            return
        advertiser = ZeroconfAdvertiser(
            name=wyoming.instance_name(),
            port=port,
            bind_host=urlparse(wyoming.uri).hostname or "0.0.0.0",
            interfaces=wyoming.zeroconf_interfaces,
        )
        await self._stack.enter_async_context(advertiser)

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
        self.events.publish(AsrEvent(EventKind.STATE, "daemon", state="stopping"))
        await self.server.stop_accepting()
        await self._stack.aclose()
        await asyncio.gather(self.server.drain(self.settings.limits.drain_timeout), self._mic_stack.aclose())
        await self._outputs.aclose()
        _LOGGER.info("stopped")

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
