"""One validated settings model: YAML file, then environment, then command line.

Environment variables use the ``ASR_DAEMON_`` prefix and ``__`` for nesting
(``ASR_DAEMON_VENDORS__AMIVOICE__API_KEY``). Secrets may also come from files: ``api_key_file``, or a systemd
credential named ``<vendor>_api_key`` in ``$CREDENTIALS_DIRECTORY``. A bad value stops start-up with the key,
the value and what was expected.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .redact import redact, register_secret
from .vendors import registry
from .vendors.base import VendorSettings

ENV_PREFIX = "ASR_DAEMON_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names each bad key."""


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

    def instance_name(self) -> str:
        return self.zeroconf_name or f"asr-daemon-{socket.gethostname().split('.')[0]}"


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_utterance_seconds: float = Field(default=60.0, gt=0, le=3600, description="Longest utterance accepted")
    final_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds from audio-stop to the final transcript or an error"
    )
    drain_timeout: float = Field(
        default=15.0, ge=0, le=600, description="Seconds in-flight utterances may take to finish at shutdown"
    )


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    format: Literal["human", "json"] = Field(default="human", description="human, or json for log shippers")


def _vendors_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (registry.adapter_class(name).settings_model | None, None) for name in registry.available()
    }
    return create_model("VendorsSettings", __config__=ConfigDict(extra="forbid"), **fields)


if TYPE_CHECKING:
    VendorsSettings = BaseModel
else:
    VendorsSettings = _vendors_model()


class Settings(BaseSettings):
    """Everything the daemon is configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    wyoming: WyomingSettings = Field(default_factory=WyomingSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    vendors: VendorsSettings = Field(default_factory=VendorsSettings)
    default_vendor: str | None = Field(
        default=None, description="Vendor for languages no vendor lists (and for requests without a language)"
    )

    def configured_vendors(self) -> dict[str, VendorSettings]:
        """Vendor name → its settings, for every vendor present in the config."""
        return {
            name: value
            for name in type(self.vendors).model_fields
            if isinstance(value := getattr(self.vendors, name), VendorSettings)
        }

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret masked (for ``check``)."""
        dumped: dict[str, Any] = self.model_dump(mode="json")
        dumped["vendors"] = {name: value for name, value in dumped["vendors"].items() if value is not None}
        masked: dict[str, Any] = _mask_secrets(dumped)
        return masked


def _mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if _is_secret_key(k) and v else _mask_secrets(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_secrets(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _is_secret_key(key: str) -> bool:
    return key in {"api_key", "password", "access_key", "app_key", "secret", "token"} or key.endswith("_key")


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML config file, with errors that name the file and line."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of keys at the top, got {type(loaded).__name__}")
        self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read, validate and resolve the configuration; raises ``ConfigError`` with a readable message."""
    if config is None and (env_config := os.environ.get(f"{ENV_PREFIX}CONFIG")):
        config = Path(env_config)

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, config))

    try:
        settings: Settings = _Loaded(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, config)) from None
    _resolve_secrets(settings)
    _check_routes(settings)
    return settings


def format_validation_error(exc: ValidationError, config: Path | None) -> str:
    source = f" in {config}" if config else ""
    lines = [f"invalid configuration{source}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        shown = redact(repr(error.get("input")))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {shown})")
        elif error["type"] == "missing":
            lines.append(f"  {key}: required but missing")
        else:
            lines.append(f"  {key} = {shown}: {error['msg']}")
    return "\n".join(lines)


def _resolve_secrets(settings: Settings) -> None:
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    for name, vendor in settings.configured_vendors().items():
        if vendor.api_key is None:
            if vendor.api_key_file:
                path = Path(vendor.api_key_file)
                try:
                    vendor.api_key = SecretStr(path.read_text(encoding="utf-8").strip())
                except OSError as exc:
                    raise ConfigError(
                        f"vendors.{name}.api_key_file = {str(path)!r}: cannot read it ({exc.strerror or exc})"
                    ) from None
            elif credentials and (Path(credentials) / f"{name}_api_key").is_file():
                vendor.api_key = SecretStr((Path(credentials) / f"{name}_api_key").read_text("utf-8").strip())
        for secret in registry.adapter_class(name)(vendor).secrets():
            register_secret(secret)


def _check_routes(settings: Settings) -> None:
    vendors = settings.configured_vendors()
    if settings.default_vendor is not None and settings.default_vendor not in vendors:
        known = ", ".join(sorted(vendors)) or "none configured"
        raise ConfigError(
            f"default_vendor = {settings.default_vendor!r}: expected one of the configured vendors ({known})"
        )
