"""The composition root: builds everything from one ``Settings`` and owns its lifetime.

Start: vendors and routes, the pre-built ``info``, the Wyoming listener, then the zeroconf announcement.
Stop (SIGTERM/SIGINT): stop accepting, withdraw the announcement, let in-flight utterances finish within
``limits.drain_timeout``, close the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from types import TracebackType
from urllib.parse import urlparse

from . import __version__
from .info import build_info
from .routing import Router
from .session import SessionLimits
from .settings import Settings
from .sources.wyoming_handler import HandlerContext, WyomingAsrHandler
from .sources.wyoming_server import WyomingServer
from .vendors import registry
from .vendors.base import VendorAdapter

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
        self.context = HandlerContext(
            info=self.info.event(),
            router=self.router,
            limits=SessionLimits(max_audio_seconds=limits.max_utterance_seconds, final_timeout=limits.final_timeout),
            idle_timeout=settings.wyoming.idle_timeout,
        )
        self.server = WyomingServer(
            settings.wyoming.uri,
            partial(WyomingAsrHandler, self.context),
            max_sessions=settings.wyoming.max_sessions,
            max_event_bytes=settings.wyoming.max_event_bytes,
        )
        self._stack = contextlib.AsyncExitStack()
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
        await self.server.start()
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
        await self.server.stop_accepting()
        await self._stack.aclose()
        await self.server.drain(self.settings.limits.drain_timeout)
        _LOGGER.info("stopped")

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
