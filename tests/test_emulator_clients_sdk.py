"""Yating's own SDK, ``ailabs-asr`` 0.1.0 from PyPI, against the Yating emulator over TLS.

The SDK is installed in a virtual environment of its own (``tests/support/venvs.py``) and run unchanged: its
URLs come from the config file it reads, it trusts the emulator's certificate through the environment
variables its HTTP and WebSocket libraries read, and its audio callback runs on ALSA's ``null`` device (the SDK
plays the WAV file while it streams it). It sends audio as soon as the socket opens, before
``session_started``, which the vendor's documentation forbids; the emulator must accept it, as the service does.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.tls import make_certificate
from asr_daemon.emulators.yating import YatingEmulator
from tests.support.alsa import write_config
from tests.support.vendor_clients import silence, tone, wav_file
from tests.support.venvs import VenvUnavailable, ensure_venv

SDK = "ailabs-asr==0.1.0"
SCRIPT = ["今天天氣很好。", "我們去公園散步吧。"]

# Written for the test: the SDK's documented use, printing each final sentence as a JSON line.
DRIVER = """
import json, sys
from ailabs_asr.streaming import StreamingClient

def final(message):
    print(json.dumps({"final": message["asr_sentence"]}, ensure_ascii=False), flush=True)

def partial(message):
    print(json.dumps({"partial": message["asr_sentence"]}, ensure_ascii=False), flush=True)

client = StreamingClient("test-key", config_path=sys.argv[1])
client.start_streaming_wav(pipeline="asr-zh-tw-std", file=sys.argv[2],
                           on_processing_sentence=partial, on_final_sentence=final)
"""


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    try:
        return ensure_venv("ailabs-asr-0.1.0", [SDK])
    except VenvUnavailable as exc:
        pytest.skip(f"cannot install {SDK}: {exc}")


async def test_yating_sdk_completes_a_session_over_tls(sdk_python: Path, tmp_path: Path) -> None:
    certificate = make_certificate(tmp_path)
    pcm = silence(200) + tone(1500) + silence(800) + tone(1200) + silence(800)
    (tmp_path / "speech.wav").write_bytes(wav_file(pcm))
    (tmp_path / "driver.py").write_text(DRIVER)
    options = EmulatorOptions(script=SCRIPT, tls=certificate.server_context())
    # A pipeline that takes a moment to start, so the SDK's early audio surely arrives before the greeting.
    emulator = YatingEmulator(options, greeting_delay=0.5)
    async with emulator.running():
        base = emulator.url.rsplit("/ws/v1/", 1)[0]
        config = {
            "WebSocket": {"URL": emulator.url},
            "RESTfulAPI": {"URL": f"{base}/v1"},
            "TokenAPI": {"URL": emulator.token_url},
        }
        (tmp_path / "api.yaml").write_text(json.dumps(config))
        env = os.environ | {
            "ALSA_CONFIG_PATH": str(write_config(tmp_path / "asound.conf", {})),
            "REQUESTS_CA_BUNDLE": str(certificate.certificate),
            "WEBSOCKET_CLIENT_CA_BUNDLE": str(certificate.certificate),
        }
        process = await asyncio.create_subprocess_exec(
            str(sdk_python),
            str(tmp_path / "driver.py"),
            str(tmp_path / "api.yaml"),
            str(tmp_path / "speech.wav"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        [record] = emulator.streams
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    finals = [line["final"] for line in lines if "final" in line]
    assert finals == SCRIPT, stderr.decode()[-2000:]
    assert any("partial" in line for line in lines)
    assert emulator.token_violations == []
    assert record.violations == []
    assert record.completed
    assert any("before session_started" in note for note in record.notes)
    # Every sample of the file reached the recogniser (the WAV header is not sent: the SDK reads frames).
    assert record.pcm_bytes == len(pcm)
