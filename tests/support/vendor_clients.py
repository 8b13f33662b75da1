"""What the vendors' own clients put on the wire, for replaying against the emulators.

``RawWebSocket`` speaks WebSocket the way AmiVoice's Wrp library does: an upgrade request without
``Sec-WebSocket-Version`` and unmasked frames (RFC 6455 requires both). The audio helpers make test "speech"
that the emulators' energy segmentation cuts into sentences.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import os
import ssl
import wave
from array import array
from dataclasses import dataclass
from urllib.parse import urlsplit

TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def tone(ms: int, hz: int = 440) -> bytes:
    samples = array("h", (round(8000 * math.sin(2 * math.pi * hz * i / 16000)) for i in range(16 * ms)))
    return samples.tobytes()


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


def wav_file(pcm: bytes, rate: int = 16000) -> bytes:
    """``pcm`` (16-bit mono) as a WAV file, header included."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class RawWebSocket:
    """A WebSocket client that sends what Wrp sends: no ``Sec-WebSocket-Version``, frames without a mask."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int) -> None:
        self._reader = reader
        self._writer = writer
        self.status = status

    @classmethod
    async def connect(cls, url: str, tls: ssl.SSLContext | None = None) -> RawWebSocket:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "wss" else 80)
        reader, writer = await asyncio.open_connection(host, port, ssl=tls if parts.scheme == "wss" else None)
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (
            f"GET {target} HTTP/1.1\r\n"
            "User-Agent: Wrp/1.0.05 Python/3.11.7 (linux)\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "\r\n"
        )
        writer.write(request.encode("ascii"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return cls(reader, writer, status)

    async def send(self, opcode: int, payload: bytes) -> None:
        length = len(payload)
        if length < 126:
            head = bytes((0x80 | opcode, length))
        elif length < 65536:
            head = bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")
        self._writer.write(head + payload)
        await self._writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send(TEXT, text.encode("utf-8"))

    async def receive(self) -> Frame:
        """The next frame from the server (raises ``asyncio.IncompleteReadError`` when the connection ends)."""
        first, second = await self._reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self._reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self._reader.readexactly(8), "big")
        mask = await self._reader.readexactly(4) if second & 0x80 else b""
        payload = await self._reader.readexactly(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return Frame(first & 0x0F, payload)

    async def close(self) -> None:
        # Wrp shuts the socket down without a close frame.
        self._writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self._writer.wait_closed()
