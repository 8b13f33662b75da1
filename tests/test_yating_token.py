"""Yating's token request on the event loop answers what the stdlib client in a worker thread answers.

``fetch_token`` posts on the loop (``_post_on_loop``) unless the environment names a proxy, where the stdlib
client (``_post``) takes it. Against the same local HTTP server, both must send the same request and read the
same status and body; redirects are never followed; a silent service times out; the key never shows in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asr_daemon.emulators.tls import make_certificate
from asr_daemon.vendors.base import VendorFailure
from asr_daemon.vendors.yating import token
from asr_daemon.vendors.yating.token import _post, _post_on_loop, fetch_token

KEY = "sk-secret-yating-key"
BODY = token.token_request_body("asr-zh-en-std")


class TokenService:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with ``response`` and records the requests."""

    def __init__(self, response: bytes | None) -> None:
        self.response = response
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            self.requests.append(head + await reader.readexactly(length))
            if self.response is None:
                await asyncio.sleep(30)  # never answers
            writer.write(self.response)
            await writer.drain()
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{self.port}/v1/token?a=1"
            server.close()


def response(status: str, body: bytes, *, chunked: bool = False, length: bool = True, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]) if part) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


TOKEN_BODY = b'{"success": true, "auth_token": "tok-123"}'
RESPONSES = {
    "created": response("201 Created", TOKEN_BODY),
    "ok-chunked": response("200 OK", TOKEN_BODY, chunked=True),
    "ok-until-close": response("200 OK", TOKEN_BODY, length=False),
    "rejected": response("401 Unauthorized", b'{"error": "invalid key"}'),
    "unavailable": response("503 Service Unavailable", b"busy"),
    "redirect": response("302 Found", b"", extra="Location: http://127.0.0.1:1/steal\r\n"),
}


def normalised(request: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    # How each client says it closes is its own business; what the vendor reads is the rest.
    for name in ("connection", "accept-encoding"):
        headers.pop(name, None)
    return lines[0], headers, body


@pytest.mark.parametrize("case", list(RESPONSES))
async def test_the_loop_reads_what_the_stdlib_client_reads(case: str) -> None:
    service = TokenService(RESPONSES[case])
    async with service.running() as url:
        threaded = await asyncio.to_thread(_post, url, KEY, BODY, 5.0)
        on_loop = await _post_on_loop(url, KEY, BODY, 5.0)
    assert on_loop == threaded
    assert len(service.requests) == 2, "one request each; a redirect is not followed"
    assert normalised(service.requests[1]) == normalised(service.requests[0])
    line, headers, body = normalised(service.requests[1])
    assert line == "POST /v1/token?a=1 HTTP/1.1"
    assert headers["key"] == KEY
    assert body == BODY


async def test_fetch_token_classifies_the_loops_answers() -> None:
    service = TokenService(RESPONSES["ok-chunked"])
    async with service.running() as url:
        assert await fetch_token(url, KEY, "asr-zh-en-std") == "tok-123"
        for case, fatal in (("rejected", True), ("unavailable", False), ("redirect", True)):
            service.response = RESPONSES[case]
            with pytest.raises(VendorFailure) as failure:
                await fetch_token(url, KEY, "asr-zh-en-std")
            assert failure.value.error.fatal is fatal, case
            assert KEY not in failure.value.error.message


async def test_a_silent_token_service_times_out_as_a_transient_failure() -> None:
    service = TokenService(None)
    async with service.running() as url:
        with pytest.raises(VendorFailure) as failure:
            await fetch_token(url, KEY, "asr-zh-en-std", request_timeout=0.3)
    assert "timed out after 0.3 s" in failure.value.error.message
    assert not failure.value.error.fatal


async def test_an_unreachable_service_and_a_bad_url_fail_without_the_key() -> None:
    with pytest.raises(VendorFailure) as unreachable:
        await fetch_token("http://127.0.0.1:1/v1/token", KEY, "p")
    assert not unreachable.value.error.fatal
    assert unreachable.value.error.message.startswith("cannot reach the Yating token service")
    with pytest.raises(VendorFailure) as bad:
        await fetch_token("ftp://127.0.0.1/v1/token", KEY, "p")
    assert bad.value.error.fatal
    with pytest.raises(VendorFailure) as broken_key:
        await fetch_token("http://127.0.0.1:1/v1/token", KEY + "\r\nX-Evil: 1", "p")
    assert broken_key.value.error.fatal
    for failure in (unreachable, bad, broken_key):
        assert KEY not in failure.value.error.message


async def test_a_proxy_in_the_environment_sends_the_request_through_the_stdlib_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def threaded(url: str, api_key: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        calls.append(url)
        return 201, TOKEN_BODY

    monkeypatch.setattr(token, "_post", threaded)
    monkeypatch.setenv("https_proxy", "http://proxy.lan:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    token._proxy_for.cache_clear()
    try:
        assert await fetch_token("https://tokens.example.com/v1/token", KEY, "p") == "tok-123"
    finally:
        token._proxy_for.cache_clear()
    assert calls == ["https://tokens.example.com/v1/token"]


async def test_https_is_verified_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certificate = make_certificate(tmp_path)
    served: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            served.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(RESPONSES["created"])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=certificate.server_context())
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/token"
    async with server:
        # A certificate nobody vouches for: refused like any unreachable service (transient), the key not sent.
        with pytest.raises(VendorFailure) as untrusted:
            await fetch_token(url, KEY, "p")
        assert not untrusted.value.error.fatal
        assert KEY not in untrusted.value.error.message
        assert served == []
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.certificate))  # now vouched for
        assert await fetch_token(url, KEY, "p") == "tok-123"
        server.close()
    assert len(served) == 1
