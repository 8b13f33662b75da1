"""Vendor connections go through the proxy the environment names, as websockets' own lookup decides."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asr_daemon.vendors import transport


@pytest.fixture(autouse=True)
def fresh_lookup() -> Iterator[None]:
    transport._proxy_for_origin.cache_clear()
    yield
    transport._proxy_for_origin.cache_clear()


def test_the_environment_names_the_proxy_for_each_vendor_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse_uri = transport.parse_uri
    monkeypatch.setattr(transport, "parse_uri", lambda url: parsed.append(url) or parse_uri(url))
    monkeypatch.setenv("https_proxy", "http://proxy.lan:3128")
    monkeypatch.setenv("no_proxy", "local-vendor.lan")
    assert transport.proxy_for("wss://asr.vendor.example/v1/stream?token=abc&lang=ja") == "http://proxy.lan:3128"
    assert transport.proxy_for("wss://asr.vendor.example:443/other") == "http://proxy.lan:3128"
    assert transport.proxy_for("wss://local-vendor.lan:8443/ws") is None
    # Looked up once per origin, and never by a URL that carries a one-time token.
    assert parsed == ["wss://asr.vendor.example/", "wss://asr.vendor.example:443/", "wss://local-vendor.lan:8443/"]
    transport.proxy_for("wss://asr.vendor.example/v1/stream?token=other")
    assert len(parsed) == 3


def test_without_a_proxy_setting_connections_are_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert transport.proxy_for("ws://127.0.0.1:8080/asr?token=abc") is None
