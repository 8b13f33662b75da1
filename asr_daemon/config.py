"""The whole configuration: every section with every vendor's, read from the YAML file, then the environment,
then the command line.

Environment variables use the ``ASR_DAEMON_`` prefix and ``__`` for nesting
(``ASR_DAEMON_VENDORS__AMIVOICE__API_KEY``). Secrets may also come from files: ``api_key_file``, or a systemd
credential named ``<vendor>_api_key`` (``mqtt_password`` for the broker) in ``$CREDENTIALS_DIRECTORY``. A bad
value stops start-up with the key, what was expected and the value (unless it may be a secret).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .credentials import CredentialFileError, resolve_secret
from .install_hints import LOCAL_INSTALL_HINT
from .redact import redact, register_secret
from .settings import (
    BudgetSettings,
    ConfigError,
    EndpointingSettings,
    EventsSettings,
    HealthSettings,
    LimitsSettings,
    LogSettings,
    MicSettings,
    MqttSettings,
    ResilienceSettings,
    SatelliteSettings,
    SatellitesSettings,
    VendorSettings,
    WyomingSettings,
)
from .vendors import registry

ENV_PREFIX = "ASR_DAEMON_"


def _vendors_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (registry.adapter_class(name).settings_model | None, None) for name in registry.available()
    }
    return create_model("VendorsSettings", __config__=ConfigDict(extra="forbid"), **fields)


# Sections that name a vendor (mic.vendor, a satellite's vendor) are checked here, where the installed vendors
# are known: the sections themselves (settings.py) import no vendor.
def _installed_vendor(value: str | None) -> str | None:
    if value is not None and value not in registry.available():
        raise ValueError(f"expected one of {', '.join(registry.available())}")
    return value


def _vendor_checked(section: type[BaseModel]) -> type[BaseModel]:
    """``section`` (same name, same keys) whose ``vendor`` must name an installed vendor."""
    check = field_validator("vendor")(staticmethod(_installed_vendor))
    return create_model(
        section.__name__, __base__=section, __doc__=section.__doc__, __validators__={"_check_vendor": check}
    )


if TYPE_CHECKING:
    VendorsSettings = BaseModel
    VendorCheckedMic = MicSettings
    VendorCheckedSatellites = SatellitesSettings
else:
    VendorsSettings = _vendors_model()
    VendorCheckedMic = _vendor_checked(MicSettings)
    VendorCheckedSatellites = create_model(
        SatellitesSettings.__name__,
        __base__=SatellitesSettings,
        __doc__=SatellitesSettings.__doc__,
        devices=(list[_vendor_checked(SatelliteSettings)], SatellitesSettings.model_fields["devices"]),
    )


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
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    vendors: VendorsSettings = Field(default_factory=VendorsSettings)
    mic: VendorCheckedMic = Field(default_factory=VendorCheckedMic)
    endpointing: EndpointingSettings = Field(default_factory=EndpointingSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    satellites: VendorCheckedSatellites = Field(default_factory=VendorCheckedSatellites)
    default_vendor: str | None = Field(
        default=None, description="Vendor for languages no vendor lists (and for requests without a language)"
    )
    fallback_vendor: str | None = Field(
        default=None,
        description="Engine that transcribes an utterance the routed vendor cannot (outage, deadline); off: an error",
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


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the excerpt of the file PyYAML quotes (that line may hold a key)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{exc.problem or exc.context or 'syntax error'}"
    return type(exc).__name__


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
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
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
    except SettingsError as exc:
        # An environment variable that is not valid JSON for a nested key; the message names it, not its value.
        raise ConfigError(f"invalid configuration: {exc}") from None
    _embed_local_engine(settings)
    _resolve_secrets(settings)
    _check_routes(settings)
    return settings


def local_engine_installed() -> bool:
    """Whether the offline engine (the ``local`` extra: pocketsphinx) is installed."""
    import importlib.util

    return "local" in registry.available() and importlib.util.find_spec("pocketsphinx") is not None


def _embed_local_engine(settings: Settings) -> None:
    """The offline engine stands in when nothing else is configured, and when it is named as the fallback."""
    vendors = settings.configured_vendors()
    wanted = not vendors or (settings.fallback_vendor == "local" and "local" not in vendors)
    if wanted and local_engine_installed():
        name = "local"
        setattr(settings.vendors, name, registry.adapter_class(name).settings_model.model_validate({}))


# Parts of a key name that mark its value as a secret (or a likely misspelling of one).
_SECRET_KEY_PARTS = ("key", "pass", "pwd", "token", "secret", "auth", "credential", "cookie", "signature")


_SECTION_ERRORS = ("model_type", "model_attributes_type", "dict_type")


def _looks_secret(key: str) -> bool:
    folded = key.lower().replace("-", "").replace("_", "")
    return any(part in folded for part in _SECRET_KEY_PARTS)


def _shown_value(value: Any) -> str | None:
    """``value`` as an error message may show it, or None when it must stay hidden.

    Only scalars are shown: a mapping or list may hold a secret under any name. Strings go through ``redact()``
    for the carriers it knows (``token=`` in URLs) and are cut short.
    """
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        shown = redact(repr(value))
        return shown if len(shown) <= 80 else shown[:77] + "..."
    return None


def format_validation_error(exc: ValidationError, config: Path | None) -> str:
    """One line per bad key: the key, the value where it is safe to show, and what was expected.

    This runs before any secret is registered for masking, so a value is shown only for a known key whose name
    does not look secret: an unknown key may be a misspelt secret (``apikey:``, ``passwd:``), and a scalar where
    a section belongs may be a key written one level too high (``vendors: {amivoice: KEY}``).
    """
    source = f" in {config}" if config else ""
    lines = [f"invalid configuration{source}:"]
    for error in exc.errors():
        parts = [str(part) for part in error["loc"]]
        key = ".".join(parts)
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (its value is not shown: it may be a secret)")
            continue
        if error["type"] == "missing":
            lines.append(f"  {key}: required but missing")
            continue
        # A scalar where a section belongs is a misplaced setting: it may be a key written one level too high.
        hidden = error["type"] in _SECTION_ERRORS or any(_looks_secret(part) for part in parts)
        shown = None if hidden else _shown_value(error.get("input"))
        if shown is None:
            what = "value not shown" if hidden else f"a {type(error.get('input')).__name__}"
            lines.append(f"  {key} ({what}): {error['msg']}")
        else:
            lines.append(f"  {key} = {shown}: {error['msg']}")
    return "\n".join(lines)


def _resolve_secrets(settings: Settings) -> None:
    for name, vendor in settings.configured_vendors().items():
        try:
            vendor.api_key = resolve_secret(vendor.api_key, vendor.api_key_file, f"{name}_api_key")
        except CredentialFileError as exc:
            raise ConfigError(f"vendors.{name}.api_key_file = {vendor.api_key_file!r}: {exc}") from None
        for secret in registry.adapter_class(name)(vendor).secrets():
            register_secret(secret)
    mqtt = settings.mqtt
    try:
        mqtt.password = resolve_secret(mqtt.password, mqtt.password_file, "mqtt_password")
    except CredentialFileError as exc:
        raise ConfigError(f"mqtt.password_file = {mqtt.password_file!r}: {exc}") from None
    if mqtt.password is not None:
        register_secret(mqtt.password.get_secret_value())


def _check_routes(settings: Settings) -> None:
    vendors = settings.configured_vendors()
    known = ", ".join(sorted(vendors)) or "none configured"
    for key in ("default_vendor", "fallback_vendor"):
        value = getattr(settings, key)
        if value is not None and value not in vendors:
            hint = f" (install the offline engine: {LOCAL_INSTALL_HINT})" if value == "local" else ""
            raise ConfigError(f"{key} = {value!r}: expected one of the configured vendors ({known}){hint}")
    mic = settings.mic
    if mic.enabled and mic.vendor is not None and mic.vendor not in vendors:
        known = ", ".join(sorted(vendors)) or "none configured"
        raise ConfigError(f"mic.vendor = {mic.vendor!r}: expected one of the configured vendors ({known})")
    for index, satellite in enumerate(settings.satellites.devices):
        if satellite.vendor is not None and satellite.vendor not in vendors:
            raise ConfigError(
                f"satellites.devices.{index}.vendor = {satellite.vendor!r}: expected one of the configured vendors "
                f"({known})"
            )
