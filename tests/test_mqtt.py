"""MQTT against a real broker (Debian's mosquitto, started by the tests on 127.0.0.1 and a free port): topics
and payloads, Home Assistant discovery, availability and the last will, and the on-disk spool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.events import AsrEvent, EventKind
from asr_daemon.settings import MqttSettings
from asr_daemon.sinks.mqtt import SENSOR_MAX_CHARS, MqttSink
from tests.support.daemon import running_daemon
from tests.support.mosquitto import Mosquitto, free_port, have_mosquitto
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = [
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is needed (scripts/setup installs it)"),
    pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed"),
]

NODE = "kitchen"
BASE = f"asr-daemon/{NODE}"


class Watcher:
    """An MQTT client that records every message on its subscriptions (like Home Assistant or mosquitto_sub)."""

    def __init__(self, broker: Mosquitto, *topics: str, client_id: str | None = None, persistent: bool = False) -> None:
        self.broker = broker
        self.topics = topics
        self.client = aiomqtt.Client(
            broker.host, broker.port, identifier=client_id, clean_session=False if persistent else None
        )
        self.messages: list[aiomqtt.Message] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        await self.client.__aenter__()
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._new.set()

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.value == topic]

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in self.on(topic)]  # type: ignore[arg-type]

    async def wait_for(self, done: Callable[[Watcher], bool], timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                self._new.clear()
                await self._new.wait()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def mqtt_config(
    broker: Mosquitto, tmp_path: Path, emulator: AmiVoiceEmulator | None = None, **mqtt: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "node_id": NODE,
            "spool_dir": str(tmp_path / "spool"),
            "reconnect_min_delay": 0.1,
            "reconnect_max_delay": 0.5,
            **mqtt,
        },
        "events": {"flush_timeout": 3},
    }
    if emulator is not None:
        config["vendors"] = {"amivoice": {"url": emulator.url, "api_key": "test-key"}}
    return config


@contextlib.asynccontextmanager
async def amivoice(**options: Any) -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(**options)).running() as emulator:
        assert isinstance(emulator, AmiVoiceEmulator)
        yield emulator


def text_of(message: aiomqtt.Message) -> str:
    payload = message.payload
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_topics_payloads_and_home_assistant_discovery(broker: Mosquitto, tmp_path: Path) -> None:
    long_text = "長い文です" * 60  # 300 characters: more than a Home Assistant state may hold
    async with amivoice(script=[long_text]) as emulator, Watcher(broker, f"{BASE}/#", "homeassistant/#") as ha:
        async with running_daemon(mqtt_config(broker, tmp_path, emulator)) as daemon:
            await ha.wait_for(lambda w: any(text_of(m) == "online" for m in w.on(f"{BASE}/availability")))
            await ha.wait_for(lambda w: bool(w.on(f"{BASE}/state")))
            await ha.wait_for(lambda w: bool(w.on(f"homeassistant/sensor/{NODE}/last_transcript/config")))
            result = await transcribe(daemon.port, utterance("hello there"), language="ja", realtime=True)  # type: ignore[arg-type]
            assert result.text == long_text
            await ha.wait_for(lambda w: bool(w.on(f"{BASE}/last_transcript")))
            await ha.wait_for(lambda w: any(p["kind"] == "utterance-end" for p in w.payloads(f"{BASE}/utterance")))

            # Home Assistant restarts and announces itself: discovery is sent again.
            before = len(ha.on(f"homeassistant/event/{NODE}/transcript/config"))
            await ha.client.publish("homeassistant/status", "online", qos=1)
            await ha.wait_for(lambda w: len(w.on(f"homeassistant/event/{NODE}/transcript/config")) > before)
        # A clean shutdown says offline itself.
        await ha.wait_for(lambda w: text_of(w.on(f"{BASE}/availability")[-1]) == "offline")

    # Availability: retained, online then offline.
    availability = ha.on(f"{BASE}/availability")
    assert [text_of(m) for m in availability][-2:] == ["online", "offline"]

    # The final: QoS 1, every field, the whole text, and event_type for the event entity.
    [final_message] = ha.on(f"{BASE}/transcript")
    assert final_message.qos == 1
    final = json.loads(final_message.payload)  # type: ignore[arg-type]
    assert final["kind"] == "transcript" and final["event_type"] == "transcript"
    assert final["text"] == long_text
    assert final["source"].startswith("wyoming:127.0.0.1:")
    assert final["vendor"] == "amivoice" and final["language"] == "ja"
    assert len(final["id"]) == 28 and final["session"]
    assert final["audio_seconds"] > 0 and final["started"] <= final["ended"]

    # The sensor's state: cut to 255 characters, same id, retained.
    [last] = ha.payloads(f"{BASE}/last_transcript")
    assert last["id"] == final["id"]
    assert last["text"] == long_text[:SENSOR_MAX_CHARS] and last["truncated"] is True

    # Partials (QoS 0) and utterance start/end, all of the same session, each with its own id.
    partials = ha.on(f"{BASE}/partial")
    assert partials and all(m.qos == 0 for m in partials)
    assert all(json.loads(m.payload)["session"] == final["session"] for m in partials)  # type: ignore[arg-type]
    utterance_kinds = [p["kind"] for p in ha.payloads(f"{BASE}/utterance")]
    assert utterance_kinds == ["utterance-start", "utterance-end"]
    ours = [m for m in ha.messages if m.topic.value.startswith(BASE) and not m.topic.value.endswith("availability")]
    every = [json.loads(m.payload) for m in ours]  # type: ignore[arg-type]
    assert all("id" in payload for payload in every)
    assert len({payload["id"] for payload in every}) == len(every) - 1  # last_transcript repeats the final's id

    # Daemon state: ready, then stopping.
    assert [p["state"] for p in ha.payloads(f"{BASE}/state")] == ["ready", "stopping"]

    # Discovery: one device, an event entity for transcripts and a sensor for the last one.
    event_config = ha.payloads(f"homeassistant/event/{NODE}/transcript/config")[0]
    sensor_config = ha.payloads(f"homeassistant/sensor/{NODE}/last_transcript/config")[0]
    assert event_config["state_topic"] == f"{BASE}/transcript"
    assert event_config["event_types"] == ["transcript"]
    assert sensor_config["state_topic"] == f"{BASE}/last_transcript"
    assert sensor_config["value_template"] == "{{ value_json.text }}"
    for config in (event_config, sensor_config):
        assert config["availability_topic"] == f"{BASE}/availability"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["device"]["identifiers"] == [f"asr-daemon_{NODE}"]
        assert config["unique_id"].startswith(f"asr-daemon_{NODE}_")
    assert event_config["unique_id"] != sensor_config["unique_id"]

    # What a newcomer sees: retained availability (offline), discovery, state and the last transcript.
    async with Watcher(broker, f"{BASE}/#", "homeassistant/#") as newcomer:
        await newcomer.wait_for(lambda w: len(w.messages) >= 5, timeout=5)
        await asyncio.sleep(0.3)
    retained = {m.topic.value: text_of(m) for m in newcomer.messages if m.retain}
    assert retained[f"{BASE}/availability"] == "offline"
    assert json.loads(retained[f"{BASE}/last_transcript"])["id"] == final["id"]
    assert json.loads(retained[f"{BASE}/state"])["state"] == "stopping"
    assert f"homeassistant/event/{NODE}/transcript/config" in retained
    assert f"{BASE}/transcript" not in retained


async def test_last_will_says_offline_when_the_daemon_is_killed(broker: Mosquitto, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_")}
    env.update(
        ASR_DAEMON_WYOMING__URI=f"tcp://127.0.0.1:{free_port()}",
        ASR_DAEMON_MQTT__HOST=broker.host,
        ASR_DAEMON_MQTT__PORT=str(broker.port),
        ASR_DAEMON_MQTT__NODE_ID="doomed",
        ASR_DAEMON_MQTT__SPOOL_DIR=str(tmp_path / "spool"),
    )
    topic = "asr-daemon/doomed/availability"
    async with Watcher(broker, topic) as watcher:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asr_daemon", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await watcher.wait_for(lambda w: [text_of(m) for m in w.on(topic)] == ["online"], timeout=30)
            process.send_signal(signal.SIGKILL)  # no chance to say goodbye
            await process.wait()
            await watcher.wait_for(lambda w: len(w.on(topic)) == 2, timeout=15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [text_of(m) for m in watcher.on(topic)] == ["online", "offline"]
    async with Watcher(broker, topic) as later:
        await later.wait_for(lambda w: bool(w.messages), timeout=5)
    assert later.messages[0].retain and text_of(later.messages[0]) == "offline"


async def test_spool_while_the_broker_is_down_delivers_in_order_exactly_once(broker: Mosquitto, tmp_path: Path) -> None:
    scripts = [["一番目です"], ["二番目です"], ["三番目です"]]
    topic = f"{BASE}/transcript"
    async with amivoice(stream_scripts=scripts) as emulator:
        # A consumer with a persistent session: the broker keeps its QoS 1 messages while it is away.
        async with Watcher(broker, topic, client_id="consumer", persistent=True):
            pass
        async with running_daemon(mqtt_config(broker, tmp_path, emulator)) as daemon:
            assert daemon.mqtt is not None
            subscription = daemon.events.subscribe("test")
            await asyncio.wait_for(daemon.mqtt.connected.wait(), 10)

            # In a thread: the broker's shutdown (saving its persistence) may take seconds on a busy disk, and the
            # daemon under test shares this loop; a blocked loop turns that into the sink's own timeouts.
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(30):
                while daemon.mqtt.connected.is_set():
                    await asyncio.sleep(0.02)
            for _ in scripts:
                result = await transcribe(daemon.port, utterance("hello there"), language="ja")  # type: ignore[arg-type]
                assert result.text
            made = []
            async with asyncio.timeout(5):
                while len(made) < 3:
                    event = await subscription.get()
                    subscription.done()
                    if event.kind is EventKind.TRANSCRIPT:
                        made.append(event)
            # Each final waits on disk, in order.
            async with asyncio.timeout(5):
                while len(daemon.mqtt.spool) < 3:
                    await asyncio.sleep(0.02)
            spooled = sorted((tmp_path / "spool").glob("*.json"))
            assert [json.loads(p.read_text())["text"] for p in spooled] == ["一番目です", "二番目です", "三番目です"]

            broker.start()
            async with asyncio.timeout(15):
                while len(daemon.mqtt.spool):
                    await asyncio.sleep(0.05)
            async with Watcher(broker, topic, client_id="consumer", persistent=True) as consumer:
                await consumer.wait_for(lambda w: len(w.on(topic)) >= 3)
                await asyncio.sleep(1.0)  # anything more (a duplicate) would arrive now
    payloads = consumer.payloads(topic)
    assert [p["text"] for p in payloads] == ["一番目です", "二番目です", "三番目です"]
    assert [p["id"] for p in payloads] == [e.id for e in made]
    assert not list((tmp_path / "spool").glob("*.json"))


async def test_spooled_finals_survive_a_daemon_restart(broker: Mosquitto, tmp_path: Path) -> None:
    topic = f"{BASE}/transcript"
    broker.stop()
    async with amivoice(script=["再起動の前です"]) as emulator:
        config = mqtt_config(broker, tmp_path, emulator)
        config["events"]["flush_timeout"] = 0.5
        async with running_daemon(config) as daemon:
            result = await transcribe(daemon.port, utterance("hello there"), language="ja")  # type: ignore[arg-type]
            assert result.text == "再起動の前です"
            async with asyncio.timeout(5):
                while daemon.mqtt is not None and len(daemon.mqtt.spool) < 1:
                    await asyncio.sleep(0.02)
        # Stopped with the broker unreachable: the final stays on disk.
        [left] = list((tmp_path / "spool").glob("*.json"))
        final_id = json.loads(left.read_text())["id"]

        broker.start()
        async with Watcher(broker, topic) as consumer, running_daemon(mqtt_config(broker, tmp_path, emulator)):
            await consumer.wait_for(lambda w: len(w.on(topic)) >= 1)
    [payload] = consumer.payloads(topic)
    assert payload["id"] == final_id and payload["text"] == "再起動の前です"
    assert not list((tmp_path / "spool").glob("*.json"))


async def test_password_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    from asr_daemon.config import load_settings
    from asr_daemon.redact import redact

    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret-mqtt-pass\n")
    settings = load_settings(None, {"mqtt": {"host": "127.0.0.1", "username": "asr", "password_file": str(secret)}})
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret-mqtt-pass"
    assert settings.redacted()["mqtt"]["password"] == "***"
    assert "s3cret-mqtt-pass" not in redact("connecting with s3cret-mqtt-pass")


async def test_password_from_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asr_daemon.config import load_settings

    (tmp_path / "mqtt_password").write_text("cred-pass-42\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = load_settings(None, {"mqtt": {"host": "127.0.0.1"}})
    assert settings.mqtt.password is not None and settings.mqtt.password.get_secret_value() == "cred-pass-42"


async def test_a_malformed_spool_record_is_set_aside_and_the_finals_behind_it_are_delivered(
    broker: Mosquitto, tmp_path: Path
) -> None:
    topic = f"{BASE}/transcript"
    spool = tmp_path / "spool"
    spool.mkdir()
    good = AsrEvent(EventKind.TRANSCRIPT, source="wyoming:test", text="after the bad ones").to_dict()
    records = [
        {key: value for key, value in good.items() if key != "kind"},  # no kind
        {**good, "time": "yesterday"},
        good,
    ]
    for seq, record in enumerate(records, 1):
        (spool / f"{seq:012d}.json").write_text(json.dumps(record))
    async with Watcher(broker, topic) as consumer, running_daemon(mqtt_config(broker, tmp_path)) as daemon:
        await consumer.wait_for(lambda w: len(w.on(topic)) >= 1)
        assert daemon.mqtt is not None and daemon.mqtt.connections == 1  # no reconnecting over it
    [payload] = consumer.payloads(topic)
    assert payload["id"] == good["id"] and payload["text"] == "after the bad ones"
    assert not list(spool.glob("*.json"))
    assert sorted(p.name for p in (spool / "rejected").iterdir()) == ["000000000001.json", "000000000002.json"]


def final_event(text: str) -> AsrEvent:
    return AsrEvent(EventKind.TRANSCRIPT, source="satellite:kitchen", session="s", vendor="amivoice", text=text)


@contextlib.contextmanager
def stalled_spool_writes(sink: MqttSink) -> Iterator[threading.Event]:
    """The sink's spool writes hang (a slow SD card) until the event is set."""
    release = threading.Event()
    append = sink.spool.append

    def slow_append(record: dict[str, Any]) -> int:
        release.wait(30)
        return append(record)

    sink.spool.append = slow_append  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()


def sink_for(broker: Mosquitto, tmp_path: Path) -> MqttSink:
    settings = MqttSettings(
        host=broker.host, port=broker.port, node_id=NODE, discovery=False, spool_dir=str(tmp_path / "spool"),
        reconnect_min_delay=0.1, reconnect_max_delay=0.5,
    )  # fmt: skip
    return MqttSink(settings, flush_timeout=3)


async def test_a_slow_spool_write_does_not_delay_the_transcript_and_the_spool_keeps_it_until_acknowledged(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A consumer (a satellite's command waiting for its transcript) gets it while the disk is still writing it;
    the record leaves the spool only once both the write and the broker's acknowledgement are done."""
    topic = f"{BASE}/transcript"
    sink = sink_for(broker, tmp_path)
    async with Watcher(broker, topic) as consumer, sink:
        await asyncio.wait_for(sink.connected.wait(), 10)
        with stalled_spool_writes(sink) as release:
            handling = asyncio.create_task(sink.handle(final_event("明かりをつけて")))
            await consumer.wait_for(lambda w: len(w.on(topic)) == 1, timeout=5)
            await asyncio.wait_for(handling, 1)
            assert not list((tmp_path / "spool").glob("*.json"))  # still being written
            release.set()
            async with asyncio.timeout(10):
                while sink.finals_published < 1 or len(sink.spool):
                    await asyncio.sleep(0.02)
    assert [p["text"] for p in consumer.payloads(topic)] == ["明かりをつけて"]
    assert not list((tmp_path / "spool").glob("*.json"))


async def test_finals_spooled_by_an_earlier_run_go_out_before_new_ones(broker: Mosquitto, tmp_path: Path) -> None:
    topic = f"{BASE}/transcript"
    spool = tmp_path / "spool"
    spool.mkdir()
    for seq, text in enumerate(("一番目", "二番目"), 1):
        (spool / f"{seq:012d}.json").write_text(json.dumps(final_event(text).to_dict()))
    sink = sink_for(broker, tmp_path)
    async with Watcher(broker, topic) as consumer, sink:
        await sink.handle(final_event("三番目"))
        await consumer.wait_for(lambda w: len(w.on(topic)) >= 3, timeout=10)
        await asyncio.sleep(0.2)
    assert [p["text"] for p in consumer.payloads(topic)] == ["一番目", "二番目", "三番目"]
    assert not list(spool.glob("*.json"))


async def test_a_final_whose_connection_drops_before_the_broker_took_it_is_delivered_after_reconnecting(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Published from memory on a connection that breaks: it stays spooled and goes out, once, on the next."""
    topic = f"{BASE}/transcript"
    sink = sink_for(broker, tmp_path)
    async with sink:
        await asyncio.wait_for(sink.connected.wait(), 10)
        broker.kill()
        await sink.handle(final_event("切れる前"))
        async with asyncio.timeout(15):
            while sink.connected.is_set():
                await asyncio.sleep(0.02)
        assert [json.loads(p.read_text())["text"] for p in (tmp_path / "spool").glob("*.json")] == ["切れる前"]
        broker.start()
        # Published on the new connection and acknowledged: it leaves the spool. (A consumer subscribing now could
        # come after the sink's reconnection, so what went out is read from the retained last transcript.)
        async with asyncio.timeout(15):
            while list((tmp_path / "spool").glob("*.json")):
                await asyncio.sleep(0.02)
        last = f"{BASE}/last_transcript"
        async with Watcher(broker, topic, last) as consumer:
            await consumer.wait_for(lambda w: len(w.on(last)) >= 1, timeout=15)
            await sink.handle(final_event("つながった後"))
            await consumer.wait_for(lambda w: len(w.on(topic)) >= 1, timeout=10)
            await asyncio.sleep(0.3)  # a second copy of the first would arrive now
    assert consumer.payloads(last)[0]["text"] == "切れる前"
    assert [p["text"] for p in consumer.payloads(topic)] == ["つながった後"]
    assert not list((tmp_path / "spool").glob("*.json"))


async def test_a_final_right_after_another_message_does_not_wait_for_the_brokers_delayed_ack(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """An utterance's end (QoS 0) and its final go out back to back: the final must not sit in the socket until
    the broker acknowledges the first packet (Nagle's algorithm against the broker's 40 ms delayed ACK)."""
    topic = f"{BASE}/transcript"
    sink = sink_for(broker, tmp_path)
    delays: list[float] = []
    async with Watcher(broker, topic) as consumer, sink:
        await asyncio.wait_for(sink.connected.wait(), 10)
        for index in range(20):
            await sink.handle(AsrEvent(EventKind.UTTERANCE_END, source="satellite:kitchen", session=str(index)))
            await asyncio.sleep(0.002)  # the utterance's end is on the wire, not yet acknowledged
            sent = asyncio.get_running_loop().time()
            await sink.handle(final_event(str(index)))
            await consumer.wait_for(lambda w, sent_so_far=index + 1: len(w.on(topic)) >= sent_so_far, timeout=5)
            delays.append(asyncio.get_running_loop().time() - sent)
            await asyncio.sleep(0.05)
    delays.sort()
    # Held back by the delayed ACK, most would take 40 ms or more; a busy machine delays a few, not the median.
    assert delays[len(delays) // 2] < 0.025, [round(d * 1000) for d in delays]
