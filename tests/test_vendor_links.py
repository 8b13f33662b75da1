"""The vendor link's own work: framing, whole messages out of fragments, bad text, the closing handshake, redirects.

What a vendor receives and answers over either link is compared in tests/test_session_send.py; dead links and
blackholed paths are in tests/test_resilience.py.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.streams import StreamReader

from asr_daemon.audio.normalise import AudioFormat
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.tls import make_certificate
from asr_daemon.session import Session, SessionLimits
from asr_daemon.vendors import websocket
from asr_daemon.vendors.websocket import LinkOptions, WebSocketLink, client_frame, open_link
from tests.support.vendor_streams import VENDORS, VendorStreams, tones


def parse_client_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 640, 65535, 65536, 200_000])
def test_client_frames_parse_as_websockets_reads_them(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for opcode in (Opcode.BINARY, Opcode.TEXT):
        frame = parse_client_frame(client_frame(opcode, payload))
        assert (frame.opcode, frame.fin, bytes(frame.data)) == (opcode, True, payload)


def test_every_frame_gets_its_own_masking_key() -> None:
    keys = {client_frame(Opcode.BINARY, b"x" * 10)[2:6] for _ in range(3000)}  # 3000 keys span the pool's refills
    assert len(keys) >= 2990  # 32-bit random keys: a handful of repeats at most


class Received:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed: asyncio.Future[tuple[Close | None, Close | None]] = asyncio.get_running_loop().create_future()

    def message(self, message: str | bytes) -> None:
        self.messages.append(message)

    def close(self, received: Close | None, sent: Close | None) -> None:
        self.closed.set_result((received, sent))


@asynccontextmanager
async def server(handler: Callable[[ServerConnection], Awaitable[None]], **options: object) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **options) as running:  # type: ignore[arg-type]
        port = running.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/asr"


async def link_to(url: str, received: Received, *, close_timeout: float = 2.0) -> WebSocketLink:
    options = LinkOptions(
        url=url,
        headers={"Authorization": "Bearer k"},
        user_agent="asr-daemon/test",
        max_size=1 << 20,
        ping_interval=None,
        ping_timeout=None,
        close_timeout=close_timeout,
        on_message=received.message,
        on_closed=received.close,
    )
    return await open_link(options)


def run_on(event_loop: str, test: Callable[[], Awaitable[None]]) -> None:
    """The daemon runs on uvloop by default: its transports are not asyncio's classes, so both loops are tested."""
    if event_loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(test())
    else:
        asyncio.run(test())


LOOPS = pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])


@LOOPS
def test_fragmented_messages_arrive_whole_and_bad_text_fails_the_link(event_loop: str) -> None:
    run_on(event_loop, fragmented_messages_arrive_whole_and_bad_text_fails_the_link)


async def fragmented_messages_arrive_whole_and_bad_text_fails_the_link() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(['{"text": ', '"kitchen', ' light"}'])
        await ws.send([b"\x01\x02", b"\x03"])
        ws.protocol.send_text(b"\xff\xfe not utf-8")
        ws.send_data()
        await ws.wait_closed()

    received = Received()
    async with server(handler) as url:
        await link_to(url, received)
        _, close_sent = await asyncio.wait_for(received.closed, 10)
    assert received.messages == ['{"text": "kitchen light"}', b"\x01\x02\x03"]
    assert close_sent is not None and close_sent.code == CloseCode.INVALID_DATA


@LOOPS
def test_a_vendor_that_never_finishes_the_closing_handshake_is_dropped_after_the_close_timeout(event_loop: str) -> None:
    run_on(event_loop, a_vendor_that_never_finishes_the_closing_handshake_is_dropped_after_the_close_timeout)


async def a_vendor_that_never_finishes_the_closing_handshake_is_dropped_after_the_close_timeout() -> None:
    async def handler(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # our close frame is never read, let alone answered
        await asyncio.sleep(3)

    received = Received()
    async with server(handler, close_timeout=1) as url:
        link = await link_to(url, received, close_timeout=0.5)
        started = time.monotonic()
        await asyncio.wait_for(link.close(), 10)
        took = time.monotonic() - started
        close_received, close_sent = await received.closed
    assert took < 5  # bounded by the close timeout, not by the vendor
    assert close_received is None and close_sent is not None and close_sent.code == CloseCode.NORMAL_CLOSURE


@LOOPS
def test_a_refused_upgrade_raises_with_the_status_and_the_body(event_loop: str) -> None:
    run_on(event_loop, a_refused_upgrade_raises_with_the_status_and_the_body)


async def a_refused_upgrade_raises_with_the_status_and_the_body() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(401, "bad key\n")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("not reached")

    async with server(handler, process_request=refuse) as url:
        with pytest.raises(InvalidStatus) as refused:
            await link_to(url, Received())
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b"bad key\n"


@LOOPS
def test_a_vendor_url_that_redirects_is_followed_to_the_vendor(event_loop: str) -> None:
    run_on(event_loop, a_vendor_url_that_redirects_is_followed_to_the_vendor)


async def a_vendor_url_that_redirects_is_followed_to_the_vendor() -> None:
    vendor = VENDORS[0]
    emu = vendor.emulator_class(EmulatorOptions())
    async with emu.running():

        def redirect(connection: ServerConnection, request: Request) -> Response:
            response = connection.respond(302, "")
            response.headers = Headers(response.headers)
            response.headers["Location"] = emu.url
            return response

        async def handler(ws: ServerConnection) -> None:
            raise AssertionError("not reached")

        async with server(handler, process_request=redirect) as moved:
            adapter = vendor.adapter(emu, api_key="test-key", url=moved)
            session = Session(adapter, vendor.options, SessionLimits(final_timeout=10))
            async with session:
                audio = tones(1)
                for offset in range(0, len(audio), 3200):
                    session.feed(audio[offset : offset + 3200], AudioFormat(16000, 2, 1))
                transcript = await session.finish()
    assert transcript.text
    assert len(emu.streams) == 1


@pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])
async def test_a_finished_session_and_its_vendor_link_are_freed_without_the_cyclic_collector(
    vendor: VendorStreams,
) -> None:
    # Hundreds of utterances an hour: what one leaves in reference cycles waits for the collector, whose passes
    # over it pause every stream. Nothing of a finished session may need it.
    emu = vendor.emulator_class(EmulatorOptions())
    async with emu.running():
        adapter = vendor.adapter(emu, api_key="test-key")
        gc.collect()
        gc.disable()
        try:
            session = Session(adapter, vendor.options, SessionLimits(final_timeout=10))
            async with session:
                audio = tones(1)
                for offset in range(0, len(audio), 3200):
                    session.feed(audio[offset : offset + 3200], AudioFormat(16000, 2, 1))
                assert (await session.finish()).text
            stream = session._stream
            assert stream is not None
            gone = [weakref.ref(session), weakref.ref(stream)]
            del session, stream
            for _ in range(3):
                await asyncio.sleep(0)
            assert [ref() for ref in gone] == [None, None]
        finally:
            gc.enable()


async def test_wss_connections_load_the_systems_certificates_once_not_per_utterance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading the system's CA bundle costs ~23 ms of CPU here (more on a Pi): paid per utterance before, it was
    # most of what a wss:// vendor connection cost.
    certificate = make_certificate(tmp_path, ["localhost"])
    server_tls = certificate.server_context()
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.certificate))
    websocket._default_tls.cache_clear()
    made: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(websocket.ssl, "create_default_context", counting)

    async def handler(ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=server_tls) as running:
        url = f"wss://localhost:{running.sockets[0].getsockname()[1]}/asr"
        for _ in range(3):
            received = Received()
            link = await link_to(url, received)
            await link.close()
            assert received.messages == ["hello"]
    assert len(made) == 1
    websocket._default_tls.cache_clear()
