"""config.example.yaml is valid as shipped, valid with every block enabled, and documents every key.

Convention in the file: a line starting with ``#`` in column 0 followed by YAML (``#  key: value``) is a
setting to enable by deleting the ``#``; other comments explain.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from asr_daemon.config import Settings, load_settings
from asr_daemon.vendors import registry

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
_SETTING_LINE = re.compile(r"^#(\s*([A-Za-z_][A-Za-z0-9_]*:(\s|$)|- ))")


def enabled_everything(text: str) -> str:
    return "\n".join(line[1:] if _SETTING_LINE.match(line) else line for line in text.splitlines())


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        for candidate in (*getattr(field.annotation, "__args__", ()), field.annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and name != "vendors":
                keys |= model_keys(candidate, f"{prefix}{name}.")
    return keys


def yaml_keys(value: Any, prefix: str = "", free: frozenset[str] = frozenset()) -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, child in value.items():
            keys.add(prefix + str(key))
            if prefix + str(key) not in free:
                keys |= yaml_keys(child, f"{prefix}{key}.", free)
    elif isinstance(value, list):
        # A list of sections (satellites.devices): each item's keys are the list's.
        for item in value:
            keys |= yaml_keys(item, prefix, free)
    return keys


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ASR_DAEMON_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def test_example_loads_as_shipped() -> None:
    load_settings(EXAMPLE)


def test_example_with_every_block_enabled_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "all.yaml"
    config.write_text(enabled_everything(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    settings = load_settings(config)
    assert set(settings.configured_vendors()) == set(registry.available())


def test_example_documents_every_key() -> None:
    # Keys whose values are free-form (a language → pipeline mapping, a vendor's word list) are not walked into.
    free = frozenset({"vendors.yating.pipelines", "vendors.amivoice.profile_words"})
    documented = yaml_keys(yaml.safe_load(enabled_everything(EXAMPLE.read_text(encoding="utf-8"))), free=free)
    expected = model_keys(Settings)
    for name in registry.available():
        expected |= {f"vendors.{name}"} | model_keys(registry.adapter_class(name).settings_model, f"vendors.{name}.")
    missing = sorted(expected - documented)
    assert not missing, f"config.example.yaml does not document: {missing}"
    unknown = sorted(k for k in documented - expected if not any(k.startswith(f + ".") for f in free))
    assert not unknown, f"config.example.yaml documents keys that do not exist: {unknown}"
