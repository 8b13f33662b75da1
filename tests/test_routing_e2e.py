"""One daemon, every vendor: each pipeline language reaches its own vendor, concurrently."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator, EmulatorOptions
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import VolcengineEmulator, Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.yating import YatingEmulator
from tests.conftest import keep_daemon_output
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance, wav
from tests.support.wyoming import describe, transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

# vendor → (emulator class, request language, espeak voice, the sentence the emulator 'recognises')
CASES: dict[str, tuple[type[Emulator], str, str, str]] = {
    "amivoice": (AmiVoiceEmulator, "ja", "ja", "今日は良い天気です"),
    "iapp": (IAppEmulator, "th", "th", "สวัสดีครับ"),
    "tiro": (TiroEmulator, "is", "is", "Góðan daginn."),
    "yating": (YatingEmulator, "zh-TW", "cmn", "今天天氣很好"),
    "zyun360": (Zyun360Emulator, "zh-CN", "cmn", "今天天气很好"),
}


def vendor_config(name: str, emulator: Emulator) -> dict[str, Any]:
    config: dict[str, Any] = {"url": emulator.url, "api_key": "test-key"}
    if isinstance(emulator, YatingEmulator):
        config["token_url"] = emulator.token_url
    if isinstance(emulator, VolcengineEmulator):
        config["app_key"] = "test-app"
    return config


async def test_five_vendors_answer_their_languages_concurrently() -> None:
    async with AsyncExitStack() as stack:
        emulators: dict[str, Emulator] = {}
        for name, (cls, _, _, sentence) in CASES.items():
            emulators[name] = await stack.enter_async_context(cls(EmulatorOptions(script=[sentence])).running())
        config = {"vendors": {name: vendor_config(name, emu) for name, emu in emulators.items()}}
        daemon = await stack.enter_async_context(running_daemon(config))

        info = await describe(daemon.port)
        advertised = {lang for model in info.asr[0].models for lang in model.languages}
        assert {"ja", "ja-JP", "th", "th-TH", "is", "is-IS", "zh-TW", "zh-CN"} <= advertised

        pcms = {name: utterance(f"sentence for {name}", voice=case[2]) for name, case in CASES.items()}
        results = await asyncio.gather(
            *(transcribe(daemon.port, pcms[name], language=case[1], realtime=True) for name, case in CASES.items())
        )
    for (name, (_, language, _, sentence)), result in zip(CASES.items(), results, strict=True):
        assert result.error is None, f"{language}: {result.error}"
        assert result.text == sentence, language
        streams = emulators[name].streams
        assert len(streams) == 1, f"{name} got {len(streams)} streams"
        assert streams[0].pcm_sha256 == hashlib.sha256(pcms[name]).hexdigest()
        assert streams[0].violations == []


@pytest.mark.parametrize("vendor", ["amivoice", "iapp", "tiro", "yating", "zyun360", "volcengine"])
async def test_transcribe_command_works_for_every_vendor(vendor: str, tmp_path: Path) -> None:
    from asr_daemon.vendors import registry

    emulator_cls = registry.emulator_class(vendor)
    sentence = "hello world" if vendor == "tiro" else "你好"
    async with emulator_cls(EmulatorOptions(script=[sentence])).running() as emulator:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
        prefix = f"ASR_DAEMON_VENDORS__{vendor.upper()}__"
        for key, value in vendor_config(vendor, emulator).items():
            env[prefix + key.upper()] = str(value)
        audio = tmp_path / "speech.wav"
        audio.write_bytes(wav(utterance("hello world")))
        language = {"amivoice": "ja", "iapp": "th", "tiro": "is"}.get(vendor, "zh-TW" if vendor == "yating" else "zh")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asr_daemon", "transcribe", "--vendor", vendor, "--language", language,
            "--pace", "0", str(audio), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    keep_daemon_output(f"transcribe --vendor {vendor} stderr", err.decode())
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == sentence
    assert "test-key" not in err.decode()
