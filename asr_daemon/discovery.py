"""Zeroconf (mDNS/DNS-SD) announcement of the Wyoming server, so Home Assistant discovers it.

Usage, from the daemon once the Wyoming server listens (``port`` is the port it really bound)::

    async with ZeroconfAdvertiser(name="asr-daemon-pi", port=10300, bind_host="0.0.0.0", interfaces=["eth0"]):
        await serve_forever()

or ``ZeroconfAdvertiser.for_wyoming(settings.wyoming, port)``. Entering returns at once (probing the name
takes about a second and runs in the background, so it never delays start-up); leaving sends the goodbye
packets and closes the sockets, within ``close_timeout`` seconds. ``state`` and ``announced`` report what is
on the air (for a health endpoint); ``wait_announced()`` waits for the announcement.

What is announced: ``<name>._wyoming._tcp.local.`` with an SRV record for ``port`` and A records (AAAA too
with ``ipv6=True``) for the host's real LAN addresses. Home Assistant reads only the first usable address and
the port, and skips 0.0.0.0 and link-local addresses, so:

- server bound to one address: only that address is announced (``interfaces`` is ignored);
- bound to ``0.0.0.0``: the IPv4 addresses of ``interfaces`` (names such as ``eth0``/``wlan0``, or
  addresses of this host), by default of every interface that is up, can carry multicast, is not loopback
  and is not a container/VM/VPN interface (``docker0``, ``br-*``, ``veth*``, ``wg*``...: Home Assistant on
  the LAN cannot reach those, and it may pick the first address it gets);
- bound to ``""`` (both families): the same, plus global and unique-local IPv6 addresses with ``ipv6=True``;
- bound to ``::``: asyncio listens there on IPv6 only, so no IPv4 address is announced for it (nothing at
  all unless ``ipv6=True``; a warning says why);
- never 0.0.0.0, never link-local, never 127.x, unless the server is bound to loopback and nothing else:
  then 127.0.0.1 is announced with a loud warning, since Home Assistant on another machine cannot use it.

python-zeroconf's sockets are restricted to the announced addresses (its ``interfaces=`` argument), so no
multicast leaves through any other interface.

The instance name never changes by itself (Home Assistant's unique id is built from it). If another host
already answers for it, nothing is announced, an error says so, and the name is probed again at every
``refresh_interval`` until it is free. The addresses are re-read at the same interval: announcing starts
when the first address appears (a Pi that booted before DHCP finished) and follows address changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NamedTuple, Self

import ifaddr
from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .settings import WyomingSettings, check_instance_name

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."

# Wildcard hosts: the server listens on every address of the families they cover.
_WILDCARD_V4 = "0.0.0.0"
_WILDCARD_V6 = "::"
_WILDCARD_ANY = ""

_V6_ONLY_PROBLEM = (
    "the server is bound to :: which listens on IPv6 only, and IPv6 is not announced; Home Assistant "
    "needs IPv4: bind wyoming.uri to 0.0.0.0"
)
_V6_ONLY_NOTE = "the server is bound to :: (IPv6 only): Home Assistant, which needs IPv4, cannot use it"

# Interfaces skipped by default: bridges and links of containers, VMs and VPNs. Home Assistant on the LAN
# cannot reach their addresses, and it uses the first address it is given. Naming one explicitly in
# ``interfaces`` still announces it.
VIRTUAL_INTERFACE_PREFIXES = (
    "docker", "br-", "veth", "virbr", "vnet", "lxcbr", "lxdbr", "cni", "flannel", "podman",
    "hassio", "tailscale", "zt", "wg", "tun", "tap",
)  # fmt: skip

# Linux interface flags, read with SIOCGIFFLAGS (sysfs would show the host's namespace, not ours).
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000


AdvertiserState = Literal["stopped", "starting", "announced", "no-address", "name-conflict", "failed"]


class LanAddress(NamedTuple):
    """One announced address and the interface it belongs to."""

    interface: str
    address: str


@dataclass(frozen=True)
class NetInterface:
    """A network interface as address selection sees it (tests build these by hand)."""

    name: str
    addresses: tuple[str, ...]
    up: bool = True
    loopback: bool = False
    multicast: bool = True


@dataclass(frozen=True)
class Selection:
    """What to announce, and why some candidates were left out (one readable line each)."""

    addresses: tuple[LanAddress, ...]
    problems: tuple[str, ...] = ()

    @property
    def loopback_only(self) -> bool:
        return bool(self.addresses) and all(_ip(a.address).is_loopback for a in self.addresses)


def host_interfaces() -> list[NetInterface]:
    """The interfaces of this host (of the current network namespace), with their flags."""
    interfaces = []
    for adapter in ifaddr.get_adapters():
        addresses = tuple(ip.ip if isinstance(ip.ip, str) else ip.ip[0] for ip in adapter.ips)
        flags = _interface_flags(adapter.name)
        if flags is None:
            loopback = any(_ip(a).is_loopback for a in addresses)
            interfaces.append(NetInterface(adapter.name, addresses, loopback=loopback))
        else:
            interfaces.append(
                NetInterface(
                    adapter.name,
                    addresses,
                    up=bool(flags & _IFF_UP),
                    loopback=bool(flags & _IFF_LOOPBACK),
                    multicast=bool(flags & _IFF_MULTICAST),
                )
            )
    return interfaces


def _interface_flags(name: str) -> int | None:
    """The interface's IFF_* flags, or None where they cannot be read (then it is assumed usable)."""
    if sys.platform != "linux":
        return None
    import fcntl

    request = struct.pack("16sH22x", name.encode()[:15], 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
    except OSError:
        return None
    flags: int = struct.unpack_from("16sH", reply)[1]
    return flags


def lan_addresses(
    interfaces: Sequence[str] = (), *, ipv6: bool = False, system: Sequence[NetInterface] | None = None
) -> list[LanAddress]:
    """The addresses a server bound to every address would announce.

    ``interfaces``: names (``eth0``) or addresses of this host, in order of preference; empty means every
    suitable interface (see the module docstring). ``system`` replaces the host's interfaces (for tests).
    """
    families = (4, 6) if ipv6 else (4,)
    chosen = system if system is not None else host_interfaces()
    return list(_wildcard_selection(interfaces, families, chosen).addresses)


def select_addresses(
    bind_host: str,
    interfaces: Sequence[str] = (),
    *,
    ipv6: bool = False,
    system: Sequence[NetInterface] | None = None,
) -> Selection:
    """What to announce for a server bound to ``bind_host`` (an IP address or a wildcard, not a name)."""
    chosen = system if system is not None else host_interfaces()
    if bind_host == _WILDCARD_V6:
        # asyncio (so the Wyoming server) binds "::" with IPV6_V6ONLY: IPv4 clients cannot connect.
        if not ipv6:
            return Selection((), (_V6_ONLY_PROBLEM,))
        selection = _wildcard_selection(interfaces, (6,), chosen)
        return Selection(selection.addresses, (*selection.problems, _V6_ONLY_NOTE))
    if bind_host in (_WILDCARD_V4, _WILDCARD_ANY):
        # IPv6 only on request: Home Assistant reads only the A (IPv4) records.
        families = (4, 6) if ipv6 and bind_host == _WILDCARD_ANY else (4,)
        return _wildcard_selection(interfaces, families, chosen)
    selection = _bound_selection(bind_host, chosen)
    if interfaces:
        ignored = f"zeroconf interfaces {list(interfaces)} are ignored: the server is bound to {bind_host} only"
        selection = Selection(selection.addresses, (*selection.problems, ignored))
    return selection


def _wildcard_selection(wanted: Sequence[str], families: tuple[int, ...], system: Sequence[NetInterface]) -> Selection:
    found: list[LanAddress] = []
    problems: list[str] = []
    if not wanted:
        for interface in system:
            if interface.up and interface.multicast and not interface.loopback and not _is_virtual(interface):
                found.extend(LanAddress(interface.name, a) for a in interface.addresses if _announceable(a, families))
        return Selection(_unique(found), ())
    by_name = {i.name: i for i in system}
    for entry in wanted:
        if _is_ip(entry):
            owner = next((i for i in system if entry in i.addresses), None)
            if owner is None:
                problems.append(f"{entry} is not an address of this host (yet)")
            elif problem := _unusable_interface(owner) or _unusable_address(entry, families):
                problems.append(f"{entry} ({owner.name}) is not announced: {problem}")
            else:
                found.append(LanAddress(owner.name, entry))
        elif (named := by_name.get(entry)) is None:
            known = ", ".join(sorted(by_name)) or "none"
            problems.append(f"no interface named {entry!r} (this host has: {known})")
        elif problem := _unusable_interface(named):
            problems.append(f"interface {entry} is not announced: {problem}")
        else:
            usable = [a for a in named.addresses if _announceable(a, families)]
            if not usable:
                problems.append(f"interface {entry} has no usable IPv{'/'.join(map(str, families))} address (yet)")
            found.extend(LanAddress(entry, a) for a in usable)
    return Selection(_unique(found), tuple(problems))


def _bound_selection(bind_host: str, system: Sequence[NetInterface]) -> Selection:
    address = _ip(bind_host)
    if address.is_link_local:
        return Selection((), (f"{bind_host} is link-local: Home Assistant ignores such addresses",))
    if address.is_unspecified or address.is_multicast:
        return Selection((), (f"{bind_host} cannot be announced",))
    owner = next((i for i in system if any(_ip(a) == address for a in i.addresses)), None)
    if owner is None:
        return Selection((), (f"{bind_host} is not an address of this host (yet)",))
    return Selection((LanAddress(owner.name, bind_host),))


def _unusable_interface(interface: NetInterface) -> str | None:
    if interface.loopback:
        return "it is loopback (Home Assistant on another machine cannot reach it)"
    if not interface.up:
        return "the interface is down"
    if not interface.multicast:
        return "the interface cannot carry multicast"
    return None


def _unusable_address(address: str, families: tuple[int, ...]) -> str | None:
    parsed = _ip(address)
    if parsed.version not in families:
        return "its IP version is not announced for this server"
    if parsed.is_loopback:
        return "it is loopback (Home Assistant on another machine cannot reach it)"
    if parsed.is_link_local:
        return "it is link-local (Home Assistant ignores such addresses)"
    if parsed.is_unspecified or parsed.is_multicast:
        return "it is not a host address"
    return None


def _announceable(address: str, families: tuple[int, ...]) -> bool:
    return _unusable_address(address, families) is None and not (
        isinstance(parsed := _ip(address), ipaddress.IPv6Address) and parsed.ipv4_mapped is not None
    )


def _is_virtual(interface: NetInterface) -> bool:
    return interface.name.startswith(VIRTUAL_INTERFACE_PREFIXES)


def _unique(addresses: list[LanAddress]) -> tuple[LanAddress, ...]:
    seen: set[str] = set()
    unique = []
    for entry in addresses:
        if entry.address not in seen:
            seen.add(entry.address)
            unique.append(entry)
    return tuple(unique)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%", 1)[0])


def _is_ip(text: str) -> bool:
    try:
        _ip(text)
    except ValueError:
        return False
    return True


def describe(addresses: Sequence[LanAddress], port: int) -> str:
    """``192.168.1.20:10300 (eth0), [2001:db8::20]:10300 (eth0)`` for log lines."""
    return ", ".join(
        f"[{a.address}]:{port} ({a.interface})" if ":" in a.address else f"{a.address}:{port} ({a.interface})"
        for a in addresses
    )


class ZeroconfAdvertiser:
    """Announces the Wyoming server as ``<name>._wyoming._tcp.local.`` while the context is open."""

    def __init__(
        self,
        name: str,
        port: int,
        bind_host: str = _WILDCARD_V4,
        interfaces: Sequence[str] = (),
        *,
        ipv6: bool = False,
        refresh_interval: float | None = 30.0,
        close_timeout: float = 3.0,
        list_interfaces: Callable[[], Sequence[NetInterface]] = host_interfaces,
    ) -> None:
        self.name = check_instance_name(name)
        if not 0 < port < 65536:
            raise ValueError(f"zeroconf: port {port} is not a listening TCP port")
        for entry in interfaces:
            if _is_ip(entry) and (problem := _unusable_address(entry, (4, 6))):
                raise ValueError(f"zeroconf interfaces: {entry}: {problem}")
        self.port = port
        self.bind_host = bind_host.strip("[]")
        self.interfaces = tuple(interfaces)
        self.ipv6 = ipv6
        self.refresh_interval = refresh_interval
        self.close_timeout = close_timeout
        self._list_interfaces = list_interfaces
        self._task: asyncio.Task[None] | None = None
        self._zeroconf: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._announced: tuple[LanAddress, ...] = ()
        self._announced_event = asyncio.Event()
        self._last_problems: tuple[str, ...] = ()
        self._last_failure: str | None = None
        self._state: AdvertiserState = "stopped"

    @classmethod
    def for_wyoming(cls, settings: WyomingSettings, port: int, *, ipv6: bool = False) -> ZeroconfAdvertiser:
        """The advertiser for a Wyoming server configured by ``settings`` and listening on ``port``."""
        from urllib.parse import urlparse

        parsed = urlparse(settings.uri)
        if parsed.scheme != "tcp" or parsed.hostname is None:
            raise ValueError(f"wyoming.zeroconf needs a tcp:// uri, not {settings.uri!r}")
        return cls(settings.instance_name(), port, parsed.hostname, settings.zeroconf_interfaces, ipv6=ipv6)

    @property
    def service_name(self) -> str:
        return f"{self.name}.{SERVICE_TYPE}"

    @property
    def announced(self) -> tuple[LanAddress, ...]:
        """The addresses on the air right now (empty while probing, waiting or after a conflict)."""
        return self._announced

    @property
    def state(self) -> AdvertiserState:
        """Where the announcement stands (for a health endpoint)."""
        return self._state

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("ZeroconfAdvertiser already started")
        self._state = "starting"
        self._task = asyncio.create_task(self._run(), name=f"zeroconf {self.name}")

    async def stop(self) -> None:
        """Send goodbyes and close; bounded by ``close_timeout``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._withdraw()
        self._state = "stopped"

    async def wait_announced(self) -> None:
        """Return once the service is announced (wrap in ``asyncio.timeout``)."""
        await self._announced_event.wait()

    def _retry_note(self) -> str:
        return f" (will look again every {self.refresh_interval:g} s)" if self.refresh_interval else ""

    async def _run(self) -> None:
        while True:
            try:
                await self._refresh()
                self._last_failure = None
            except Exception as exc:
                # The announcement is a convenience: a zeroconf failure must never take the daemon down.
                if repr(exc) != self._last_failure:
                    _LOGGER.exception("zeroconf: announcing %s failed", self.name)
                self._last_failure = repr(exc)
                await self._withdraw()
                self._state = "failed"
            if self.refresh_interval is None:
                return
            await asyncio.sleep(self.refresh_interval)

    async def _refresh(self) -> None:
        selection = await self._select()
        if selection.problems != self._last_problems:
            for problem in selection.problems:
                _LOGGER.warning("zeroconf: %s", problem)
        self._last_problems = selection.problems
        if self._zeroconf is not None and selection.addresses == self._announced:
            return
        if self._zeroconf is not None:
            _LOGGER.info("zeroconf: addresses changed, announcing %s again", self.name)
            await self._withdraw()
            self._state = "starting"
        if not selection.addresses:
            if self._state != "no-address":
                _LOGGER.warning(
                    "zeroconf: nothing to announce for %s yet (no usable LAN address)%s",
                    self.name,
                    self._retry_note(),
                )
            self._state = "no-address"
            return
        await self._announce(selection)

    async def _select(self) -> Selection:
        if self.bind_host in (_WILDCARD_V4, _WILDCARD_V6, _WILDCARD_ANY) or _is_ip(self.bind_host):
            bind_hosts = [self.bind_host]
        else:
            try:
                family = socket.AF_UNSPEC if self.ipv6 else socket.AF_INET
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.bind_host, None, family=family, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                return Selection((), (f"cannot resolve the server's host {self.bind_host!r}: {exc}",))
            bind_hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
        system = self._list_interfaces()
        selections = [select_addresses(h, self.interfaces, ipv6=self.ipv6, system=system) for h in bind_hosts]
        found = _unique([a for s in selections for a in s.addresses])
        problems = tuple(dict.fromkeys(p for s in selections for p in s.problems))
        return Selection(found, problems)

    async def _announce(self, selection: Selection) -> None:
        addresses = [a.address for a in selection.addresses]
        versions = {_ip(a).version for a in addresses}
        ip_version = IPVersion.All if versions == {4, 6} else IPVersion.V6Only if versions == {6} else IPVersion.V4Only
        info = AsyncServiceInfo(SERVICE_TYPE, self.service_name, port=self.port, parsed_addresses=addresses)
        try:
            # Sockets only on the announced addresses: nothing is sent through any other interface.
            self._zeroconf = AsyncZeroconf(interfaces=addresses, ip_version=ip_version)
            # No renaming on conflict: Home Assistant keys the device on this name.
            announcing = await self._zeroconf.async_register_service(info, allow_name_change=False)
            self._info = info
            await announcing
        except NonUniqueNameException:
            await self._withdraw()
            if self._state != "name-conflict":
                _LOGGER.error(
                    "zeroconf: another host already announces %r; not announcing this server%s. "
                    "Give each server its own name (wyoming.zeroconf_name).",
                    self.service_name,
                    self._retry_note(),
                )
            self._state = "name-conflict"
            return
        except OSError as exc:
            await self._withdraw()
            if self._state != "failed":
                _LOGGER.error("zeroconf: cannot announce %s on %s: %s", self.name, ", ".join(addresses), exc)
            self._state = "failed"
            return
        if selection.loopback_only:
            _LOGGER.warning(
                "zeroconf: announcing %s on %s ONLY: the Wyoming server is bound to loopback, so Home "
                "Assistant on another machine cannot reach it. Bind wyoming.uri to 0.0.0.0 or a LAN address.",
                self.name,
                describe(selection.addresses, self.port),
            )
        else:
            _LOGGER.info("announcing %s on %s", self.name, describe(selection.addresses, self.port))
        self._announced = selection.addresses
        self._state = "announced"
        self._announced_event.set()

    async def _withdraw(self) -> None:
        """Goodbye (if registered) and close; a cancelled attempt leaves the state for the next call."""
        zeroconf, info = self._zeroconf, self._info
        if zeroconf is None:
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                if info is not None:
                    goodbye = await zeroconf.async_unregister_service(info)
                    self._info = None
                    await goodbye
                await zeroconf.async_close()
        except Exception as exc:  # best effort: shutting down must go on
            _LOGGER.warning("zeroconf: closing the announcement of %s failed: %r", self.name, exc)
        if self._announced:
            _LOGGER.info("withdrew the zeroconf announcement of %s (goodbye sent)", self.name)
        self._zeroconf = None
        self._info = None
        self._announced = ()
        self._announced_event.clear()
