"""The wake-up floor: the CPU a Python process costs when it is woken for every audio chunk and does nothing.

Every audio chunk wakes the daemon. The kernel, the event loop and the interpreter cost CPU before the daemon
does anything with the bytes, and at one stream nothing shares that cost. ``python -m bench.floor`` is a
receiver that does nothing else: it runs the daemon's own event loop (uvloop when installed, as the daemon's
``--event-loop auto`` does), accepts connections on 127.0.0.1 and drops what it reads. The benchmark streams the
same encoded chunks to it at the same pace and concurrency as each level. Its CPU per real-time stream is
what any Python process woken per chunk pays on this machine; the daemon's figure above it is the daemon's
own work.

The receiver prints ``<port> <event loop>`` once listening, answers each ``cpu`` line on its stdin with its
CPU seconds so far (``time.process_time``: exact, where /proc counts in 10 ms ticks) and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Discard(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        """Nothing: what is measured is being woken, reading and going back to sleep."""


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Discard, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print(port, type(loop).__module__.split(".")[0], flush=True)
    async with server:
        while line := await commands.readline():
            if line.strip() == b"cpu":
                print(time.process_time(), flush=True)


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


@dataclass
class FloorReceiver:
    """The running receiver, seen from the benchmark."""

    process: asyncio.subprocess.Process
    port: int
    event_loop: str

    async def cpu_seconds(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"cpu\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(10):
            return float(await self.process.stdout.readline())


@contextlib.asynccontextmanager
async def running_floor() -> AsyncIterator[FloorReceiver]:
    """``python -m bench.floor`` as a child process, stopped (stdin closed, then killed if need be) on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor", cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(20):
            first = (await process.stdout.readline()).decode().split()
        if len(first) != 2:
            raise RuntimeError(f"bench.floor did not start (exit code {await process.wait()})")
        yield FloorReceiver(process, int(first[0]), first[1])
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


if __name__ == "__main__":
    main()
