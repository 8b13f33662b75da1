"""Prometheus metrics: one registry per daemon (tests run several daemons in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..session import Session, SessionError, Transcript

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge("asr_sessions_active", "Client connections open now", registry=r)
        self.utterances = Counter(
            "asr_utterances_total",
            "Utterances by vendor and outcome (transcript, empty, or an error code)",
            ["vendor", "outcome"],
            registry=r,
        )
        self.connect_seconds = Histogram(
            "asr_vendor_connect_seconds",
            "Time to open a vendor stream",
            ["vendor"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.final_seconds = Histogram(
            "asr_time_to_final_seconds",
            "From audio-stop to the final transcript",
            ["vendor"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(
            "asr_vendor_reconnects_total", "Vendor connections replaced mid-utterance", ["vendor"], registry=r
        )
        self.replayed_bytes = Counter(
            "asr_replayed_bytes_total", "Audio bytes sent again after a reconnection", ["vendor"], registry=r
        )
        self.audio_in_bytes = Counter("asr_audio_in_bytes_total", "Audio bytes received from clients", registry=r)
        self.audio_out_bytes = Counter(
            "asr_audio_out_bytes_total", "Audio bytes accepted for vendors (normalised)", ["vendor"], registry=r
        )
        self.spool_depth = Gauge(
            "asr_spool_depth", "Events waiting in the on-disk spool for the MQTT broker", registry=r
        )

    def watch_connections(
        self,
        active: Callable[[], int],
        total: Callable[[], int],
        refused: Callable[[], int],
        denied: Callable[[], int] = lambda: 0,
    ) -> None:
        """Connection figures are read from the listener when scraped."""
        self.sessions_active.set_function(active)
        self.registry.register(_ConnectionCounters(total, refused, denied))

    def observe(self, session: Session, result: Transcript | None, error: SessionError | None) -> str:
        """Record one finished utterance; returns its outcome label."""
        vendor = session.adapter.name
        if session.connect_seconds is not None:
            self.connect_seconds.labels(vendor).observe(session.connect_seconds)
        if session.reconnects:
            self.reconnects.labels(vendor).inc(session.reconnects)
        if session.replayed_bytes:
            self.replayed_bytes.labels(vendor).inc(session.replayed_bytes)
        self.audio_out_bytes.labels(vendor).inc(session.accepted_bytes)
        if result is not None:
            outcome = "transcript" if result.text else "empty"
            self.final_seconds.labels(vendor).observe(result.final_latency)
        else:
            outcome = error.code if error is not None else "unknown"
        self.utterances.labels(vendor, outcome).inc()
        return outcome

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ConnectionCounters(Collector):
    def __init__(self, total: Callable[[], int], refused: Callable[[], int], denied: Callable[[], int]) -> None:
        self._total = total
        self._refused = refused
        self._denied = denied

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("asr_sessions", "Client connections accepted", value=self._total())
        yield CounterMetricFamily("asr_sessions_refused", "Connections refused (max_sessions)", value=self._refused())
        yield CounterMetricFamily(
            "asr_connections_denied", "Connections closed at accept: peer outside wyoming.allow", value=self._denied()
        )
