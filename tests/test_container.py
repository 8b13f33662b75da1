"""The container image and the Home Assistant add-on image, built and run for real with podman.

The image is built from this checkout (only what ``.dockerignore`` lets in) on a slim Debian base imported
from a local root (``tests/support/podman.py``). The containers share the host's network: the daemon listens on
127.0.0.1 and reaches a vendor emulator the test starts on the host, and the add-on's start program announces
itself to a fake Supervisor, a small HTTP server in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import podman
from tests.support import supervisor as fake_supervisor
from tests.support.speech import have_speech_tools, utterance
from tests.support.supervisor import FakeSupervisor
from tests.support.wyoming import describe, transcribe
from tests.test_systemd_install import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "amivoice-container-secret-4711"
STALLED_KEY = "iapp-container-secret-0815"
SCRIPT = "今日はいい天気ですね。"
IMAGE = "localhost/asr-daemon:test"
ADDON_IMAGE = "localhost/asr-daemon-addon:test"
DAEMON_UID = 10300
# podman's and docker's default wait between SIGTERM and SIGKILL, and the Supervisor's add-on default.
STOP_TIMEOUT = 10
SLOTS = 2

pytestmark = [
    pytest.mark.realpart,
    pytest.mark.skipif(podman.unavailable() is not None, reason=podman.unavailable() or ""),
    pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox"),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    base = podman.base_image("amd64")
    # The build stage is tagged too: its dependency layer stays the next build's cache when old images go.
    podman.build(f"{IMAGE}-build", build_args={"BUILD_FROM": base}, target="build")
    podman.build(IMAGE, build_args={"BUILD_FROM": base})
    podman.prune_replaced()
    size = int(podman.podman("image", "inspect", "--format", "{{.Size}}", IMAGE))
    print(f"\nimage built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB uncompressed")
    return IMAGE


@contextlib.contextmanager
def emulating(vendor: str, *options: str) -> Iterator[str]:
    """A vendor emulator on the host; yields the URL to configure."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asr_daemon", "emulate", vendor, "--port", str(port), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening" in line, line
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with emulating("amivoice", "--key", KEY, "--script", SCRIPT) as url:
        yield url


@pytest.fixture(scope="module")
def stalled_vendor() -> Iterator[str]:
    """A vendor that takes the audio and never answers: its utterance cannot finish within the drain."""
    with emulating("iapp", "--key", STALLED_KEY, "--fault", "stall") as url:
        yield url


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"asr-daemon-test-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        podman.remove(name)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> float:
    """Seconds until ``condition`` held."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def answers(port: int) -> bool:
    try:
        asyncio.run(describe(port, timeout=2))
    except (OSError, AssertionError, TimeoutError):
        return False
    return True


async def busy_answer(port: int) -> str | None:
    """The error code a new connection gets for ``transcribe`` (None: no error before the connection closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b'{"type": "transcribe", "data": {"language": "ja"}}\n')
        await writer.drain()
        async with asyncio.timeout(10):
            while line := await reader.readline():
                header = json.loads(line)
                data = header.get("data") or {}
                if header.get("data_length"):
                    data = json.loads(await reader.readexactly(header["data_length"]))
                if header.get("payload_length"):
                    await reader.readexactly(header["payload_length"])
                if header["type"] == "error":
                    return str(data.get("code"))
        return None
    finally:
        writer.close()


def readable_by_daemon(path: Path, mode: int) -> None:
    os.chown(path, DAEMON_UID, DAEMON_UID)
    path.chmod(mode)


@pytest.fixture
def supervisor() -> Iterator[FakeSupervisor]:
    with fake_supervisor.running() as server:
        yield server


def test_image_serves_home_assistant(
    image: str, emulator: str, stalled_vendor: str, container_name: str, tmp_path: Path
) -> None:
    port = free_port()
    config_dir, secrets = tmp_path / "config", tmp_path / "secrets"
    config_dir.mkdir()
    secrets.mkdir()
    (config_dir / "config.yaml").write_text(
        f"wyoming:\n  uri: tcp://127.0.0.1:{port}\n  max_sessions: {SLOTS}\n"
        f"vendors:\n  amivoice:\n    url: {emulator}\n    languages: [ja, ja-JP]\n"
        f"  iapp:\n    url: {stalled_vendor}\n    languages: [th]\n    prewarm: false\n"
        "  local:\n    languages: [en]\n"
    )
    (config_dir / "config.yaml").chmod(0o644)
    # The key reaches the container as a file in the credentials directory, as docker and podman secrets do.
    (secrets / "amivoice_api_key").write_text(KEY + "\n")
    readable_by_daemon(secrets / "amivoice_api_key", 0o400)
    (secrets / "iapp_api_key").write_text(STALLED_KEY)
    readable_by_daemon(secrets / "iapp_api_key", 0o400)
    readable_by_daemon(secrets, 0o500)

    started = time.monotonic()
    podman.podman(
        *podman.run_args(
            image,
            name=container_name,
            options=[
                "--volume",
                f"{config_dir}:/etc/asr-daemon:ro",
                "--volume",
                f"{secrets}:/run/secrets:ro",
                "--env",
                f"ASR_DAEMON_WYOMING__URI=tcp://127.0.0.1:{port}",
            ],
            command=["run", "--config", "/etc/asr-daemon/config.yaml"],
        )[len(podman.PODMAN) :]
    )
    wait_for("the daemon to answer describe", lambda: answers(port))
    print(f"container start to describe answered: {time.monotonic() - started:.2f} s")

    info = asyncio.run(describe(port))
    languages = {lang for program in info.asr for model in program.models for lang in model.languages}
    assert {"ja", "en"} <= languages, languages

    # Through the vendor with the key from the mounted file, and through the offline engine the image carries.
    result = asyncio.run(transcribe(port, utterance("good morning"), language="ja"))
    assert result.error is None and result.text == SCRIPT, result
    local = asyncio.run(transcribe(port, utterance("turn on the kitchen light"), language="en", timeout=60))
    assert local.error is None and local.text, local

    # The health check passes, also with every session slot busy (describe still gets info).
    assert subprocess.run([*podman.PODMAN, "healthcheck", "run", container_name], check=False).returncode == 0

    async def with_every_slot_taken() -> tuple[int, str | None]:
        writers = []
        try:
            for _ in range(SLOTS):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b'{"type": "transcribe", "data": {"language": "ja"}}\n')
                await writer.drain()
                writers.append(writer)
            await asyncio.sleep(0.5)
            refused = await busy_answer(port)
            health = await asyncio.create_subprocess_exec(*podman.PODMAN, "healthcheck", "run", container_name)
            return await health.wait(), refused
        finally:
            for writer in writers:
                writer.close()

    health_code, refused_code = asyncio.run(with_every_slot_taken())
    assert refused_code == "busy", refused_code  # every slot really was taken
    assert health_code == 0

    # SIGTERM with two utterances in flight: the one whose vendor answers ends with its transcript, the one whose
    # vendor stalls is cut when the drain ends, and the container exits 0 within the engines' stop timeout.
    outcomes: dict[str, Any] = {}

    def in_flight(language: str) -> None:
        outcomes[language] = asyncio.run(
            transcribe(port, utterance("what is the weather like tomorrow"), language=language, speed=1.0, timeout=30)
        )

    clients = [threading.Thread(target=in_flight, args=(language,)) for language in ("ja", "th")]
    for client in clients:
        client.start()
    time.sleep(1.0)
    stop_started = time.monotonic()
    podman.podman("stop", "--time", str(STOP_TIMEOUT), container_name, timeout=60)
    stopped_after = time.monotonic() - stop_started
    for client in clients:
        client.join(timeout=30)
    print(f"stopped {stopped_after:.1f} s after SIGTERM with a stalled utterance in flight")
    assert outcomes["ja"].error is None and outcomes["ja"].text == SCRIPT, outcomes["ja"]
    assert outcomes["th"].text is None, outcomes["th"]  # it ended without a made-up transcript
    assert podman.podman("inspect", "--format", "{{.State.ExitCode}}", container_name).strip() == "0"
    assert stopped_after < STOP_TIMEOUT

    logs = subprocess.run([*podman.PODMAN, "logs", container_name], capture_output=True, text=True, check=True)
    assert KEY not in logs.stdout + logs.stderr and STALLED_KEY not in logs.stdout + logs.stderr


def test_addon_announces_itself(
    image: str, emulator: str, supervisor: FakeSupervisor, container_name: str, tmp_path: Path
) -> None:
    podman.build(ADDON_IMAGE, context=ROOT / "addon", build_args={"BUILD_FROM": image})
    podman.prune_replaced()
    data = tmp_path / "data"
    data.mkdir()
    # What the Supervisor writes from the add-on's configuration page.
    (data / "options.json").write_text(
        json.dumps(
            {
                "vendors": [
                    {
                        "name": "amivoice",
                        "api_key": KEY,
                        "languages": "ja, ja-JP",
                        "url": emulator,
                    }
                ],
                "log_level": "info",
                "mqtt": {},
                "endpointing": {},
            }
        )
    )
    hostname = "a0d7b954-asr-daemon"
    port = free_port()
    podman.podman(
        *podman.run_args(
            ADDON_IMAGE,
            name=container_name,
            options=[
                "--hostname",
                hostname,
                "--volume",
                f"{data}:/data",
                "--env",
                f"SUPERVISOR_TOKEN={supervisor.token}",
                "--env",
                f"SUPERVISOR_API=http://127.0.0.1:{supervisor.server_port}",
                "--env",
                f"ASR_DAEMON_ADDON_PORT={port}",
                # On the host's network the test keeps it off the LAN (the environment overrides the config).
                "--env",
                f"ASR_DAEMON_WYOMING__URI=tcp://127.0.0.1:{port}",
            ],
        )[len(podman.PODMAN) :]
    )
    wait_for("the add-on to answer describe", lambda: answers(port), timeout=90)
    wait_for("the discovery message", lambda: bool(supervisor.discoveries), timeout=30)
    result = asyncio.run(transcribe(port, utterance("good morning"), language="ja"))
    assert result.error is None and result.text == SCRIPT, result
    time.sleep(1.0)  # a second announcement would have arrived by now
    assert supervisor.discoveries == [{"service": "wyoming", "config": {"uri": f"tcp://{hostname}:{port}"}}]
    assert supervisor.bad_requests == []

    # The daemon runs unprivileged; the configuration holding the key is its own and private.
    processes = podman.podman("top", container_name, "user", "args")
    assert any("asr_daemon run" in line and line.split()[0] != "root" for line in processes.splitlines()), processes

    podman.podman("stop", "--time", str(STOP_TIMEOUT), container_name, timeout=60)
    assert podman.podman("inspect", "--format", "{{.State.ExitCode}}", container_name).strip() == "0"
    logs = subprocess.run([*podman.PODMAN, "logs", container_name], capture_output=True, text=True, check=True)
    assert KEY not in logs.stdout + logs.stderr
    assert supervisor.token not in logs.stdout + logs.stderr
