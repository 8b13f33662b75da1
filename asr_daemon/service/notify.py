"""systemd's notification protocol, spoken directly (no libsystemd): READY, STATUS, WATCHDOG, STOPPING.

The watchdog task pings only after proving two things: the event loop runs (the task itself is scheduled by
it, so a wedged loop sends nothing and systemd restarts the service) and the Wyoming listener answers a
describe on its own port (also with every session slot taken: a refused connection still gets an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

_LOGGER = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; does nothing when systemd did not ask for them."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if address:
            # A leading '@' names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *lines: str) -> None:
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _LOGGER.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled advises), when systemd set a watchdog for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    with contextlib.suppress(ValueError):
        value = int(usec)
        if value > 0:
            return value / 1e6 / 2
    return None


async def run_watchdog(
    notifier: SystemdNotifier,
    interval: float,
    alive: Callable[[], Awaitable[bool]],
    status: Callable[[], str],
) -> None:
    """Ping every ``interval`` while ``alive()`` holds; report ``status()`` with each ping."""
    while True:
        try:
            async with asyncio.timeout(max(interval * 0.8, 0.1)):
                healthy = await alive()
        except (TimeoutError, OSError):
            healthy = False
        if healthy:
            notifier.notify("WATCHDOG=1", f"STATUS={status()}")
        else:
            _LOGGER.warning("watchdog: the Wyoming listener did not answer; not pinging systemd")
        await asyncio.sleep(interval)
