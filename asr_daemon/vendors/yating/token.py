"""The one-time token a Yating stream needs, bought over HTTP just before the WebSocket opens.

``POST <token_url>`` with the API key in a ``key`` header and ``{"pipeline": ..., "options": {...}}`` answers
``{"success": true, "auth_token": "..."}`` (201 documented, 200 accepted too). A token is good for one
connection within 60 s, so every stream buys its own. The request is one HTTP/1.1 exchange on the event loop
(``_post_on_loop``: no worker thread and its wake-ups per utterance, no HTTP library on a Pi); where the
environment names a proxy for the token URL it goes through the stdlib client in a worker thread instead
(``_post``), which honours ``https_proxy``/``no_proxy``. Both refuse redirects and answer alike.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ... import __version__
from ...redact import redact
from ..base import VendorError, VendorFailure
from ..websocket import default_tls

# Largest token response read; the real one is ~70 bytes.
MAX_RESPONSE_BYTES = 64 * 1024
# Largest status line plus headers read from the token service.
MAX_HEAD_BYTES = 64 * 1024
# Longest piece of a vendor answer quoted in an error.
_QUOTE_CHARS = 200


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the ``key`` header to wherever it points; treat it as an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def token_request_body(pipeline: str, custom_model_id: str | None = None) -> bytes:
    """The JSON body of the token request (``options`` only when there is something to put in it)."""
    body: dict[str, Any] = {"pipeline": pipeline}
    if custom_model_id:
        body["options"] = {"s3CusModelKey": custom_model_id}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def fetch_token(
    url: str, api_key: str, pipeline: str, custom_model_id: str | None = None, *, request_timeout: float = 5.0
) -> str:
    """A fresh one-time token; raises ``VendorFailure`` (fatal for a rejected key or request)."""
    body = token_request_body(pipeline, custom_model_id)
    if _proxied(url):
        status, payload = await asyncio.to_thread(_post, url, api_key, body, request_timeout)
    else:
        status, payload = await _post_on_loop(url, api_key, body, request_timeout)
    return parse_token_response(status, payload)


def parse_token_response(status: int, payload: bytes) -> str:
    """The token from a response, or the classified ``VendorFailure`` the response stands for."""
    if status in (401, 403):
        raise _failure(f"Yating rejected the API key (HTTP {status}{_said(payload)})", status, fatal=True)
    if status == 429 or status >= 500:
        raise _failure(f"Yating token service unavailable (HTTP {status}{_said(payload)})", status)
    if status not in (200, 201):
        # 3xx (a redirect we refuse) and other 4xx: a wrong URL or request; retrying will not help.
        said = _said(payload)
        message = f"Yating refused the token request (HTTP {status}{said}); check token_url and pipelines"
        raise _failure(message, status, fatal=True)
    document = _json(payload)
    token = document.get("auth_token") if document is not None else None
    if document is not None and document.get("success") is False:
        raise _failure(f"Yating token request failed{_said(payload)}", status)
    if not isinstance(token, str) or not token.strip():
        raise _failure(f"Yating token response has no auth_token{_said(payload)}", status)
    return token.strip()


def _post(url: str, api_key: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """Blocking POST (run in a thread); returns status and body, or raises ``VendorFailure``."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise _failure("bad Yating token_url: expected an http:// or https:// URL", None, fatal=True)
    headers = {"key": api_key, "Content-Type": "application/json", "User-Agent": f"asr-daemon/{__version__}"}
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        try:
            payload = exc.read(MAX_RESPONSE_BYTES)
        except (OSError, ValueError, AttributeError):
            payload = b""
        finally:
            exc.close()
        return int(exc.code), payload
    except ValueError as exc:  # a URL urllib cannot use
        raise _failure(f"bad Yating token_url: {redact(str(exc))}", None, fatal=True) from None
    except TimeoutError:
        raise _failure(f"Yating token request timed out after {timeout:g} s", None) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _failure(f"cannot reach the Yating token service: {redact(str(reason))}", None) from None


@lru_cache(maxsize=16)
def _proxy_for(scheme: str, host: str) -> bool:
    # The environment does not change while the daemon runs: looked up once per origin.
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


def _proxied(url: str) -> bool:
    """The environment names a proxy the stdlib client would use for ``url``."""
    parts = urllib.parse.urlsplit(url)
    return _proxy_for(parts.scheme, parts.hostname or "")


async def _post_on_loop(url: str, api_key: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """``_post`` on the event loop: one HTTP/1.1 request on a connection of its own; the same answers and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _failure("bad Yating token_url: expected an http:// or https:// URL", None, fatal=True)
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:  # a port urllib cannot read
        raise _failure(f"bad Yating token_url: {redact(str(exc))}", None, fatal=True) from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if any(c in value for value in (target, api_key) for c in "\r\n"):
        # What the stdlib client refuses too: a line break would end the header and start another (never quoted).
        raise _failure("bad Yating token_url or api_key: contains a line break", None, fatal=True)
    shown_host = f"[{host}]" if ":" in host else host
    default_port = port == (443 if secure else 80)
    head = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: {shown_host if default_port else f'{shown_host}:{port}'}\r\n"
        f"key: {api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"User-Agent: asr-daemon/{__version__}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=default_tls() if secure else None, limit=MAX_HEAD_BYTES
            )
            writer.write(head.encode("latin-1") + body)
            return await _read_response(reader)
    except TimeoutError:
        raise _failure(f"Yating token request timed out after {timeout:g} s", None) from None
    except UnicodeEncodeError:
        message = "bad Yating token_url or api_key: not representable in an HTTP request"
        raise _failure(message, None, fatal=True) from None
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        reason = exc if isinstance(exc, OSError) else "the token service sent a malformed HTTP response"
        raise _failure(f"cannot reach the Yating token service: {redact(str(reason))}", None) from None
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body (at most ``MAX_RESPONSE_BYTES``) of one HTTP/1.x response; ValueError when malformed."""
    status_line = (await reader.readuntil(b"\r\n")).decode("latin-1")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError("not an HTTP/1.x response")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    head_bytes = len(status_line)
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        head_bytes += len(line)
        if head_bytes > MAX_HEAD_BYTES:
            raise ValueError("response headers too large")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise ValueError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        payload = bytearray()
        while len(payload) < MAX_RESPONSE_BYTES:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            payload += await reader.readexactly(min(size, MAX_RESPONSE_BYTES - len(payload)))
            if len(payload) < MAX_RESPONSE_BYTES:
                await reader.readexactly(2)  # the chunk's CRLF
        return status, bytes(payload[:MAX_RESPONSE_BYTES])
    length = headers.get("content-length")
    if length is not None:
        return status, await reader.readexactly(min(int(length), MAX_RESPONSE_BYTES))
    payload = bytearray()  # no length given: the body ends with the connection
    while len(payload) < MAX_RESPONSE_BYTES and (block := await reader.read(MAX_RESPONSE_BYTES - len(payload))):
        payload += block
    return status, bytes(payload)


def _failure(message: str, status: int | None, *, fatal: bool = False) -> VendorFailure:
    return VendorFailure(VendorError(message, None if status is None else str(status), fatal=fatal))


def _json(payload: bytes) -> Mapping[str, Any] | None:
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _said(payload: bytes) -> str:
    """What the vendor said in an error body, as ``: ...`` (its error/message/detail, else the raw text)."""
    document = _json(payload)
    said: str | None = None
    if document is not None:
        texts = (v for k in ("error", "message", "detail") if isinstance(v := document.get(k), str))
        said = next(texts, None)
    if said is None:
        said = payload[: _QUOTE_CHARS * 4].decode("utf-8", "replace")
    flat = redact(" ".join(said.split()))
    if not flat:
        return ""
    return ": " + (flat if len(flat) <= _QUOTE_CHARS else flat[: _QUOTE_CHARS - 1] + "…")
