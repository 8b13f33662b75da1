"""Every registered engine keeps the vendor contract: the codec and stream classes it names are the ones it makes.

The session reads what a vendor wants (audio format, chunk size, pacing, keepalive) from the adapter's
``codec_class`` before any stream exists, so a codec class that differs from what ``new_codec`` makes would
send audio in a format the vendor does not expect.
"""

from __future__ import annotations

import pytest

from asr_daemon.resilience.policy import DEFAULT_POLICY
from asr_daemon.vendors import registry
from asr_daemon.vendors.base import BaseStream, StreamOptions, VendorAdapter
from asr_daemon.vendors.transport import VendorStream, WebSocketAdapter


def adapter_for(name: str) -> VendorAdapter:
    adapter_class = registry.adapter_class(name)
    reason = getattr(adapter_class, "unavailable_reason", lambda: None)()
    if reason is not None:
        pytest.skip(reason)
    return adapter_class(adapter_class.settings_model.model_validate({}))


@pytest.mark.parametrize("name", registry.available())
async def test_an_engine_makes_the_codec_and_stream_it_names(name: str) -> None:
    adapter = adapter_for(name)
    options = StreamOptions(language=adapter.languages[0], session_id="contract")
    assert type(adapter.new_codec(options)) is adapter.codec_class
    stream = adapter.open_stream(options, DEFAULT_POLICY)
    try:
        assert type(stream) is adapter.stream_class
        assert isinstance(stream, BaseStream)
        assert type(stream.codec) is adapter.codec_class
        # Only engines reached over a WebSocket run the WebSocket stream; the local engine has its own.
        assert isinstance(stream, VendorStream) == isinstance(adapter, WebSocketAdapter)
    finally:
        await stream.aclose()


def test_only_the_offline_engine_is_free() -> None:
    free = [name for name in registry.available() if not registry.adapter_class(name).paid]
    assert free == ["local"]
