"""The session's two ways of sending audio to the vendor give the vendor the same thing.

While its sender waits caught up, a session sends each whole vendor message straight from ``feed`` (the hot
path, ``Session._send_now``); otherwise the sender's loop sends it (the plain path, ``direct_sends = False``).
Every vendor's emulator must receive the same audio in the same messages either way, and answer the same."""

from __future__ import annotations

import asyncio

import pytest

from asr_daemon.audio.normalise import AudioFormat
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.session import Session, SessionLimits
from asr_daemon.vendors.base import StreamOptions
from asr_daemon.vendors.transport import VendorStream
from tests.support.vendor_streams import VENDORS, VendorStreams, tones

PCM16K = AudioFormat(16000, 2, 1)
PIECE = 320  # 10 ms, what Home Assistant's pipeline sends


class SendCounter:
    """Counts the vendor messages ``send_audio_now`` wrote (the hot path taken)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        original = VendorStream.send_audio_now

        def counting(stream: VendorStream, pcm: bytes) -> bool:
            taken = original(stream, pcm)
            self.sent += taken
            return taken

        monkeypatch.setattr(VendorStream, "send_audio_now", counting)


async def stream_through_session(
    vendor: VendorStreams, audio: bytes, *, direct: bool, lean: bool = True
) -> tuple[bytes, int, str]:
    """``audio`` in 10 ms pieces, a little faster than real time; what the emulator got, in how many messages,
    and the transcript."""
    emu = vendor.emulator_class(EmulatorOptions(keep_pcm=True))
    async with emu.running():
        options = StreamOptions(language=vendor.language, session_id=f"send-{direct}")
        session = Session(vendor.adapter(emu, api_key="test-key"), options, SessionLimits(final_timeout=10))
        session.direct_sends = direct
        VendorStream.lean_links = lean
        try:
            async with session:
                for offset in range(0, len(audio), PIECE):
                    session.feed(audio[offset : offset + PIECE], PCM16K)
                    await asyncio.sleep(0.002)
                transcript = await session.finish()
        finally:
            VendorStream.lean_links = True
        record = emu.streams[-1]
        assert record.pcm is not None
        assert not record.violations
        return bytes(record.pcm), record.messages_in, transcript.text


@pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])
async def test_the_hot_path_sends_what_the_plain_path_sends(
    vendor: VendorStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = tones(2) + bytes(122)  # ends in a part of a vendor message
    counter = SendCounter(monkeypatch)
    plain = await stream_through_session(vendor, audio, direct=False)
    assert counter.sent == 0
    direct = await stream_through_session(vendor, audio, direct=True)
    # The hot path carried the audio (not just one message), and the vendor cannot tell the difference.
    assert counter.sent > len(audio) // vendor.adapter_class.codec_class.chunk_bytes // 2
    assert direct == plain
    assert plain[0] == audio[: len(plain[0])]
    assert len(plain[0]) == len(audio)
    assert plain[2]


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])
def test_the_lean_link_gives_the_vendor_what_websockets_client_gives_it(vendor: VendorStreams, event_loop: str) -> None:
    # The vendor link's hot path (websockets' sans-I/O protocol on an asyncio Protocol) against websockets' own
    # asyncio client, the one proxies use: the same audio in the same messages, the same answer, on the daemon's
    # default loop (uvloop) as on asyncio's.
    audio = tones(2) + bytes(122)

    async def both() -> tuple[tuple[bytes, int, str], tuple[bytes, int, str]]:
        plain = await stream_through_session(vendor, audio, direct=True, lean=False)
        lean = await stream_through_session(vendor, audio, direct=True, lean=True)
        return plain, lean

    if event_loop == "uvloop":
        plain, lean = pytest.importorskip("uvloop").run(both())
    else:
        plain, lean = asyncio.run(both())
    assert lean == plain
    assert len(plain[0]) == len(audio)
    assert plain[2]


async def test_a_burst_the_sender_has_not_caught_up_with_still_arrives_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Audio faster than the connection opens: the sender's loop sends the backlog, then feed takes over.
    vendor = VENDORS[0]
    audio = tones(3) + bytes(122)
    counter = SendCounter(monkeypatch)
    emu = vendor.emulator_class(EmulatorOptions(keep_pcm=True))
    async with emu.running():
        adapter = vendor.adapter(emu, api_key="test-key")
        session = Session(adapter, StreamOptions(language=vendor.language), SessionLimits(final_timeout=10))
        async with session:
            half = len(audio) // 2
            session.feed(audio[:half], PCM16K)
            while counter.sent == 0 and session.accepted_bytes < len(audio):
                session.feed(audio[half : half + PIECE], PCM16K)
                half += PIECE
                await asyncio.sleep(0.005)
            for offset in range(half, len(audio), PIECE):
                session.feed(audio[offset : offset + PIECE], PCM16K)
                await asyncio.sleep(0.001)
            await session.finish()
        record = emu.streams[-1]
        assert record.pcm == audio
        assert counter.sent > 0
