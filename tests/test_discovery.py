"""Zeroconf announcement: address selection (pure), and the advertiser seen by another host's browser.

The network tests run only inside private network namespaces (``tests/support/netns.py``): the advertiser in
one, a python-zeroconf browser (the "Home Assistant" host) in another, joined by a veth pair. Nothing here
runs zeroconf in the machine's own namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from asr_daemon import discovery
from asr_daemon.discovery import (
    SERVICE_TYPE,
    LanAddress,
    NetInterface,
    ZeroconfAdvertiser,
    describe,
    host_interfaces,
    lan_addresses,
    select_addresses,
)
from asr_daemon.settings import WyomingSettings
from tests.support.netns import (
    MdnsSniffer,
    Peer,
    adopt_interface,
    emit,
    ip,
    netns_unavailable,
    next_command,
    run_in_netns,
    sysctl,
    veth,
)

NAME = "asr-daemon-test"

# A Pi with Docker, a VPN and Wi-Fi switched off.
PI = [
    NetInterface("lo", ("127.0.0.1", "::1"), loopback=True, multicast=False),
    NetInterface("eth0", ("192.168.1.20", "169.254.7.7", "fe80::1", "2001:db8::20", "fd00::20")),
    NetInterface("wlan0", ("192.168.1.31",), up=False),
    NetInterface("docker0", ("172.17.0.1",)),
    NetInterface("wg0", ("10.8.0.2",), multicast=False),
    NetInterface("eth1", ("10.0.0.5",)),
]


# --- address selection --------------------------------------------------------------------------------


def test_default_announces_every_lan_interface_and_nothing_else() -> None:
    assert lan_addresses(system=PI) == [LanAddress("eth0", "192.168.1.20"), LanAddress("eth1", "10.0.0.5")]


def test_lan_addresses_are_interface_address_pairs() -> None:
    assert [tuple(a) for a in lan_addresses(["eth0"], system=PI)] == [("eth0", "192.168.1.20")]


def test_ipv6_adds_global_and_unique_local_but_never_link_local_or_loopback() -> None:
    selection = select_addresses("", ["eth0"], ipv6=True, system=PI)
    assert [a.address for a in selection.addresses] == ["192.168.1.20", "2001:db8::20", "fd00::20"]


def test_ipv6_is_off_by_default_and_never_for_a_server_bound_to_0_0_0_0() -> None:
    assert [a.address for a in select_addresses("", ["eth0"], system=PI).addresses] == ["192.168.1.20"]
    bound_v4 = select_addresses("0.0.0.0", ["eth0"], ipv6=True, system=PI)
    assert [a.address for a in bound_v4.addresses] == ["192.168.1.20"]


def test_server_bound_to_v6_wildcard_gets_no_ipv4_announced_since_it_does_not_listen_there() -> None:
    without_v6 = select_addresses("::", system=PI)
    assert without_v6.addresses == ()
    assert "bind wyoming.uri to 0.0.0.0" in without_v6.problems[0]
    with_v6 = select_addresses("::", ipv6=True, system=PI)
    assert [a.address for a in with_v6.addresses] == ["2001:db8::20", "fd00::20"]


def test_configured_interfaces_keep_their_order_and_may_name_a_virtual_one() -> None:
    selection = select_addresses("0.0.0.0", ["eth1", "docker0", "eth0"], system=PI)
    assert selection.addresses == (
        LanAddress("eth1", "10.0.0.5"),
        LanAddress("docker0", "172.17.0.1"),
        LanAddress("eth0", "192.168.1.20"),
    )
    assert selection.problems == ()


def test_configured_address_is_announced_alone_with_its_interface() -> None:
    assert select_addresses("0.0.0.0", ["10.0.0.5"], system=PI).addresses == (LanAddress("eth1", "10.0.0.5"),)


def test_configured_interfaces_that_cannot_be_announced_are_explained() -> None:
    selection = select_addresses("0.0.0.0", ["eht0", "wlan0", "lo", "wg0", "192.168.9.9", "eth0"], system=PI)
    assert selection.addresses == (LanAddress("eth0", "192.168.1.20"),)
    assert selection.problems == (
        "no interface named 'eht0' (this host has: docker0, eth0, eth1, lo, wg0, wlan0)",
        "interface wlan0 is not announced: the interface is down",
        "interface lo is not announced: it is loopback (Home Assistant on another machine cannot reach it)",
        "interface wg0 is not announced: the interface cannot carry multicast",
        "192.168.9.9 is not an address of this host (yet)",
    )


def test_interface_without_address_yet_is_reported() -> None:
    system = [NetInterface("eth0", ("fe80::1",))]
    selection = select_addresses("0.0.0.0", ["eth0"], system=system)
    assert selection.addresses == ()
    assert selection.problems == ("interface eth0 has no usable IPv4 address (yet)",)


def test_server_bound_to_one_address_announces_only_it() -> None:
    selection = select_addresses("10.0.0.5", ["eth0"], system=PI)
    assert selection.addresses == (LanAddress("eth1", "10.0.0.5"),)
    assert not selection.loopback_only
    assert selection.problems == ("zeroconf interfaces ['eth0'] are ignored: the server is bound to 10.0.0.5 only",)


def test_server_bound_to_loopback_announces_loopback_and_flags_it() -> None:
    selection = select_addresses("127.0.0.1", system=PI)
    assert selection.addresses == (LanAddress("lo", "127.0.0.1"),)
    assert selection.loopback_only


@pytest.mark.parametrize("bound", ["169.254.7.7", "fe80::1", "192.168.77.1"])
def test_server_bound_to_an_unusable_address_announces_nothing(bound: str) -> None:
    selection = select_addresses(bound, system=PI)
    assert selection.addresses == ()
    assert len(selection.problems) == 1


_ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "::1", "169.254.1.1", "fe80::1", "224.0.0.251", "ff02::fb"]),
)
_INTERFACES = st.lists(
    st.builds(
        NetInterface,
        name=st.sampled_from(["eth0", "eth1", "wlan0", "lo", "docker0", "br-1", "usb0"]),
        addresses=st.lists(_ADDRESSES, max_size=4).map(tuple),
        up=st.booleans(),
        loopback=st.booleans(),
        multicast=st.booleans(),
    ),
    max_size=5,
    unique_by=lambda i: i.name,
)


@given(
    system=_INTERFACES,
    bind=st.sampled_from(["0.0.0.0", "::", ""]),
    ipv6=st.booleans(),
    wanted=st.lists(st.one_of(st.sampled_from(["eth0", "lo", "docker0", "nope"]), _ADDRESSES), max_size=3),
)
def test_wildcard_server_never_announces_unreachable_addresses(
    system: list[NetInterface], bind: str, ipv6: bool, wanted: list[str]
) -> None:
    selection = select_addresses(bind, wanted, ipv6=ipv6, system=system)
    by_name = {i.name: i for i in system}
    for interface, address in selection.addresses:
        parsed = ipaddress.ip_address(address)
        assert not (parsed.is_unspecified or parsed.is_link_local or parsed.is_loopback or parsed.is_multicast)
        assert parsed.version == {"0.0.0.0": 4, "::": 6}.get(bind, parsed.version)
        assert ipv6 or parsed.version == 4
        owner = by_name[interface]
        assert address in owner.addresses and owner.up and owner.multicast and not owner.loopback
    assert len({a.address for a in selection.addresses}) == len(selection.addresses)


def test_host_interfaces_reads_the_loopback_flag_of_this_host() -> None:
    loopback = [i for i in host_interfaces() if "127.0.0.1" in i.addresses]
    assert loopback and all(i.loopback and i.up for i in loopback)


def test_log_description_of_addresses() -> None:
    addresses = [LanAddress("eth0", "192.168.1.20"), LanAddress("eth0", "2001:db8::20")]
    assert describe(addresses, 10300) == "192.168.1.20:10300 (eth0), [2001:db8::20]:10300 (eth0)"


# --- advertiser without a network ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "  ", "a.b", "tab\there", "x" * 64, "é" * 32])
def test_instance_names_that_dns_sd_cannot_carry_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="zeroconf name"):
        ZeroconfAdvertiser(name, 10300)


def test_names_up_to_63_bytes_and_with_spaces_are_accepted() -> None:
    assert ZeroconfAdvertiser("Kitchen ASR " + "x" * 51, 10300).service_name.endswith("._wyoming._tcp.local.")


@pytest.mark.parametrize("entry", ["0.0.0.0", "169.254.1.1", "fe80::1", "224.0.0.251"])
def test_configured_interface_address_that_is_never_announceable_fails_at_construction(entry: str) -> None:
    with pytest.raises(ValueError, match=f"zeroconf interfaces: {entry}"):
        ZeroconfAdvertiser(NAME, 10300, interfaces=[entry])


def test_port_must_be_the_bound_port() -> None:
    with pytest.raises(ValueError, match="port 0"):
        ZeroconfAdvertiser(NAME, 0)


def test_built_from_wyoming_settings() -> None:
    settings = WyomingSettings(uri="tcp://192.168.1.20:10300", zeroconf_name="kitchen", zeroconf_interfaces=[])
    advertiser = ZeroconfAdvertiser.for_wyoming(settings, 10301)
    assert (advertiser.service_name, advertiser.port, advertiser.bind_host) == (
        "kitchen._wyoming._tcp.local.",
        10301,
        "192.168.1.20",
    )
    with pytest.raises(ValueError, match="tcp://"):
        ZeroconfAdvertiser.for_wyoming(WyomingSettings(uri="unix:///run/asr.sock"), 10300)


@pytest.fixture
def no_zeroconf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Guarantees these tests send nothing: creating a zeroconf instance fails them."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("zeroconf must not be started here")

    monkeypatch.setattr(discovery, "AsyncZeroconf", refuse)
    yield


async def test_without_any_lan_address_it_waits_and_says_so(
    no_zeroconf: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "asr_daemon.discovery")
    lo_only = [NetInterface("lo", ("127.0.0.1",), loopback=True)]
    async with ZeroconfAdvertiser(NAME, 10300, refresh_interval=0.01, list_interfaces=lambda: lo_only) as adv:
        await _until(lambda: adv.state == "no-address", within=5)
        await asyncio.sleep(0.05)  # several refreshes: the warning must not repeat
        waiting = (adv.state, adv.announced)
    assert waiting == ("no-address", ())
    assert adv.state == "stopped"
    warnings = [r.getMessage() for r in caplog.records if "nothing to announce" in r.getMessage()]
    assert warnings == [f"zeroconf: nothing to announce for {NAME} yet (no usable LAN address) "
                        "(will look again every 0.01 s)"]  # fmt: skip


async def test_a_failure_is_logged_and_never_reaches_the_daemon(
    no_zeroconf: None, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[NetInterface]:
        raise RuntimeError("netlink exploded")

    async with ZeroconfAdvertiser(NAME, 10300, refresh_interval=0.01, list_interfaces=broken) as advertiser:
        await _until(lambda: advertiser.state == "failed", within=5)
        await asyncio.sleep(0.05)  # several refreshes fail the same way: logged once
    assert advertiser.state == "stopped"
    failures = [r for r in caplog.records if r.getMessage() == f"zeroconf: announcing {NAME} failed"]
    assert len(failures) == 1
    assert "netlink exploded" in caplog.text


# --- on a LAN made of network namespaces ------------------------------------------------------------------

_NO_NETNS = netns_unavailable()
_F = TypeVar("_F", bound=Callable[..., Any])


def netns(test: _F) -> _F:
    """Marks a test that runs in network namespaces; skipped, with the reason, where they cannot be made."""
    skip = pytest.mark.skipif(_NO_NETNS is not None, reason=f"no private network namespace: {_NO_NETNS}")
    marked: _F = pytest.mark.netns(skip(test))
    return marked


@netns
def test_home_assistant_sees_the_lan_address_and_port_then_the_goodbye() -> None:
    result = run_in_netns("tests.test_discovery:_scenario_announce_then_goodbye", timeout=60)[-1]["result"]
    port = result["port"]
    assert result["log"] == [
        f"announcing {NAME} on 192.0.2.1:{port} (v0)",
        f"withdrew the zeroconf announcement of {NAME} (goodbye sent)",
    ]
    added = result["added"]
    assert added["name"] == f"{NAME}.{SERVICE_TYPE}"
    assert added["port"] == port
    assert added["addresses"] == ["192.0.2.1"]  # not the link-local one, not docker0, never 0.0.0.0/127.0.0.1
    assert added["reply"] == "wyoming here"  # the announced address really reaches the server
    assert result["removed"] == {"event": "removed", "name": f"{NAME}.{SERVICE_TYPE}"}
    assert result["removed_after"] < 8.0  # by the goodbye: waiting for the records to expire takes 120 s
    assert result["mdns_on_v0"] > 0  # the sniffer works...
    assert result["mdns_on_docker0"] == 0  # ...and python-zeroconf sent nothing through the other interface


@netns
def test_name_taken_by_another_host_is_kept_not_renamed_and_taken_over_when_free() -> None:
    result = run_in_netns("tests.test_discovery:_scenario_name_conflict", timeout=60)[-1]["result"]
    assert result["during_conflict"] == {"state": "name-conflict", "announced": []}
    assert result["conflict_log"] == [
        f"zeroconf: another host already announces '{NAME}.{SERVICE_TYPE}'; not announcing this server "
        "(will look again every 0.3 s). Give each server its own name (wyoming.zeroconf_name)."
    ]
    assert result["after_other_left"] == {
        "state": "announced",
        "announced": [["v0", "192.0.2.1"]],
        "resolved": {"addresses": ["192.0.2.1"], "port": result["port"]},
        "service": f"{NAME}.{SERVICE_TYPE}",
    }


@netns
def test_announces_once_an_address_appears_and_follows_a_new_address() -> None:
    result = run_in_netns("tests.test_discovery:_scenario_address_changes", timeout=60)[-1]["result"]
    assert result["before_dhcp"] == {"state": "no-address", "seen": []}
    assert result["first"] == {"addresses": ["192.0.2.1"], "port": result["port"]}
    assert result["renumbered"] == {"addresses": ["192.0.2.3"], "port": result["port"]}


@netns
def test_ipv6_on_request_adds_the_global_address_only() -> None:
    result = run_in_netns("tests.test_discovery:_scenario_ipv6", timeout=60)[-1]["result"]
    assert sorted(result["addresses"]) == ["192.0.2.1", "2001:db8::1"]  # no fe80::
    assert result["port"] == 10300


@netns
def test_server_bound_to_loopback_is_announced_there_with_a_loud_warning() -> None:
    result = run_in_netns("tests.test_discovery:_scenario_loopback_only", timeout=60)[-1]["result"]
    assert result["announced"] == [["lo", "127.0.0.1"]]
    assert result["warnings"] == [
        f"zeroconf: announcing {NAME} on 127.0.0.1:10300 (lo) ONLY: the Wyoming server is bound to loopback, "
        "so Home Assistant on another machine cannot reach it. Bind wyoming.uri to 0.0.0.0 or a LAN address."
    ]


# Scenarios: each runs in a fresh network namespace (see tests/support/netns.py). v0 (192.0.2.1) is this
# host, v1 (192.0.2.2) belongs to the peer, in a namespace of its own.


async def _scenario_announce_then_goodbye() -> dict[str, Any]:
    log = _capture_log(logging.INFO)
    veth("v0", "192.0.2.1/24", peer="v1")
    ip("address", "add", "169.254.7.7/16", "dev", "v0")
    veth("docker0", "172.17.0.1/16", peer="docker0p")
    ip("link", "set", "docker0p", "up")
    sniff_v0, sniff_docker = MdnsSniffer("v0"), MdnsSniffer("docker0")
    server, port = await _wyoming_stub()
    async with Peer("tests.test_discovery:_peer_browser", {"address": "192.0.2.2"}, link="v1") as peer:
        await peer.expect("browsing", within=10)
        async with ZeroconfAdvertiser(NAME, port, "0.0.0.0", refresh_interval=None) as advertiser:
            async with asyncio.timeout(10):
                await advertiser.wait_announced()
            added = await peer.expect("added", within=10)
        left = asyncio.get_running_loop().time()
        removed = await peer.expect("removed", within=10)
        removed_after = asyncio.get_running_loop().time() - left
        # Counted while the peer lives: its namespace takes the veth pair with it.
        sniffed = {"mdns_on_v0": sniff_v0.count(), "mdns_on_docker0": sniff_docker.count()}
    server.close()
    return {
        "port": port,
        "log": [r.getMessage() for r in log.records],
        "added": added,
        "removed": removed,
        "removed_after": removed_after,
        **sniffed,
    }


async def _scenario_name_conflict() -> dict[str, Any]:
    # Only the advertiser runs zeroconf on this side: a second mDNS stack here would share port 5353 and
    # could receive the other host's unicast answer to our probe instead of the advertiser.
    log = _capture_log(logging.ERROR)
    veth("v0", "192.0.2.1/24", peer="v1")
    server, port = await _wyoming_stub()
    other = Peer("tests.test_discovery:_peer_advertiser", {"address": "192.0.2.2", "port": 10300}, link="v1")
    async with other:
        await other.expect("announced", within=10)
        async with ZeroconfAdvertiser(NAME, port, "0.0.0.0", refresh_interval=0.3) as advertiser:
            await _until(lambda: advertiser.state == "name-conflict", within=10)
            await asyncio.sleep(1.0)  # several retries while the other host still holds the name
            during = {"state": advertiser.state, "announced": list(advertiser.announced)}
            other.send({"command": "stop"})
            await other.expect("withdrawn", within=10)
            await _until(lambda: advertiser.state == "announced", within=10)
            resolved = await _resolved_by_peer(other, ["192.0.2.1"], within=10)
            after = {
                "state": advertiser.state,
                "announced": [list(a) for a in advertiser.announced],
                "resolved": {"addresses": resolved["addresses"], "port": resolved["port"]},
                "service": advertiser.service_name,
            }
    server.close()
    return {
        "port": port,
        "during_conflict": during,
        "after_other_left": after,
        "conflict_log": [r.getMessage() for r in log.records],
    }


async def _scenario_address_changes() -> dict[str, Any]:
    veth("v0", None, peer="v1")
    # As systemd sets it: removing the old address keeps the new one of the same subnet.
    sysctl("net.ipv4.conf.v0.promote_secondaries", "1")
    server, port = await _wyoming_stub()
    async with Peer("tests.test_discovery:_peer_browser", {"address": "192.0.2.2"}, link="v1") as peer:
        await peer.expect("browsing", within=10)
        async with ZeroconfAdvertiser(NAME, port, "0.0.0.0", refresh_interval=0.2) as advertiser:
            await _until(lambda: advertiser.state == "no-address", within=5)
            await asyncio.sleep(1.0)  # nothing may be announced before the address exists
            seen: list[dict[str, Any]] = []
            peer.send({"command": "report"})
            while (message := await peer.next_message(within=5))["event"] != "report":
                seen.append(message)
            before = {"state": advertiser.state, "seen": seen}
            ip("address", "add", "192.0.2.1/24", "dev", "v0")
            first = await peer.expect("added", within=10)
            ip("address", "add", "192.0.2.3/24", "dev", "v0")
            ip("address", "del", "192.0.2.1/24", "dev", "v0")
            renumbered = await _resolved_by_peer(peer, ["192.0.2.3"], within=15)
    server.close()
    return {
        "port": port,
        "before_dhcp": before,
        "first": {"addresses": first["addresses"], "port": first["port"]},
        "renumbered": {"addresses": renumbered["addresses"], "port": renumbered["port"]},
    }


async def _scenario_ipv6() -> dict[str, Any]:
    # No duplicate address detection: addresses are usable at once, as on a LAN some time after boot.
    sysctl("net.ipv6.conf.default.accept_dad", "0")
    veth("v0", "192.0.2.1/24", peer="v1")
    ip("address", "add", "2001:db8::1/64", "dev", "v0", "nodad")
    # Every address of both families, like asyncio.start_server(host=None); a fixed port, as the two
    # sockets would otherwise get different ones (the namespace is private: nothing else uses it).
    server = await asyncio.start_server(_say_hello, None, 10300)
    peer_args = {"address": "192.0.2.2", "address6": "2001:db8::2"}
    async with Peer("tests.test_discovery:_peer_browser", peer_args, link="v1") as peer:
        await peer.expect("browsing", within=10)
        async with ZeroconfAdvertiser(NAME, 10300, "", ipv6=True, refresh_interval=None) as advertiser:
            async with asyncio.timeout(10):
                await advertiser.wait_announced()
            resolved = await _resolved_by_peer(peer, ["192.0.2.1", "2001:db8::1"], within=10)
    server.close()
    return {"addresses": resolved["addresses"], "port": resolved["port"]}


async def _scenario_loopback_only() -> dict[str, Any]:
    log = _capture_log(logging.WARNING)
    veth("v0", "192.0.2.1/24", peer="v1")  # a LAN address exists, but the server does not listen there
    async with ZeroconfAdvertiser(NAME, 10300, "127.0.0.1", refresh_interval=None) as advertiser:
        async with asyncio.timeout(10):
            await advertiser.wait_announced()
        announced = [list(a) for a in advertiser.announced]
    return {"announced": announced, "warnings": [r.getMessage() for r in log.records]}


# Peers: the other host, in a namespace of its own.


async def _peer_browser(address: str, address6: str | None = None) -> None:
    """Home Assistant's side: browse _wyoming._tcp, report what it finds, connect to the address."""
    await adopt_interface("v1", f"{address}/24")
    interfaces = [address]
    if address6 is not None:
        sysctl("net.ipv6.conf.v1.accept_dad", "0")
        ip("address", "add", f"{address6}/64", "dev", "v1", "nodad")
        await asyncio.sleep(0.2)
        interfaces.append(address6)
    changes: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        changes.put_nowait((name, state_change))

    async with AsyncZeroconf(interfaces=interfaces) as zeroconf:
        browser = AsyncServiceBrowser(zeroconf.zeroconf, SERVICE_TYPE, handlers=[on_change])
        emit({"event": "browsing"})
        commands = asyncio.ensure_future(next_command())
        while True:
            change = asyncio.ensure_future(changes.get())
            done, _ = await asyncio.wait({commands, change}, return_when=asyncio.FIRST_COMPLETED)
            if commands in done:
                change.cancel()
                command = commands.result()
                if command is None:
                    break
                if command["command"] == "report":
                    emit({"event": "report"})
                elif command["command"] == "resolve":
                    emit({"event": "resolved", **await _describe_service(zeroconf, command["name"])})
                commands = asyncio.ensure_future(next_command())
                continue
            name, state_change = change.result()
            if state_change is ServiceStateChange.Removed:
                emit({"event": "removed", "name": name})
            else:
                event = "added" if state_change is ServiceStateChange.Added else "updated"
                emit({"event": event, **await _describe_service(zeroconf, name, connect=True)})
        await browser.async_cancel()


async def _peer_advertiser(address: str, port: int) -> None:
    """Another host that holds the name until told to stop; then it resolves names for the test."""
    await adopt_interface("v1", f"{address}/24")
    async with ZeroconfAdvertiser(NAME, port, "0.0.0.0", refresh_interval=None) as advertiser:
        async with asyncio.timeout(10):
            await advertiser.wait_announced()
        emit({"event": "announced"})
        await next_command()
    emit({"event": "withdrawn"})
    async with AsyncZeroconf(interfaces=[address]) as zeroconf:
        while (command := await next_command()) is not None:
            if command["command"] == "resolve":
                emit({"event": "resolved", **await _describe_service(zeroconf, command["name"])})


async def _describe_service(zeroconf: AsyncZeroconf, name: str, *, connect: bool = False) -> dict[str, Any]:
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    await info.async_request(zeroconf.zeroconf, 3000)
    found: dict[str, Any] = {
        "name": name,
        "port": info.port,
        "addresses": info.parsed_addresses(IPVersion.All),
    }
    if connect and found["addresses"]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(found["addresses"][0], info.port), 5)
        found["reply"] = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        writer.close()
    return found


# Helpers for the scenarios.


async def _wyoming_stub() -> tuple[asyncio.Server, int]:
    """Stands in for the Wyoming server: says hello, so a connection proves the address is right."""

    server = await asyncio.start_server(_say_hello, "0.0.0.0", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def _say_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"wyoming here\n")
    await writer.drain()
    writer.close()


async def _resolved_by_peer(peer: Peer, addresses: list[str], *, within: float) -> dict[str, Any]:
    """Ask the peer to resolve NAME until it sees exactly ``addresses``."""
    async with asyncio.timeout(within):
        while True:
            peer.send({"command": "resolve", "name": f"{NAME}.{SERVICE_TYPE}"})
            resolved = await peer.expect("resolved", within=within)
            if sorted(resolved["addresses"]) == sorted(addresses):
                return resolved
            await asyncio.sleep(0.3)


async def _until(condition: Callable[[], bool], *, within: float) -> None:
    async with asyncio.timeout(within):
        # The advertiser's state has no event of its own: poll.
        while not condition():
            await asyncio.sleep(0.02)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _capture_log(level: int) -> _Records:
    handler = _Records()
    handler.setLevel(level)
    logger = logging.getLogger("asr_daemon.discovery")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler
