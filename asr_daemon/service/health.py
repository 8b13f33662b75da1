"""A small local HTTP endpoint: ``/healthz`` for supervisors, ``/metrics`` for Prometheus.

Only GET of those two paths is served; requests are bounded (8 KiB of headers, 5 s to send them) and the
connection is closed after each answer. Bind it to 127.0.0.1 unless a scraper elsewhere needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import Metrics

_LOGGER = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0

HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class HealthServer:
    def __init__(self, host: str, port: int, check: HealthCheck, metrics: Metrics) -> None:
        self.host = host
        self._port = port
        self._check = check
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port, limit=MAX_REQUEST_HEAD)
        _LOGGER.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            if method != "GET":
                await _answer(writer, 405, "text/plain", b"only GET\n")
            elif path == "/healthz":
                healthy, detail = await self._check()
                body = json.dumps({"healthy": healthy, **detail}, indent=1).encode() + b"\n"
                await _answer(writer, 200 if healthy else 503, "application/json", body)
            elif path == "/metrics":
                await _answer(writer, 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics.render())
            else:
                await _answer(writer, 404, "text/plain", b"try /healthz or /metrics\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()


def _request_line(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    return parts[0], parts[1].split("?", 1)[0]


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def _answer(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


# Errors that say something about the vendor (client mistakes such as bad audio do not).
_VENDOR_ERRORS = frozenset({"vendor-rejected", "vendor-error", "timeout"})
# Utterances failed in a row before a vendor counts as down rather than backing off.
DOWN_AFTER = 3


class VendorStates:
    """Each vendor's recent record, for /healthz and the systemd status line."""

    def __init__(self, names: list[str]) -> None:
        self._states: dict[str, dict[str, Any]] = {
            name: {"state": "idle", "failures_in_a_row": 0, "last_error": None} for name in names
        }

    def success(self, vendor: str) -> None:
        self._states[vendor] = {"state": "ok", "failures_in_a_row": 0, "last_error": None}

    def failure(self, vendor: str, code: str, message: str, fatal: bool) -> None:
        if code not in _VENDOR_ERRORS or vendor not in self._states:
            return
        state = self._states[vendor]
        state["failures_in_a_row"] += 1
        state["last_error"] = message
        if fatal:
            state["state"] = "rejected"
        elif state["failures_in_a_row"] >= DOWN_AFTER:
            state["state"] = "down"
        else:
            state["state"] = "backing off"

    @property
    def healthy(self) -> bool:
        return all(state["state"] not in ("rejected", "down") for state in self._states.values())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: dict(state) for name, state in self._states.items()}

    def summary(self) -> str:
        return ", ".join(f"{name} {state['state']}" for name, state in self._states.items()) or "no vendors"
