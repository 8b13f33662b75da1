"""Client networks given as CIDRs in the configuration (``wyoming.allow``, ``budget.exempt_clients``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_networks(key: str, values: list[str]) -> list[str]:
    """``values`` unchanged when each is a CIDR; a ``ValueError`` naming ``key`` and the bad entry otherwise."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"{key}: {value!r} is not a network; expected a CIDR such as 192.168.1.0/24 or fd00::/8"
            ) from None
    return values


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def peer_address(host: str) -> Address | None:
    """A peer's address as ``getpeername`` gives it; None when it is not an IP address (a Unix socket)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is not part of it
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 peer of a dual-stack socket
    return address


def address_in(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)
