"""Run test code in private network namespaces, so no multicast ever reaches the machine's real interfaces.

From a test (in the machine's namespace, where nothing network-related may run)::

    pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=netns_unavailable() or "")
    events = run_in_netns("tests.test_x:_scenario", {"port": 1}, timeout=30)

``run_in_netns`` starts ``python -m tests.support.netns`` under ``unshare --net``; that child refuses to run
unless it sees no interface but ``lo``, then calls the function (sync or async) with the arguments and
reports what it returns. Inside a namespace, a scenario builds its LAN with ``veth()`` and runs the "other
host" as a ``Peer``: a second child in a namespace of its own, which gets the far end of the veth pair.
Both sides talk with one-line JSON messages: ``emit()`` (child → parent) and ``Peer.send()`` /
``next_command()`` (parent → child).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
_PREFIX = "@@ "
_UNSHARE_TRIES = (["unshare", "--net"], ["unshare", "--net", "--map-root-user"])


class NetnsError(Exception):
    """A namespace child failed; the message carries its stderr."""


@functools.cache
def _unshare_command() -> tuple[list[str] | None, str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None, "needs unshare (util-linux) and ip (iproute2)"
    failures = []
    for command in _UNSHARE_TRIES:
        probe = subprocess.run(
            [*command, "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if probe.returncode == 0:
            return command, ""
        failures.append(f"{' '.join(command)}: {probe.stderr.strip() or probe.returncode}")
    return None, "cannot create a private network namespace with veth links (" + "; ".join(failures) + ")"


def netns_unavailable() -> str | None:
    """Why private network namespaces cannot be used here, or None when they can."""
    command, reason = _unshare_command()
    return None if command is not None else reason


def run_in_netns(target: str, args: dict[str, Any] | None = None, *, timeout: float = 60) -> list[Any]:
    """Run ``module:function`` in a fresh network namespace; returns what it emitted (its result last)."""
    command, reason = _unshare_command()
    if command is None:
        raise NetnsError(reason)
    child = subprocess.run(
        [*command, sys.executable, "-m", "tests.support.netns", target, json.dumps(args or {})],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_child_env(),
        check=False,
    )
    events = [json.loads(line[len(_PREFIX) :]) for line in child.stdout.splitlines() if line.startswith(_PREFIX)]
    if child.returncode != 0:
        raise NetnsError(f"{target} failed (exit {child.returncode}); emitted {events}\n{child.stderr[-6000:]}")
    return events


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# --- inside a namespace ---------------------------------------------------------------------------------


def emit(message: Any) -> None:
    """Send one JSON message to the parent process."""
    sys.stdout.write(_PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def ip(*args: str) -> None:
    """Run ``ip ARGS`` (only ever called inside a private namespace)."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def veth(name: str, address: str | None, *, peer: str) -> None:
    """Create the veth pair ``name``/``peer`` and bring ``name`` up (with ``address``, a CIDR, if given)."""
    ip("link", "add", name, "type", "veth", "peer", "name", peer)
    if address is not None:
        ip("address", "add", address, "dev", name)
    ip("link", "set", name, "up", "multicast", "on")


def assert_private_namespace() -> None:
    """Refuse to go on unless this namespace has no interface but loopback (i.e. it is fresh and private)."""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        sys.stderr.write(f"refusing to run: not a fresh private network namespace (interfaces: {names})\n")
        raise SystemExit(3)


def sysctl(key: str, value: str) -> None:
    """Set a kernel parameter of this network namespace (``net.ipv6.conf.v0.accept_dad``)."""
    Path("/proc/sys", *key.split(".")).write_text(value)


async def adopt_interface(name: str, address: str | None, *, within: float = 10) -> None:
    """Wait for ``name`` to be moved into this namespace, then configure it and bring it up."""
    async with asyncio.timeout(within):
        # No event tells us when the link arrives: poll.
        while name not in {n for _, n in socket.if_nameindex()}:
            await asyncio.sleep(0.02)
    if address is not None:
        ip("address", "add", address, "dev", name)
    ip("link", "set", name, "up", "multicast", "on")


class MdnsSniffer:
    """Counts mDNS packets (UDP port 5353, IPv4 or IPv6) crossing one interface, in either direction."""

    _ETH_P_ALL = 0x0003

    def __init__(self, interface: str) -> None:
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self._ETH_P_ALL))
        self._socket.bind((interface, 0))
        self._socket.setblocking(False)
        self._count = 0

    def count(self) -> int:
        while True:
            try:
                frame = self._socket.recv(65535)
            except BlockingIOError:
                return self._count
            self._count += _is_mdns(frame)

    def close(self) -> None:
        self._socket.close()


def _is_mdns(frame: bytes) -> bool:
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0800 and len(frame) >= 34:
        header = (frame[14] & 0x0F) * 4
        udp = 14 + header
        return frame[23] == 17 and int.from_bytes(frame[udp + 2 : udp + 4], "big") == 5353
    if ethertype == 0x86DD and len(frame) >= 58:
        return frame[20] == 17 and int.from_bytes(frame[56:58], "big") == 5353
    return False


_commands: asyncio.StreamReader | None = None


async def next_command() -> Any | None:
    """The next message from ``Peer.send()``, or None once the parent closed our stdin."""
    global _commands
    if _commands is None:
        _commands = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(_commands), sys.stdin)
    line = await _commands.readline()
    return json.loads(line) if line.strip() else None


class Peer:
    """Another "host": a child in its own network namespace, given the veth end ``link`` of ours."""

    def __init__(self, target: str, args: dict[str, Any], *, link: str) -> None:
        self._target = target
        self._args = args
        self._link = link
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        # Already in a private namespace, as root of it: a plain unshare is enough.
        self._process = await asyncio.create_subprocess_exec(
            "unshare", "--net",
            sys.executable, "-m", "tests.support.netns", self._target, json.dumps(self._args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=_child_env(),
        )  # fmt: skip
        await self.expect("started", within=10)
        # unshare execs python in place, so the pid is the namespace's first process.
        ip("link", "set", self._link, "netns", str(self._process.pid))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    def send(self, message: Any) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps(message) + "\n").encode())

    async def next_message(self, *, within: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = (await self._process.stdout.readline()).decode()
                if not line:
                    raise NetnsError(f"peer {self._target} exited (code {await self._process.wait()})")
                if line.startswith(_PREFIX):
                    message: dict[str, Any] = json.loads(line[len(_PREFIX) :])
                    return message
                sys.stderr.write(f"[peer] {line}")

    async def expect(self, event: str, *, within: float) -> dict[str, Any]:
        """Skip messages until one with ``{"event": event}``; TimeoutError if none comes in time."""
        while True:
            message = await self.next_message(within=within)
            if message.get("event") == event:
                return message


def main() -> None:
    target, raw_args = sys.argv[1], sys.argv[2]
    assert_private_namespace()
    # NETNS_LOG_LEVEL=DEBUG shows python-zeroconf's own view in the failure output.
    logging.basicConfig(
        level=os.environ.get("NETNS_LOG_LEVEL", "WARNING"),
        format=f"%(relativeCreated)6.0f {os.getpid()} %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("zeroconf").setLevel(logging.getLogger().level)  # it defaults itself to WARNING
    ip("link", "set", "lo", "up")
    module_name, _, function_name = target.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module_name), function_name)
    emit({"event": "started"})
    result = function(**json.loads(raw_args))
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    emit({"event": "result", "result": result})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
