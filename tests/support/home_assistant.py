"""The real Home Assistant (2026.11) in a cached Debian forky root, driven as a user and a satellite would.

``run_voice_scenario`` runs inside a private network namespace (``tests.support.netns``): Home Assistant,
the daemons and the vendor emulator share its loopback, so nothing Home Assistant loads can reach the
internet or send multicast on the machine's interfaces. There it starts the emulator and one daemon per
mode, starts Home Assistant (``chroot`` into the cached root, read-only, with /tmp bound in for its
configuration), onboards a user, adds each daemon through the Wyoming config flow, creates a pipeline per
daemon and runs ``assist_pipeline/run`` (stt stage only) with speech then silence sent at real time.

    python -m tests.support.home_assistant --requests 5    # the figures of docs/home-assistant.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support import debian_root

RATE, WIDTH = 16000, 2
CHUNK = 320  # Home Assistant's voice pipeline sends 10 ms chunks
CLIENT_ID = "http://127.0.0.1/"  # an IndieAuth client id: any URL
SCRIPT = ("今日はいい天気ですね。",)
LANGUAGE = "ja"
SPOKEN = "please turn on the living room light"
TAIL_SECONDS = 4.0  # silence after the speech: longer than any end-of-speech detector waits
START_TIMEOUT = 240.0  # a cold start compiles nothing (bytecode is in the root) but loads ~100 integrations


def unavailable() -> str | None:
    """Why the real Home Assistant cannot run here, or None."""
    if not debian_root.have_tools():
        return "needs root and debootstrap"
    from tests.support.netns import netns_unavailable

    return netns_unavailable()


# --- Home Assistant as a process ------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Home Assistant must not outlive the namespace's process (a killed test run leaves nothing behind).
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


CONFIGURATION = """\
# Only what the voice pipeline and the Wyoming integration need: no default_config, nothing that
# discovers or reaches out.
homeassistant:
  name: asr-daemon test
  latitude: 35.68
  longitude: 139.69
  elevation: 40
  unit_system: metric
  time_zone: UTC
  currency: JPY
  country: JP
  language: en
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
"""


@dataclass
class HomeAssistant:
    port: int
    config_dir: Path
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True, form: bool = False) -> Any:
        """One REST call; returns the decoded JSON answer (AssertionError with the body on an HTTP error)."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: {error.code} {error.read()[:500]!r}") from None

    def log_tail(self, size: int = 6000) -> str:
        log = self.config_dir / "home-assistant.log"
        return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


@contextlib.asynccontextmanager
async def running_home_assistant(root: Path) -> AsyncIterator[HomeAssistant]:
    """Home Assistant started in ``root`` (read-only) with a fresh configuration; stopped on exit."""
    config_dir = Path(tempfile.mkdtemp(prefix="asr-daemon-ha-", dir="/tmp"))
    ha = HomeAssistant(port=free_port(), config_dir=config_dir)
    (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=ha.port))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(config_dir),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        f"{debian_root.HA_VENV}/bin/hass",
        "--config",
        str(config_dir),
        "--skip-pip",  # the root has every requirement; nothing is installed at run time
        "--log-file",
        str(config_dir / "home-assistant.log"),
    ]
    process = await asyncio.create_subprocess_exec(
        *debian_root.chroot_command(root, command, writable=("/tmp",)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        await _wait_until_up(ha, process)
        yield ha
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(60):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if os.environ.get("ASR_DAEMON_KEEP_HA_CONFIG") is None:  # set it to read home-assistant.log after a run
            shutil.rmtree(config_dir, ignore_errors=True)


async def _wait_until_up(ha: HomeAssistant, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.returncode is not None:
            raise AssertionError(f"Home Assistant exited ({process.returncode}):\n{ha.log_tail()}")
        try:
            steps = await asyncio.to_thread(ha.request, "GET", "/api/onboarding", auth=False)
        except (OSError, AssertionError):
            steps = None
        if steps is not None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Home Assistant did not answer in {START_TIMEOUT:.0f} s:\n{ha.log_tail()}")
        await asyncio.sleep(0.5)


def onboard(ha: HomeAssistant) -> None:
    """Create the owner through the onboarding API and keep an access token for it."""
    user = {
        "client_id": CLIENT_ID,
        "name": "Test Owner",
        "username": "owner",
        "password": "a-long-test-password",
        "language": "en",
    }
    code = ha.request("POST", "/api/onboarding/users", user, auth=False)["auth_code"]
    grant = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID}
    ha.token = ha.request("POST", "/auth/token", grant, auth=False, form=True)["access_token"]


def add_wyoming(ha: HomeAssistant, port: int) -> str:
    """Add the Wyoming server at 127.0.0.1:``port`` through the config flow, as the UI does; its entry id."""
    flow = ha.request("POST", "/api/config/config_entries/flow", {"handler": "wyoming"})
    assert flow.get("type") == "form", flow
    done = ha.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"host": "127.0.0.1", "port": port})
    assert done.get("type") == "create_entry", done
    entry_id: str = done["result"]["entry_id"]
    return entry_id


# --- the websocket API ----------------------------------------------------------------------------------


class Websocket:
    """Home Assistant's websocket API: authenticated, one command at a time, events by subscription id."""

    def __init__(self, ha: HomeAssistant) -> None:
        self._ha = ha
        self._next_id = 1
        self._connection: Any = None

    async def __aenter__(self) -> Websocket:
        from websockets.asyncio.client import connect

        self._connection = await connect(f"ws://127.0.0.1:{self._ha.port}/api/websocket", max_size=None)
        assert (await self.receive())["type"] == "auth_required"
        await self.send({"type": "auth", "access_token": self._ha.token})
        answer = await self.receive()
        assert answer["type"] == "auth_ok", answer
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._connection.close()

    async def send(self, message: dict[str, Any]) -> None:
        await self._connection.send(json.dumps(message))

    async def send_binary(self, data: bytes) -> None:
        await self._connection.send(data)

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self._connection.recv())
        return message

    async def command(self, message: dict[str, Any]) -> Any:
        """Send a command and return its result (AssertionError if it failed)."""
        ident = self._next_id
        self._next_id += 1
        await self.send({"id": ident, **message})
        while True:
            answer = await self.receive()
            if answer.get("id") == ident and answer["type"] == "result":
                assert answer["success"], answer
                return answer["result"]

    def new_id(self) -> int:
        ident = self._next_id
        self._next_id += 1
        return ident


async def stt_entity(ws: Websocket, entry_id: str, within: float = 30) -> str:
    """The speech-to-text entity the Wyoming config entry ``entry_id`` created."""
    deadline = time.monotonic() + within
    while True:
        for entry in await ws.command({"type": "config/entity_registry/list"}):
            if entry["config_entry_id"] == entry_id and entry["entity_id"].startswith("stt."):
                entity_id: str = entry["entity_id"]
                return entity_id
        assert time.monotonic() < deadline, f"no stt entity for config entry {entry_id}"
        await asyncio.sleep(0.5)


async def create_pipeline(ws: Websocket, name: str, stt_engine: str) -> str:
    pipeline = await ws.command(
        {
            "type": "assist_pipeline/pipeline/create",
            "name": name,
            "language": LANGUAGE,
            "conversation_engine": "conversation.home_assistant",
            "conversation_language": LANGUAGE,
            "stt_engine": stt_engine,
            "stt_language": LANGUAGE,
            "tts_engine": None,
            "tts_language": None,
            "tts_voice": None,
            "wake_word_entity": None,
            "wake_word_id": None,
        }
    )
    pipeline_id: str = pipeline["id"]
    return pipeline_id


@dataclass
class PipelineRun:
    """One ``assist_pipeline/run`` (stt stage only): its events with their arrival times."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    last_voiced_sent: float = 0.0  # when the chunk holding the last voiced sample was sent
    chunks_sent: int = 0

    def first(self, kind: str) -> tuple[float, dict[str, Any]] | None:
        return next(((at, data) for at, event, data in self.events if event == kind), None)

    def kinds(self) -> list[str]:
        return [event for _, event, _ in self.events]

    @property
    def text(self) -> str | None:
        end = self.first("stt-end")
        return None if end is None else str(end[1]["stt_output"]["text"])

    def ms_after_last_voice(self, kind: str) -> float | None:
        """Milliseconds from sending the last voiced frame to receiving the first ``kind`` event."""
        event = self.first(kind)
        return None if event is None else (event[0] - self.last_voiced_sent) * 1000


async def run_stt(
    ws: Websocket, pipeline_id: str, pcm: bytes, last_voiced_byte: int, timeout: float = 60
) -> PipelineRun:
    """Run the pipeline's stt stage with ``pcm`` sent at real time in 10 ms chunks, reading events meanwhile."""
    run = PipelineRun()
    ident = ws.new_id()
    await ws.send(
        {
            "id": ident,
            "type": "assist_pipeline/run",
            "pipeline": pipeline_id,
            "start_stage": "stt",
            "end_stage": "stt",
            "input": {"sample_rate": RATE},
            "timeout": timeout,
        }
    )
    handler: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def read() -> None:
        while True:
            message = await ws.receive()
            if message.get("id") != ident:
                continue
            if message["type"] == "result":
                if not message["success"]:
                    handler.set_exception(AssertionError(f"assist_pipeline/run refused: {message}"))
                    return
                continue
            event = message["event"]
            run.events.append((time.monotonic(), event["type"], event.get("data") or {}))
            if event["type"] == "run-start":
                handler.set_result(int(event["data"]["runner_data"]["stt_binary_handler_id"]))
            if event["type"] in ("stt-end", "error", "run-end"):
                finished.set()
            if event["type"] in ("run-end", "error"):
                return

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(timeout):
            prefix = bytes([await handler])
            start = time.monotonic()
            last_voiced_chunk = last_voiced_byte // CHUNK
            for index, offset in enumerate(range(0, len(pcm), CHUNK)):
                if finished.is_set():
                    break
                await asyncio.sleep(max(0.0, start + index * CHUNK / (RATE * WIDTH) - time.monotonic()))
                await ws.send_binary(prefix + pcm[offset : offset + CHUNK])
                run.chunks_sent += 1
                if index == last_voiced_chunk:
                    run.last_voiced_sent = time.monotonic()
            if not finished.is_set():
                await ws.send_binary(prefix)  # the end of the audio
            await reader
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return run


# --- the scenario (inside a private network namespace) --------------------------------------------------


@dataclass
class Mode:
    name: str
    daemon_port: int = 0
    requires_external_vad: bool | None = None  # as the daemon's describe says
    runs: list[dict[str, Any]] = field(default_factory=list)


def speech_then_silence() -> tuple[bytes, int]:
    """Speech then ``TAIL_SECONDS`` of silence, and the offset of its last voiced byte."""
    from tests.support.speech import silence, speech

    spoken = speech(SPOKEN)
    lead = silence(300)
    return lead + spoken + silence(int(TAIL_SECONDS * 1000)), len(lead) + len(spoken) - 1


def _endpointing_config(enabled: bool) -> dict[str, Any]:
    from asr_daemon.config import Settings

    # Daemons without the setting have no endpointing: they behave as "enabled: false".
    return {"endpointing": {"enabled": enabled}} if "endpointing" in Settings.model_fields else {}


async def run_voice_scenario(root: str, requests: int, modes: list[str]) -> dict[str, Any]:
    """Home Assistant adds one daemon per mode ("ha_vad": endpointing off, "endpointing": on) and runs
    ``requests`` stt runs through each; returns every run's events and timings."""
    from asr_daemon.emulators.amivoice import AmiVoiceEmulator
    from asr_daemon.emulators.base import EmulatorOptions
    from tests.support.daemon import running_daemon
    from tests.support.wyoming import describe

    pcm, last_voiced_byte = speech_then_silence()
    result: dict[str, Any] = {"modes": {}}
    emulator = AmiVoiceEmulator(EmulatorOptions(script=list(SCRIPT), recognise_by_audio=True))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(emulator.running())
        vendor = {"amivoice": {"url": emulator.url, "api_key": "test-key"}}
        started = time.monotonic()
        ha = await stack.enter_async_context(running_home_assistant(Path(root)))
        result["start_seconds"] = time.monotonic() - started
        try:
            await asyncio.to_thread(onboard, ha)
            async with Websocket(ha) as ws:
                for name in modes:
                    mode = Mode(name)
                    config = {"vendors": vendor, **_endpointing_config(name == "endpointing")}
                    daemon = await stack.enter_async_context(running_daemon(config))
                    assert daemon.port is not None
                    mode.daemon_port = daemon.port
                    info = await describe(daemon.port)
                    mode.requires_external_vad = info.asr[0].requires_external_vad
                    result["modes"][name] = asdict(mode)
                    if name == "endpointing" and mode.requires_external_vad is not False:
                        continue  # a daemon without endpointing: the "ha_vad" runs already cover it
                    entry_id = await asyncio.to_thread(add_wyoming, ha, daemon.port)
                    entity = await stt_entity(ws, entry_id)
                    pipeline_id = await create_pipeline(ws, f"asr-daemon {name}", entity)
                    for _ in range(requests):
                        run = await run_stt(ws, pipeline_id, pcm, last_voiced_byte)
                        mode.runs.append(
                            {
                                "kinds": run.kinds(),
                                "text": run.text,
                                "voice_to_stt_end_ms": run.ms_after_last_voice("stt-end"),
                                "voice_to_vad_end_ms": run.ms_after_last_voice("stt-vad-end"),
                                "chunks_sent": run.chunks_sent,
                                "stt_start": (run.first("stt-start") or (0, {}))[1],
                                "errors": [data for _, kind, data in run.events if kind == "error"],
                            }
                        )
                    result["modes"][name] = asdict(mode)
        except BaseException:
            sys.stderr.write(f"Home Assistant's log:\n{ha.log_tail()}\n")
            raise
    return result


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.home_assistant", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--mode", action="append", choices=["ha_vad", "endpointing"])
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason is not None:
        print(f"home_assistant: {reason}", file=sys.stderr)
        return 1
    from tests.support.netns import run_in_netns

    started = time.monotonic()
    root = debian_root.ensure_ha_root()
    print(f"root ready in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    scenario = {"root": str(root), "requests": args.requests, "modes": args.mode or ["ha_vad", "endpointing"]}
    result = run_in_netns("tests.support.home_assistant:run_voice_scenario", scenario, timeout=900)[-1]["result"]
    print(f"Home Assistant up in {result['start_seconds']:.1f} s; scenario {time.monotonic() - started:.1f} s")
    for name, mode in result["modes"].items():
        latencies = [run["voice_to_stt_end_ms"] for run in mode["runs"] if run["voice_to_stt_end_ms"] is not None]
        texts = [run["text"] for run in mode["runs"]]
        print(f"{name}: requires_external_vad={mode['requires_external_vad']} texts={texts}")
        vad_ends = [run["voice_to_vad_end_ms"] for run in mode["runs"] if run["voice_to_vad_end_ms"] is not None]
        if vad_ends:
            print(f"  last voiced frame -> stt-vad-end: p50 {p50(vad_ends):.0f} ms")
        if latencies:
            print(f"  last voiced frame -> stt-end: p50 {p50(latencies):.0f} ms, "
                  f"min {min(latencies):.0f}, max {max(latencies):.0f} ({len(latencies)} runs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
