"""MQTT: events to a broker with aiomqtt, Home Assistant MQTT discovery, and a durable outbox for finals.

Topics (``<base>`` is ``<mqtt.topic_prefix>/<node_id>``, e.g. ``asr-daemon/kitchen-pi``):

====================================  =====  ========  =====================================================
topic                                 QoS    retained  payload
====================================  =====  ========  =====================================================
``<base>/availability``               1      yes       ``online`` / ``offline`` (also the last will)
``<base>/transcript``                 1      no        a final transcript event (+ ``event_type``)
``<base>/last_transcript``            1      yes       ``id``, ``time``, ``text`` (≤ 255 chars), ``truncated``...
``<base>/partial``                    0      no        a partial transcript event
``<base>/utterance``                  0      no        utterance-start / utterance-end events
``<base>/error``                      1      no        a session error event
``<base>/state``                      1      yes       the daemon's state event (``ready``, ``stopping``)
``<base>/mic/state``                  1      yes       the microphone's state event (``listening``, ...)
``<base>/satellite/<name>/state``     1      yes       a satellite's state event (``connected``, ``streaming``,
                                                       ``unavailable``)
====================================  =====  ========  =====================================================

Every payload but availability is a JSON object with an ``id`` that identifies the event everywhere (a QoS 1
duplicate has the same ``id``). ``docs/mqtt.md`` shows each payload.

Delivery. The sink owns its outbox: a fresh aiomqtt client per connection (a reused one would re-deliver what
paho queued while disconnected, after newer messages), and a message counts as sent only when the broker
acknowledged it. Every final is written to an on-disk ``Spool`` (on the spool's own thread, in arrival order)
and removed once the broker acknowledged it and the write is done, so transcripts made while the broker is
unreachable, or before a crash or restart, are delivered later, in order. While connected, with nothing older
waiting in the spool, a final is published from memory at once, beside its write: a slow disk (an fsync can take
hundreds of ms on an SD card) never delays a transcript, and the spool still holds everything not yet
acknowledged. Other events are live only: while disconnected they are dropped (retained states are re-published on
connect). Reconnects back off exponentially with jitter. At shutdown the outbox gets ``events.flush_timeout``,
then ``offline`` is published and the connection closed cleanly (the broker then drops the last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiomqtt

from .. import __version__
from ..events import AsrEvent, EventKind
from ..resilience.backoff import Backoff
from ..settings import ConfigError, MqttSettings
from .spool import Spool

_LOGGER = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
SENSOR_MAX_CHARS = 255
# Live (not spooled) messages waiting for the broker; the oldest go first when it is full.
MAX_LIVE = 256
# Events of a satellite have the source ``satellite:<name>`` (a name is letters, digits, - and _).
SATELLITE_PREFIX = "satellite:"
# Seconds to wait for the broker to acknowledge one message before the connection is considered broken.
PUBLISH_TIMEOUT = 10.0
# The sink sends small messages back to back (an utterance's end, then its final): with Nagle's algorithm the
# second would wait for the broker's delayed ACK of the first, 40 ms on Linux.
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Final:
    """A final of this connection, published from memory while the spool writes it."""

    event: AsrEvent
    # Its sequence number in the spool once written (an exception: the write failed).
    stored: Future[int]


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Topics:
    """Every topic the sink uses, from the settings."""

    def __init__(self, settings: MqttSettings) -> None:
        self.node = settings.node()
        self.base = f"{settings.topic_prefix}/{self.node}"
        self.availability = f"{self.base}/availability"
        self.transcript = f"{self.base}/transcript"
        self.last_transcript = f"{self.base}/last_transcript"
        self.partial = f"{self.base}/partial"
        self.utterance = f"{self.base}/utterance"
        self.error = f"{self.base}/error"
        self.state = f"{self.base}/state"
        self.mic_state = f"{self.base}/mic/state"
        self.discovery_prefix = settings.discovery_prefix
        self.ha_status = f"{settings.discovery_prefix}/status"
        self.event_config = f"{settings.discovery_prefix}/event/{self.node}/transcript/config"
        self.sensor_config = f"{settings.discovery_prefix}/sensor/{self.node}/last_transcript/config"

    def state_topic(self, source: str) -> str:
        """Where a state event of ``source`` is retained: the daemon's, a satellite's, else the microphone's."""
        if source == "daemon":
            return self.state
        if source.startswith(SATELLITE_PREFIX):
            return f"{self.base}/satellite/{source.removeprefix(SATELLITE_PREFIX)}/state"
        return self.mic_state


# A spooled final's fields and the types its payloads need (the file may have been edited, or be damaged).
_SPOOLED_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "source": (str,),
    "time": (int, float),
    "text": (str, type(None)),
    "session": (str, type(None)),
    "vendor": (str, type(None)),
    "language": (str, type(None)),
    "engine": (str, type(None)),
    "started": (int, float, type(None)),
    "ended": (int, float, type(None)),
    "audio_seconds": (int, float, type(None)),
    "latency": (int, float, type(None)),
}


def spooled_final(record: dict[str, Any]) -> AsrEvent:
    """A final transcript event read back from the spool; ``ValueError`` says why a record is not one."""
    if record.get("kind") != EventKind.TRANSCRIPT.value:
        raise ValueError("it is not a transcript event (its 'kind' is missing or another)")
    for key, types in _SPOOLED_TYPES.items():
        value = record.get(key)
        if key in ("id", "source", "time") and value is None:
            raise ValueError(f"its {key!r} is missing")
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"its {key!r} is not a {' or '.join(t.__name__ for t in types if t is not type(None))}")
    return AsrEvent.from_dict(record)


def transcript_payload(event: AsrEvent) -> bytes:
    """A final on ``<base>/transcript``: the event, plus ``event_type`` for Home Assistant's event entity."""
    data = event.to_dict()
    data["event_type"] = "transcript"
    return _json(data)


def last_transcript_payload(event: AsrEvent) -> bytes:
    """The sensor's state: the text cut to what a Home Assistant state may hold (255 characters)."""
    text = event.text or ""
    data: dict[str, Any] = {
        "id": event.id,
        "time": round(event.time, 3),
        "text": text[:SENSOR_MAX_CHARS],
        "truncated": len(text) > SENSOR_MAX_CHARS,
        "source": event.source,
        "vendor": event.vendor,
        "language": event.language,
    }
    return _json(data)


def discovery_messages(topics: Topics, version: str = __version__) -> list[Outgoing]:
    """Home Assistant MQTT discovery: one device with an event entity and a last-transcript sensor."""
    node = topics.node
    device = {
        "identifiers": [f"asr-daemon_{node}"],
        "name": f"asr-daemon {node}",
        "manufacturer": "asr-daemon",
        "model": "Cloud speech-to-text bridge",
        "sw_version": version,
    }
    common: dict[str, Any] = {
        "device": device,
        "origin": {"name": "asr-daemon", "sw_version": version},
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
    }
    event_entity = {
        **common,
        "name": "Transcript",
        "unique_id": f"asr-daemon_{node}_transcript",
        "state_topic": topics.transcript,
        "event_types": ["transcript"],
        "icon": "mdi:account-voice",
    }
    sensor = {
        **common,
        "name": "Last transcript",
        "unique_id": f"asr-daemon_{node}_last_transcript",
        "state_topic": topics.last_transcript,
        "value_template": "{{ value_json.text }}",
        "json_attributes_topic": topics.last_transcript,
        "icon": "mdi:text-box-outline",
    }
    return [
        Outgoing(topics.event_config, _json(event_entity), 1, True),
        Outgoing(topics.sensor_config, _json(sensor), 1, True),
    ]


class MqttSink:
    name = "mqtt"

    def __init__(self, settings: MqttSettings, *, flush_timeout: float = 5.0) -> None:
        if not settings.host:
            raise ValueError("mqtt.host is not set")
        self.settings = settings
        self.topics = Topics(settings)
        self.flush_timeout = flush_timeout
        self.client_id = settings.client_id or f"asr-daemon-{self.topics.node}"
        self.spool = Spool(
            settings.spool_path(), max_items=settings.spool_max_messages, max_bytes=settings.spool_max_bytes
        )
        # One thread for every spool operation: writes, reads and removals happen in the order they were asked.
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqtt-spool")
        # Finals published from memory (nothing older was spooled when they came), oldest first.
        self._fresh: deque[_Final] = deque()
        # Finals to read back from the spool first: from an earlier run, or made while not connected.
        self._backlog = 0
        self.connected = asyncio.Event()
        self.connections = 0
        self.finals_published = 0
        self._live: deque[Outgoing] = deque(maxlen=MAX_LIVE)
        self._retained: dict[str, Outgoing] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._flush_deadline = 0.0
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifetime ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSink:
        try:
            await self._on_spool(self.spool.open)
        except OSError as exc:
            self._spool_thread.shutdown(wait=False)
            raise ConfigError(
                f"mqtt.spool_dir = {str(self.spool.directory)!r}: cannot use it ({exc.strerror or exc})"
            ) from None
        self._backlog = len(self.spool)
        self._task = asyncio.create_task(self._run(), name="mqtt")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await self._stop(task)
        finally:
            # Writes under way finish: a final not acknowledged stays spooled for the next run.
            await asyncio.to_thread(self._spool_thread.shutdown, wait=True)

    async def _stop(self, task: asyncio.Task[None]) -> None:
        self._flush_deadline = asyncio.get_running_loop().time() + self.flush_timeout
        self._closing = True
        self._closed.set()
        self._wake.set()
        try:
            # The publisher stops at the flush deadline, then offline still needs a moment.
            async with asyncio.timeout(self.flush_timeout + PUBLISH_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            _LOGGER.warning("mqtt: could not flush and say offline in time; %d final(s) stay spooled", len(self.spool))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:
            _LOGGER.exception("mqtt: failed while closing")

    # -- events in ---------------------------------------------------------------------------------------

    async def handle(self, event: AsrEvent) -> None:
        topics = self.topics
        if event.kind is EventKind.TRANSCRIPT:
            stored = self._spool_thread.submit(self.spool.append, event.to_dict())
            stored.add_done_callback(_log_spool_failure)
            if self.connected.is_set() and not self._backlog:
                self._fresh.append(_Final(event, stored))
            else:
                self._backlog += 1
            self._wake.set()
            return
        if event.kind is EventKind.STATE:
            topic = topics.state_topic(event.source)
            message = Outgoing(topic, _json(event.to_dict()), 1, True)
            self._retained[topic] = message
        elif event.kind is EventKind.PARTIAL:
            if not self.settings.partials:
                return
            message = Outgoing(topics.partial, _json(event.to_dict()), 0, False)
        elif event.kind is EventKind.ERROR:
            message = Outgoing(topics.error, _json(event.to_dict()), 1, False)
        else:
            message = Outgoing(topics.utterance, _json(event.to_dict()), 0, False)
        if self.connected.is_set():
            self._live.append(message)
            self._wake.set()

    # -- the connection ----------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        settings = self.settings
        assert settings.host is not None
        tls = aiomqtt.TLSParameters(ca_certs=settings.tls_ca_file) if settings.tls else None
        return aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password is not None else None,
            identifier=self.client_id,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
            keepalive=settings.keepalive,
            timeout=PUBLISH_TIMEOUT,
            tls_params=tls,
            socket_options=SOCKET_OPTIONS,
            logger=logging.getLogger("asr_daemon.sinks.mqtt.paho"),
        )

    async def _run(self) -> None:
        settings = self.settings
        backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        where = f"{settings.host}:{settings.port}"
        while not self._closing:
            delay: float | None = None
            client = self._client()
            try:
                async with client:
                    self.connections += 1
                    backoff.reset()
                    self.connected.set()
                    _LOGGER.info(
                        "mqtt: connected to %s as %s (%d final(s) spooled)", where, self.client_id, len(self.spool)
                    )
                    if await self._serve(client):
                        return
            except aiomqtt.MqttError as exc:
                if self._closing:
                    return
                delay = backoff.next_delay()
                _LOGGER.warning("mqtt: %s: %s; retrying in %.1f s", where, exc or type(exc).__name__, delay)
            except Exception:
                delay = backoff.next_delay()
                _LOGGER.exception("mqtt: unexpected failure; reconnecting in %.1f s", delay)
            finally:
                self.connected.clear()
                self._live.clear()
                # Not acknowledged on this connection: read back from the spool, in order, on the next one.
                self._backlog += len(self._fresh)
                self._fresh.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff.next_delay() if delay is None else delay):
                    await self._closed.wait()

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Run one connection; True when it ended because the sink is closing (offline was published)."""
        await client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        if self.settings.discovery:
            await self._send_discovery(client)
            await client.subscribe(self.topics.ha_status, qos=1)
        for message in list(self._retained.values()):
            await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        listener = asyncio.create_task(self._listen(client), name="mqtt listen")
        publisher = asyncio.create_task(self._publish(client), name="mqtt publish")
        try:
            await asyncio.wait((listener, publisher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listener, publisher):
                task.cancel()
            await asyncio.gather(listener, publisher, return_exceptions=True)
        if not publisher.cancelled() and publisher.exception() is None:
            # Everything is sent and the sink is closing.
            await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True, timeout=2)
            _LOGGER.info("mqtt: published offline; disconnecting")
            return True
        for task in (publisher, listener):
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        raise aiomqtt.MqttError("the connection ended")

    async def _send_discovery(self, client: aiomqtt.Client) -> None:
        for message in discovery_messages(self.topics):
            await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(self.topics.ha_status) and message.payload in (b"online", "online"):
                _LOGGER.info("mqtt: Home Assistant is online; sending discovery again")
                await self._send_discovery(client)

    async def _publish(self, client: aiomqtt.Client) -> None:
        """Send spooled finals, then this connection's (in order), then live messages; returns once closing and
        all is sent."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if self._closing and loop.time() > self._flush_deadline:
                if self._backlog or self._fresh:
                    _LOGGER.warning("mqtt: shutting down with %d final(s) still spooled", len(self.spool))
                return
            if self._backlog:
                await self._publish_spooled(client)
                continue
            if self._fresh:
                final = self._fresh[0]
                await self._send_final(client, final.event)
                # Removed once written; the next final does not wait for the disk.
                self._spool_thread.submit(self._remove_stored, final.stored)
                if self._fresh and self._fresh[0] is final:
                    self._fresh.popleft()
                self.finals_published += 1
                continue
            if self._live:
                message = self._live[0]
                await client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
                if self._live and self._live[0] is message:
                    self._live.popleft()
                continue
            if self._closing:
                return
            await self._wake.wait()

    async def _publish_spooled(self, client: aiomqtt.Client) -> None:
        """The oldest spooled final, read back from the spool."""
        head = await self._on_spool(self.spool.peek)
        if head is None:
            self._backlog = 0  # fewer than counted: some were dropped (spool full) or could not be written
            return
        seq, record = head
        try:
            event = spooled_final(record)
        except ValueError as exc:
            # Publishing it would fail the same way on every reconnection.
            await self._on_spool(self.spool.set_aside, seq, str(exc))
        else:
            await self._send_final(client, event)
            await self._on_spool(self.spool.remove, seq)
            self.finals_published += 1
        self._backlog = max(0, self._backlog - 1)

    async def _send_final(self, client: aiomqtt.Client, event: AsrEvent) -> None:
        topics = self.topics
        await client.publish(topics.transcript, transcript_payload(event), qos=1)
        await client.publish(topics.last_transcript, last_transcript_payload(event), qos=1, retain=True)

    def _on_spool(self, call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self._spool_thread, call, *args)

    def _remove_stored(self, stored: Future[int]) -> None:
        """On the spool's thread, after the write (its one thread runs the jobs in order): forget the record."""
        if stored.done() and not stored.cancelled() and stored.exception() is None:
            self.spool.remove(stored.result())


def _log_spool_failure(stored: Future[int]) -> None:
    if stored.cancelled():
        return
    error = stored.exception()
    if error is not None:
        _LOGGER.error("mqtt: could not spool a final (%s): it is delivered only if this connection takes it", error)
