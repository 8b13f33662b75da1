"""Setups that load but cannot work as meant: what ``check`` reports and ``run`` logs at start.

An error means the daemon would run without doing what the config asks (a vendor without a key refuses every
stream; an enabled microphone without PyAudio is retried forever), so ``check`` exits non-zero and ``run``
refuses to start. A warning is a setup that works but is probably not what was meant (nothing routed, a secret
sent unencrypted).

Loopback hosts are exempt from the unencrypted-secret warning: traffic to 127.0.0.0/8 or ::1 never leaves the
machine (the bundled emulators listen on ws://127.0.0.1).
"""

from __future__ import annotations

import importlib.util
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from .install_hints import LOCAL_INSTALL_HINT, MIC_INSTALL_HINT, key_file_hint
from .redact import redact

if TYPE_CHECKING:
    from .config import Settings
    from .vendors.base import VendorAdapter


# Modules the microphone imports beyond the base install (its speech detector, webrtcvad, is in it).
_MIC_MODULES = {"pyaudio": "PyAudio"}


@dataclass(frozen=True, slots=True)
class Finding:
    level: Literal["error", "warning"]
    # The setting concerned, as written in the config (``vendors.amivoice.api_key``).
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def find_problems(settings: Settings) -> list[Finding]:
    """Every problem of a loaded configuration, errors first."""
    from .vendors import registry

    adapters = {name: registry.adapter_class(name)(vendor) for name, vendor in settings.configured_vendors().items()}
    findings = [
        *_missing_keys(adapters),
        *_microphone(settings),
        *_routes(settings),
        *_cleartext_secrets(adapters, settings),
    ]
    return sorted(findings, key=lambda finding: finding.level != "error")


def _missing_keys(adapters: dict[str, VendorAdapter]) -> list[Finding]:
    found = []
    for name, adapter in adapters.items():
        if adapter.has_credentials():
            continue
        message = (
            f"no API key: {name} will refuse every request. Give it one of three ways: api_key_file (a file "
            f"holding the key), the environment variable ASR_DAEMON_VENDORS__{name.upper()}__API_KEY, or, "
            f"{key_file_hint(name)}; or remove vendors.{name}"
        )
        found.append(Finding("error", f"vendors.{name}.api_key", message))
    return found


def _microphone(settings: Settings) -> list[Finding]:
    mic = settings.mic
    if not mic.enabled:
        return []
    missing = [name for module, name in _MIC_MODULES.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return []
    message = (
        f"{' and '.join(missing)} not installed, so the microphone cannot open. Install the microphone extra: "
        f"{MIC_INSTALL_HINT}; or set mic.enabled: false"
    )
    return [Finding("error", "mic.enabled", message)]


def _routes(settings: Settings) -> list[Finding]:
    vendors = settings.configured_vendors()
    if not vendors:
        message = (
            "no vendor is configured and the offline engine is not installed: nothing is routed, every request "
            "gets an error. Configure a vendor (see config.example.yaml) or install the offline engine: "
            f"{LOCAL_INSTALL_HINT}"
        )
        return [Finding("warning", "vendors", message)]
    if list(vendors) == ["local"]:
        message = (
            "only the offline engine is configured: it serves English (en) only, any other language gets an "
            "error. Configure a cloud vendor for other languages (see config.example.yaml)"
        )
        return [Finding("warning", "vendors", message)]
    return []


def _cleartext_secrets(adapters: dict[str, VendorAdapter], settings: Settings) -> list[Finding]:
    found = []
    for name, adapter in adapters.items():
        for setting, url in adapter.secret_carrying_urls().items():
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "http") or _is_loopback(parts.hostname):
                continue
            secure = "wss" if parts.scheme == "ws" else "https"
            default = "" if setting in adapter.settings.model_fields_set else " (the default)"
            message = (
                f"{redact(url)}{default} is unencrypted: the {name} credentials cross the network in the clear. "
                f"Use a {secure}:// URL if the service offers one"
            )
            found.append(Finding("warning", f"vendors.{name}.{setting}", message))
    mqtt = settings.mqtt
    if mqtt.host and mqtt.password is not None and not mqtt.tls and not _is_loopback(mqtt.host):
        message = (
            f"sent to {mqtt.host}:{mqtt.port} without TLS, in the clear. Set mqtt.tls: true (brokers usually "
            "take TLS on port 8883)"
        )
        found.append(Finding("warning", "mqtt.password", message))
    return found


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
