"""Satellites found by zeroconf: ``_wyoming._tcp`` services whose ``info`` has a satellite of a listed name.

With ``satellites.discover``, a satellite listed without a ``uri`` is looked for among the Wyoming services
announced on the LAN. Only the names listed are ever claimed (a satellite serves one pipeline runner, and Home
Assistant may own the others): each announced service is asked ``describe`` (which claims nothing) and the name
its ``info`` gives is remembered for its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from wyoming.event import async_write_event
from wyoming.info import Describe, Info

from .satellite_io import next_event, open_wyoming

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
RESOLVE_MS = 3000


class SatelliteFinder:
    """Browses for Wyoming services while entered; ``find(name)`` gives the address of satellite ``name``."""

    def __init__(self, describe_timeout: float = 5.0) -> None:
        self.describe_timeout = describe_timeout
        # Service name → its tcp:// address, while announced.
        self.services: dict[str, str] = {}
        # Address → the satellite name its info gave ("" when it is not a satellite).
        self.names: dict[str, str] = {}
        self._zeroconf: Any = None
        self._browser: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SatelliteFinder:
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._zeroconf = AsyncZeroconf()
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._changed])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_close()

    def _changed(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            self.services.pop(name, None)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_MS) or info.port is None:
            return
        addresses = info.parsed_addresses()
        if not addresses:
            return
        host = addresses[0]
        uri = f"tcp://[{host}]:{info.port}" if ":" in host else f"tcp://{host}:{info.port}"
        if self.services.get(name) != uri:
            self.services[name] = uri
            self.names.pop(uri, None)
            _LOGGER.debug("zeroconf: Wyoming service %r at %s", name, uri)

    async def find(self, name: str) -> str | None:
        """The address of the announced satellite named ``name``, asking services not yet described."""
        for uri in list(self.services.values()):
            if uri not in self.names:
                found = await self._satellite_name(uri)
                if found is None:
                    continue  # it did not answer: asked again next time
                self.names[uri] = found
            if self.names[uri] == name:
                return uri
        return None

    async def _satellite_name(self, uri: str) -> str | None:
        writer = None
        try:
            reader, writer = await open_wyoming(uri, self.describe_timeout)
            async with asyncio.timeout(self.describe_timeout):
                await async_write_event(Describe().event(), writer)
                while (event := await next_event(reader)) is not None:
                    if Info.is_type(event.type):
                        satellite = (event.data or {}).get("satellite")
                        return str(satellite.get("name") or "") if isinstance(satellite, dict) else ""
        except (OSError, TimeoutError, ValueError) as exc:
            _LOGGER.debug("zeroconf: %s did not describe itself: %s", uri, exc)
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return ""
