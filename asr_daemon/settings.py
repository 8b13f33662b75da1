"""The sections of the configuration, one validated model each, and the keys every vendor has.

Each part of the daemon reads its own section from here; ``config.py`` assembles them, with every vendor's
section, into the whole configuration and loads it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .networks import Network, check_networks, parse_networks


class ConfigError(Exception):
    """The configuration cannot be used; the message names each bad key."""


# Who may connect by default: this host, and the private, link-local and unique-local ranges of a LAN.
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)


# A DNS label: a DNS-SD instance name must fit in one.
_MAX_INSTANCE_NAME_BYTES = 63


def check_instance_name(name: str) -> str:
    """The name, if it can be a DNS-SD instance name; ValueError saying why not otherwise."""
    if not name.strip():
        raise ValueError("zeroconf name is empty")
    if len(name.encode()) > _MAX_INSTANCE_NAME_BYTES:
        raise ValueError(f"zeroconf name {name!r} is longer than {_MAX_INSTANCE_NAME_BYTES} bytes")
    if "." in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"zeroconf name {name!r} may not contain dots or control characters")
    return name


class WyomingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(default="tcp://0.0.0.0:10300", description="Where to listen: tcp://HOST:PORT or unix://PATH")
    zeroconf: bool = Field(default=False, description="Announce the server with zeroconf for Home Assistant")
    zeroconf_name: str | None = Field(
        default=None, description="Zeroconf instance name (default: asr-daemon-<hostname>, stable across restarts)"
    )
    zeroconf_interfaces: list[str] = Field(
        default_factory=list,
        description="Interfaces (names or addresses) to announce on; empty: every non-loopback interface",
    )
    max_sessions: int = Field(default=16, ge=1, le=1024, description="Concurrent client connections")
    max_event_bytes: int = Field(
        default=1 << 20, ge=4096, le=64 << 20, description="Largest data+payload a client event may carry"
    )
    idle_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a connection may stay silent before it is closed"
    )
    allow: list[str] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description="Client networks (CIDRs) allowed to connect over TCP; others are closed at accept "
        "(default: loopback and private ranges; 0.0.0.0/0 and ::/0 allow any)",
    )

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, values: list[str]) -> list[str]:
        return check_networks("wyoming.allow", values)

    def allowed_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.allow)

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme == "tcp":
            if not parsed.hostname or parsed.port is None:
                raise ValueError("expected tcp://HOST:PORT")
        elif parsed.scheme == "unix":
            if not parsed.path:
                raise ValueError("expected unix:///path/to/socket")
        else:
            raise ValueError("expected tcp://HOST:PORT or unix://PATH")
        return value

    @field_validator("zeroconf_name")
    @classmethod
    def _check_zeroconf_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_instance_name(value)
        return value

    def instance_name(self) -> str:
        return self.zeroconf_name or f"asr-daemon-{socket.gethostname().split('.')[0]}"[:63]


# Drain + events.flush_timeout (6 + 2 s) fit the 10 s container engines and the Supervisor wait after SIGTERM.
DEFAULT_DRAIN_TIMEOUT = 6.0


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_utterance_seconds: float = Field(default=60.0, gt=0, le=3600, description="Longest utterance accepted")
    final_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds from audio-stop to the final transcript or an error"
    )
    drain_timeout: float = Field(
        default=DEFAULT_DRAIN_TIMEOUT,
        ge=0,
        le=600,
        description="Seconds in-flight utterances may take to finish at shutdown",
    )
    fallback_after: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="With fallback_vendor: seconds after audio-stop before the fallback takes over",
    )
    max_utterance_wall_seconds: float | None = Field(
        default=None,
        gt=0,
        le=7200,
        description="Wall-clock seconds from an utterance's start to its audio-stop, however the client sends "
        "(unset: twice max_utterance_seconds)",
    )

    @model_validator(mode="after")
    def _check_wall_limit(self) -> LimitsSettings:
        if self.max_utterance_wall_seconds is not None and self.max_utterance_wall_seconds < self.max_utterance_seconds:
            raise ValueError("max_utterance_wall_seconds must be at least max_utterance_seconds")
        return self

    def utterance_wall_seconds(self) -> float:
        # Real-time audio takes as long as it lasts; twice that leaves room for a slow upload to catch up.
        return self.max_utterance_wall_seconds or 2 * self.max_utterance_seconds


class BudgetSettings(BaseModel):
    """Seconds of audio sent to paid vendors (kept in memory: a restart refills every budget)."""

    model_config = ConfigDict(extra="forbid")

    daily_seconds: float | None = Field(
        default=None, gt=0, description="Audio per day for all sources together (Wyoming and microphone); unset: off"
    )
    per_client_hourly_seconds: float | None = Field(
        default=None, gt=0, description="Audio per hour per Wyoming client address; unset: off"
    )
    exempt_clients: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client networks (CIDR) without a per-client budget, e.g. Home Assistant's address",
    )

    @field_validator("exempt_clients")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        return check_networks("budget.exempt_clients", value)


class ResilienceSettings(BaseModel):
    """How vendor connections are retried and how a dead one is noticed (shared by every vendor)."""

    model_config = ConfigDict(extra="forbid")

    backoff_initial: float = Field(default=0.25, gt=0, le=30, description="First reconnect delay ceiling (seconds)")
    backoff_max: float = Field(default=5.0, gt=0, le=300, description="Largest reconnect delay ceiling (seconds)")
    max_failures: int = Field(
        default=4, ge=1, le=100, description="Failed connections in a row, without a result, before an utterance fails"
    )
    response_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds a vendor may stay silent when it owes an answer"
    )
    ping_interval: float = Field(
        default=1.5, gt=0, le=60, description="Seconds between WebSocket pings (vendors that answer pings)"
    )
    ping_timeout: float = Field(default=2.5, gt=0, le=60, description="Seconds a ping may go unanswered")


class HealthSettings(BaseModel):
    """The local HTTP endpoint with /healthz and /metrics."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(default=None, ge=0, le=65535, description="Port for /healthz and /metrics; unset: off")
    host: str = Field(default="127.0.0.1", description="Address to bind (keep it local unless a scraper needs it)")


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    format: Literal["human", "json"] = Field(default="human", description="human, or json for log shippers")


class MicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Listen on a local ALSA microphone")
    device: str | None = Field(
        default=None,
        description="Input device: a name substring or an index (see `asr-daemon devices`); default: ALSA's default",
    )
    vendor: str | None = Field(default=None, description="Vendor for the microphone; default: routed by mic.language")
    language: str | None = Field(default=None, description="Language of the microphone's speech")
    always_stream: bool = Field(
        default=False, description="Stream all audio, silence included (for vendors that segment themselves)"
    )
    rate: int | None = Field(
        default=None, ge=8000, le=192000, description="Capture rate; default: what the device offers"
    )
    channels: int | None = Field(default=None, ge=1, le=32, description="Capture channels; default: mono if offered")
    chunk_ms: int = Field(default=30, ge=10, le=200, description="Milliseconds of audio per read")
    vad_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Speech probability above which a frame is speech"
    )
    speech_seconds: float = Field(default=0.3, ge=0.01, le=5, description="Speech needed to start an utterance")
    silence_seconds: float = Field(default=0.7, ge=0.1, le=10, description="Silence that ends an utterance")
    pre_roll_seconds: float = Field(
        default=1.0, ge=0, le=5, description="Audio before detected speech that is sent with the utterance"
    )
    retry_min_delay: float = Field(default=1.0, gt=0, le=60, description="First ceiling of the random wait")
    retry_max_delay: float = Field(default=30.0, gt=0, le=3600, description="Largest ceiling of the random wait")


class EndpointingSettings(BaseModel):
    """The daemon ends each utterance when the speaker stops (docs/endpointing.md)."""

    model_config = ConfigDict(extra="forbid")

    # The defaults are the detector's own (asr_daemon.audio.endpoint.EndpointSettings); a test holds them equal.
    enabled: bool = Field(
        default=True,
        description="End each utterance when the speaker stops, and tell Home Assistant it needs no VAD of its own "
        "(false: utterances end at the client's audio-stop)",
    )
    silence_seconds: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="Silence after speech that ends an utterance (longer than pauses inside a command)",
    )
    speech_seconds: float = Field(
        default=0.3, gt=0, le=5, description="Speech, in one stretch, before an utterance counts as having any"
    )
    no_speech_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="An utterance without speech this long after its start is answered with an empty transcript",
    )


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, description="MQTT broker host; unset: no MQTT")
    port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker port (8883 is usual with TLS)")
    username: str | None = Field(default=None, description="MQTT user name")
    password: SecretStr | None = Field(default=None, description="MQTT password (prefer password_file)")
    password_file: str | None = Field(
        default=None, description="File holding the MQTT password (or systemd credential mqtt_password)"
    )
    tls: bool = Field(default=False, description="Connect with TLS")
    tls_ca_file: str | None = Field(default=None, description="CA certificate file for TLS; default: system CAs")
    client_id: str | None = Field(default=None, description="MQTT client id; default: asr-daemon-<node_id>")
    topic_prefix: str = Field(default="asr-daemon", description="Topics are <topic_prefix>/<node_id>/...")
    node_id: str | None = Field(default=None, description="This daemon's name in topics; default: the host name")
    discovery: bool = Field(default=True, description="Publish Home Assistant MQTT discovery")
    discovery_prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix")
    partials: bool = Field(default=True, description="Publish partial transcripts (QoS 0)")
    keepalive: int = Field(default=60, ge=5, le=3600, description="MQTT keepalive in seconds")
    reconnect_min_delay: float = Field(default=1.0, gt=0, le=60, description="First ceiling of the random wait")
    reconnect_max_delay: float = Field(default=60.0, gt=0, le=3600, description="Largest ceiling of the random wait")
    spool_dir: str | None = Field(
        default=None,
        description="Where finals wait while the broker is unreachable; default: $STATE_DIRECTORY/mqtt-spool "
        "or ~/.local/state/asr-daemon/mqtt-spool",
    )
    spool_max_messages: int = Field(default=10000, ge=1, le=10_000_000, description="Spool bound (records)")
    spool_max_bytes: int = Field(default=16 << 20, ge=4096, le=1 << 34, description="Spool bound (bytes)")

    @field_validator("topic_prefix", "discovery_prefix", "node_id")
    @classmethod
    def _check_topic_part(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "+#\0") or value.startswith("/")):
            raise ValueError("expected a non-empty MQTT topic without wildcards (+, #)")
        return value.rstrip("/") if value is not None else None

    def node(self) -> str:
        if self.node_id:
            return self.node_id
        host = socket.gethostname().split(".")[0]
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in host) or "asr-daemon"

    def spool_path(self) -> Path:
        if self.spool_dir:
            return Path(self.spool_dir)
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0]) / "mqtt-spool"
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "asr-daemon" / "mqtt-spool"


class EventsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jsonl: str | None = Field(default=None, description="Write events as JSON lines: '-' for stdout, or a file path")
    jsonl_partials: bool = Field(default=False, description="Include partial transcripts in the JSON lines")
    forward_uris: list[str] = Field(
        default_factory=list, description="Wyoming event URIs (tcp://HOST:PORT) that get the local sources' events"
    )
    queue_size: int = Field(default=1000, ge=10, le=1_000_000, description="Events each sink may have waiting")
    flush_timeout: float = Field(default=2.0, ge=0, le=120, description="Seconds sinks get to deliver at shutdown")

    @field_validator("forward_uris")
    @classmethod
    def _check_uris(cls, value: list[str]) -> list[str]:
        for uri in value:
            parsed = urlparse(uri)
            if parsed.scheme == "tcp" and parsed.hostname and parsed.port is not None:
                continue
            if parsed.scheme == "unix" and parsed.path:
                continue
            raise ValueError(f"{uri!r}: expected tcp://HOST:PORT or unix://PATH")
        return value


def _check_wyoming_uri(key: str, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme == "tcp" and parsed.hostname and parsed.port is not None:
        return value
    if parsed.scheme == "unix" and parsed.path:
        return value
    raise ValueError(f"{key}: expected tcp://HOST:PORT or unix://PATH, not {value!r}")


class SatelliteSettings(BaseModel):
    """One wyoming-satellite device the daemon runs the pipeline for."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(
        default=None,
        description="The satellite's Wyoming address: tcp://HOST:PORT (its --uri); unset: found by zeroconf "
        "(satellites.discover) by its name",
    )
    name: str = Field(
        description="Its name in events (source satellite:<name>) and MQTT topics: letters, digits, - and _"
    )
    language: str | None = Field(default=None, description="Language of its speech (routed to a vendor)")
    vendor: str | None = Field(default=None, description="Vendor for it; default: routed by language")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_wyoming_uri("uri", value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or len(value) > 64 or any(not (c.isascii() and (c.isalnum() or c in "-_")) for c in value):
            raise ValueError("expected 1-64 letters, digits, '-' or '_'")
        return value


class SatellitesSettings(BaseModel):
    """Voice satellites (wyoming-satellite) driven by the daemon itself, without Home Assistant."""

    model_config = ConfigDict(extra="forbid")

    devices: list[SatelliteSettings] = Field(
        default_factory=list, description="Satellites to connect to (each serves one pipeline runner at a time)"
    )
    discover: bool = Field(
        default=False,
        description="Find the satellites listed without a uri by zeroconf (_wyoming._tcp), by the name their info "
        "gives; only listed names are ever claimed",
    )
    wake_uri: str | None = Field(
        default=None,
        description="Wyoming wake-word service (e.g. openWakeWord, tcp://HOST:10400) for satellites without "
        "one of their own; unset: such satellites are refused",
    )
    wake_words: list[str] = Field(
        default_factory=list, description="Wake word names asked of the wake-word service; empty: its default"
    )
    connect_timeout: float = Field(default=5.0, gt=0, le=120, description="Seconds to connect and get info")
    retry_min_delay: float = Field(default=1.0, gt=0, le=60, description="First ceiling of the random wait")
    retry_max_delay: float = Field(default=30.0, gt=0, le=3600, description="Largest ceiling of the random wait")

    @field_validator("wake_uri")
    @classmethod
    def _check_wake_uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_wyoming_uri("wake_uri", value)

    @model_validator(mode="after")
    def _check_names(self) -> SatellitesSettings:
        unplaced = [device.name for device in self.devices if device.uri is None]
        if unplaced and not self.discover:
            raise ValueError(f"satellites without a uri ({', '.join(unplaced)}) need satellites.discover: true")
        names = [device.name for device in self.devices]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"satellite names must differ: {', '.join(repeated)} given more than once")
        return self


class VendorSettings(BaseModel):
    """Keys every vendor has under ``vendors.<name>``."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None, description="Endpoint override (a proxy, or the bundled emulator); default: the vendor's"
    )
    api_key: SecretStr | None = Field(default=None, description="API key (prefer api_key_file)")
    api_key_file: str | None = Field(default=None, description="File holding the API key")
    languages: list[str] = Field(description="Wyoming language codes routed to this vendor")
    connect_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds to open the connection")
    prewarm: bool = Field(
        default=False,
        description="Keep one connection open and ready so an utterance skips the handshakes (may count as usage)",
    )

    def key(self) -> str:
        """The API key as text ('' when none is configured; the vendor then rejects the stream)."""
        return self.api_key.get_secret_value() if self.api_key is not None else ""
