"""The one WebSocket transport every cloud vendor's codec runs over.

A ``WebSocketAdapter`` describes the connection (``prepare`` → ``ConnectRequest``: URL, headers, pings).
``VendorStream``, the WebSocket ``Stream``, opens it, sends what the codec asks for and feeds every received
message back into the codec, queueing the typed events it returns. Handshake failures are classified here,
once for all vendors: 401/403 are fatal (a wrong key does not become right by retrying), other 4xx are fatal
configuration errors, 5xx/429 and network errors are transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close, CloseCode
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from .. import __version__
from ..redact import redact
from ..resilience.policy import DEFAULT_POLICY, ResiliencePolicy
from .base import BaseStream, Outgoing, Stream, StreamOptions, VendorAdapter, VendorError, VendorFailure
from .websocket import Link, LinkOptions, PlainLink, open_link

_LOGGER = logging.getLogger(__name__)

# Largest message accepted from a vendor; results are small JSON documents.
MAX_VENDOR_MESSAGE = 1 << 20
# How long a vendor gets to finish the closing handshake before the connection is dropped.
CLOSE_TIMEOUT = 2.0


def proxy_for(url: str) -> str | None:
    """The proxy the environment (``https_proxy``, ``no_proxy``, ...) names for a vendor URL; once per origin."""
    scheme, _, rest = url.partition("://")
    origin = rest.split("/", 1)[0].split("?", 1)[0]
    return _proxy_for_origin(f"{scheme}://{origin}/")


@lru_cache(maxsize=64)
def _proxy_for_origin(origin_url: str) -> str | None:
    # The environment does not change while the daemon runs; parsing the URL and scanning the environment cost
    # more than a whole audio message. The origin, not the URL: a URL may carry a one-time token.
    return get_proxy(parse_uri(origin_url))


def rejection_error(status: int, body: bytes) -> VendorError:
    """Turn an HTTP status that refused the WebSocket upgrade into a classified error."""
    snippet = body[:200].decode("utf-8", "replace").strip()
    detail = f": {snippet}" if snippet else ""
    if status in (401, 403):
        return VendorError(f"vendor rejected the credentials (HTTP {status}){detail}", str(status), fatal=True)
    if status == 429 or status >= 500:
        return VendorError(f"vendor unavailable (HTTP {status}){detail}", str(status))
    return VendorError(f"vendor refused the connection (HTTP {status}){detail}", str(status), fatal=True)


# The query parameter that carries a token in the URL of vendors that take one there (Tiro, Yating).
TOKEN_PARAMETER = "token"


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=<token>`` in its query (replacing a token already there, keeping the rest).

    The result carries a secret: never log it (``redact()`` masks ``token=`` values where one slips through).
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != TOKEN_PARAMETER]
    query.append((TOKEN_PARAMETER, token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_in(url: str) -> str:
    """The ``token`` query parameter of ``url`` ('' when there is none)."""
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key == TOKEN_PARAMETER:
            return value
    return ""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """How to open the vendor's WebSocket for one stream."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # The longest gap between WebSocket pings for this vendor; None: no pings, where the vendor mishandles them
    # (iApp, SAUC). The transport pings every ``ResiliencePolicy.ping_interval`` within that bound and gives the
    # link up after ``ResiliencePolicy.ping_timeout`` without an answer.
    ping_interval: float | None = None
    # Response headers worth logging (e.g. SAUC's X-Tt-Logid).
    log_headers: Sequence[str] = ()


class VendorStream(BaseStream):
    """One recognition stream over one WebSocket, driven by a codec."""

    adapter: WebSocketAdapter
    # The hot path: websockets' sans-I/O protocol on an asyncio Protocol (``WebSocketLink``). False: websockets'
    # asyncio client for every connection, as for those through a proxy (tests compare the two).
    lean_links: ClassVar[bool] = True

    def __init__(
        self, adapter: WebSocketAdapter, options: StreamOptions, policy: ResiliencePolicy = DEFAULT_POLICY
    ) -> None:
        super().__init__(adapter, options, policy)
        self._link: Link | None = None

    async def connect(self) -> None:
        """Open the connection and start the stream; raises ``VendorFailure``."""
        started = time.monotonic()
        timeout = self.adapter.settings.connect_timeout
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that meets a finished call.
            async with asyncio.timeout(timeout):
                request = await self.adapter.prepare(self.options)
                self._link = await self._open(request, timeout)
        except VendorFailure:
            raise
        except InvalidStatus as exc:
            raise VendorFailure(rejection_error(exc.response.status_code, bytes(exc.response.body or b""))) from None
        except (InvalidURI, ValueError) as exc:
            raise VendorFailure(VendorError(f"bad vendor URL: {redact(str(exc))}", fatal=True)) from None
        except TimeoutError:
            raise VendorFailure(VendorError(f"connecting to the vendor timed out after {timeout:g} s")) from None
        except (OSError, InvalidHandshake) as exc:
            raise VendorFailure(VendorError(f"cannot connect to the vendor: {redact(str(exc))}")) from None
        self.connect_seconds = time.monotonic() - started
        self._limit_unacknowledged_data()
        response = self._link.response
        if response is not None:
            for name in request.log_headers:
                value = response.headers.get(name)
                if value:
                    _LOGGER.info("%s %s: %s", self.adapter.name, name, value)
        await self.send(self.codec.start())
        if self.codec.ready:
            self._ready.set()

    async def _open(self, request: ConnectRequest, timeout: float) -> Link:
        # Where the vendor answers pings, they detect a dead link within the policy's bound.
        pings = request.ping_interval is not None
        ping_interval = min(request.ping_interval or 0, self.policy.ping_interval) if pings else None
        ping_timeout = self.policy.ping_timeout if pings else None
        options = LinkOptions(
            url=request.url,
            headers=request.headers,
            user_agent=f"asr-daemon/{__version__}",
            max_size=MAX_VENDOR_MESSAGE,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            on_message=self._on_message,
            on_closed=self._on_closed,
        )
        proxy = proxy_for(request.url)
        if proxy is None and self.lean_links:
            try:
                return await open_link(options)
            except InvalidStatus as exc:
                if not 300 <= exc.response.status_code < 400:
                    raise
                # A redirect: websockets' own client follows it.
        return await PlainLink.open(options, proxy=proxy, open_timeout=timeout)

    async def send(self, messages: Iterable[Outgoing]) -> None:
        """Send messages; a closed connection is reported through the events, not raised here."""
        link = self._link
        if link is None:
            return
        for message in messages:
            await link.send(message)

    async def send_audio(self, pcm: bytes) -> None:
        await self.send(self.codec.send_audio(pcm))

    def send_audio_now(self, pcm: bytes) -> bool:
        """Hot path of ``send_audio`` (the session's, once per vendor message): the frames are written at once.

        ``send()`` may wait for the socket's buffer to drain. This writes the same frames at once, and only where
        ``send()`` would not wait either: the link is open, no other send is waiting and the socket's buffer is
        below its high-water mark. Otherwise nothing is encoded or sent and the caller uses ``send_audio``.
        tests/test_session_send.py checks that both paths give the vendor the same messages.
        """
        link = self._link
        if link is None or not link.can_send_now():
            return False
        link.send_now(self.codec.send_audio(pcm))
        return True

    async def end(self) -> None:
        await self.send(self.codec.end())
        self.end_sent.set()

    def _limit_unacknowledged_data(self) -> None:
        """A path that goes dark while we send is noticed by TCP itself within the policy's bound."""
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        transport = self._link.transport if self._link is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if option is None or sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int(self.policy.tcp_user_timeout * 1000))

    async def aclose(self) -> None:
        """Close the connection; returns once nothing more will arrive."""
        if self._link is not None:
            # A vendor that ignores our close frame must not hold the session: the close timeout bounds it.
            await self._link.close()
        self._closed.set()

    def _on_message(self, message: str | bytes) -> None:
        if self.closed:
            return
        try:
            events = self.codec.receive(message)
        except Exception as exc:  # a codec bug must end this stream, not the daemon
            _LOGGER.exception("%s: failed to handle a vendor message", self.adapter.name)
            self._emit([VendorError(f"internal error handling a vendor message: {exc}")])
            if self._link is not None:
                self._link.abort()
            return
        self._emit(events)

    def _on_closed(self, received: Close | None, sent: Close | None) -> None:
        if self.closed:
            return
        if received is None and sent is not None and sent.code == CloseCode.INTERNAL_ERROR and not self.codec.completed:
            # We gave up on the link (pings unanswered): that is a dead link, never the vendor's way of ending
            # a stream (Tiro's proxy ends streams without a close frame, which must not be confused with it).
            self._emit([VendorError(f"the link to the vendor died ({sent.reason or 'no answer to pings'})")])
        else:
            code = received.code if received is not None else None
            reason = received.reason if received is not None else ""
            self._emit(self.codec.connection_closed(code, reason))
        self._closed.set()


class WebSocketAdapter(VendorAdapter):
    """A cloud vendor reached over one WebSocket per stream: ``prepare`` says how to open it."""

    stream_class: ClassVar[type[Stream]] = VendorStream

    @abstractmethod
    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        """Everything before the WebSocket handshake (may do I/O, e.g. fetch a one-time token)."""

    def open_stream(self, options: StreamOptions, policy: ResiliencePolicy) -> VendorStream:
        return VendorStream(self, options, policy)
