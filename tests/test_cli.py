"""The command line as users run it: real processes, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asr_daemon import __version__
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from tests.conftest import keep_daemon_output
from tests.support.speech import have_speech_tools, utterance, wav
from tests.support.wyoming import describe, transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

CLI = [sys.executable, "-m", "asr_daemon"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env.update(extra)
    return env


def test_version() -> None:
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"asr-daemon {__version__}"


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(20):
        while True:
            assert process.returncode is None, "daemon exited early"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def test_emulate_then_transcribe_a_wav_file(tmp_path: Path) -> None:
    emulator = await start("emulate", "amivoice", "--port", "0", "--script", "こんにちは|元気です", env=clean_env())
    try:
        assert emulator.stdout is not None
        line = (await asyncio.wait_for(emulator.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/")
        audio = tmp_path / "two.wav"
        audio.write_bytes(wav(utterance("hello there", "how are you")))
        env = clean_env(ASR_DAEMON_VENDORS__AMIVOICE__URL=url, ASR_DAEMON_VENDORS__AMIVOICE__API_KEY="test-key")
        done = await asyncio.create_subprocess_exec(
            *CLI, "transcribe", "--vendor", "amivoice", "--language", "ja", "--pace", "0", str(audio),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(done.communicate(), 30)
        assert done.returncode == 0, err.decode()
        assert out.decode().strip() == "こんにちは元気です"
        assert "… こ" in err.decode()  # partials were shown as they came
        assert "test-key" not in err.decode()
    finally:
        emulator.send_signal(signal.SIGTERM)
        await asyncio.wait_for(emulator.wait(), 10)
    assert emulator.returncode == 0


def test_transcribe_with_unconfigured_vendor_says_what_to_do(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav(b"\x00\x00" * 1600))
    done = subprocess.run([*CLI, "transcribe", "--vendor", "tiro", "--language", "is", str(audio)],
                          capture_output=True, text=True, timeout=30, env=clean_env())
    assert done.returncode == 2
    assert "ASR_DAEMON_VENDORS__TIRO__API_KEY" in done.stderr


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(script=["こんにちは"])).running() as emu:
        assert isinstance(emu, AmiVoiceEmulator)
        yield emu


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_sigterm_lets_the_in_flight_utterance_finish_then_exits_zero(
    emulator: AmiVoiceEmulator, event_loop: str
) -> None:
    port = free_port()
    env = clean_env(ASR_DAEMON_VENDORS__AMIVOICE__URL=emulator.url, ASR_DAEMON_VENDORS__AMIVOICE__API_KEY="test-key",
                    ASR_DAEMON_LIMITS__DRAIN_TIMEOUT="10", ASR_DAEMON_EVENT_LOOP=event_loop)
    daemon = await start("run", "--debug", "--uri", f"tcp://127.0.0.1:{port}", env=env)
    try:
        await wait_listening(port, daemon)
        assert (await describe(port)).asr
        pcm = utterance("hello there my friend")
        utterance_task = asyncio.create_task(transcribe(port, pcm, language="ja", realtime=True))
        await asyncio.sleep(0.8)  # mid-utterance
        daemon.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):  # no new connections while draining
            await asyncio.open_connection("127.0.0.1", port)
        result = await asyncio.wait_for(utterance_task, 20)
        assert result.text == "こんにちは"
        await asyncio.wait_for(daemon.wait(), 10)
        assert daemon.returncode == 0
        assert daemon.stderr is not None
        log = (await daemon.stderr.read()).decode()
        keep_daemon_output("daemon stderr", log)
        assert "stopped" in log
        assert f"event loop: {event_loop}" in log
        assert "test-key" not in log
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()


def test_asking_for_uvloop_without_it_installed_is_a_clear_error() -> None:
    without_uvloop = (
        "import sys; sys.modules['uvloop'] = None; from asr_daemon.__main__ import main; "
        "sys.exit(main(['run', '--event-loop', 'uvloop']))"
    )
    done = subprocess.run([sys.executable, "-c", without_uvloop], capture_output=True, text=True, timeout=30,
                          env=clean_env())
    assert done.returncode == 2
    assert "uvloop is not installed" in done.stderr


def test_run_with_a_bad_config_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("vendors:\n  amivoice:\n    connect_timeout: soon\n")
    done = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=30,
                          env=clean_env())
    assert done.returncode == 2
    assert "vendors.amivoice.connect_timeout = 'soon'" in done.stderr


async def test_health_command_against_a_running_daemon(emulator: AmiVoiceEmulator) -> None:
    port = free_port()
    env = clean_env(ASR_DAEMON_VENDORS__AMIVOICE__URL=emulator.url, ASR_DAEMON_VENDORS__AMIVOICE__API_KEY="k")
    daemon = await start("run", "--uri", f"tcp://127.0.0.1:{port}", env=env)
    try:
        await wait_listening(port, daemon)
        ok = await asyncio.create_subprocess_exec(*CLI, "health", "--uri", f"tcp://127.0.0.1:{port}", env=env,
                                                  stdout=asyncio.subprocess.PIPE)
        out, _ = await ok.communicate()
        assert ok.returncode == 0 and b"ja-JP" in out
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 10)
    bad = await asyncio.create_subprocess_exec(*CLI, "health", "--uri", f"tcp://127.0.0.1:{port}", env=env,
                                               stderr=asyncio.subprocess.PIPE)
    await bad.communicate()
    assert bad.returncode == 1


def test_run_logs_what_check_reports_and_refuses_a_vendor_without_a_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("vendors:\n  zyun360: {}\n")
    done = subprocess.run([*CLI, "run", "--config", str(config), "--uri", f"tcp://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30, env=clean_env())
    assert done.returncode == 2
    assert "vendors.zyun360.api_key: no API key" in done.stderr
    assert "vendors.zyun360.url: ws://" in done.stderr  # the unencrypted default is warned about too
    assert "not starting" in done.stderr
