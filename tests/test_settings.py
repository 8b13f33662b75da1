"""Settings: YAML, environment, secret files, and errors that name the key, the value and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asr_daemon.redact import redact
from asr_daemon.settings import ConfigError, load_settings, local_engine_installed

SECRET = "amivoice-secret-4711"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_DAEMON_CONFIG", raising=False)
    settings = load_settings()
    assert settings.wyoming.uri == "tcp://0.0.0.0:10300"
    assert settings.wyoming.zeroconf is False
    # With no vendor configured, the offline engine serves English (when it is installed).
    expected = {"local"} if local_engine_installed() else set()
    assert set(settings.configured_vendors()) == expected


def test_a_configured_cloud_vendor_replaces_the_embedded_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_DAEMON_VENDORS__TIRO__API_KEY", "x" * 8)
    assert set(load_settings().configured_vendors()) == {"tiro"}


def test_fallback_vendor_must_be_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fallback_vendor = 'iapp': expected one of the configured vendors"):
        load_settings(write(tmp_path, "fallback_vendor: iapp\nvendors:\n  tiro: {}\n"))


def test_yaml_then_environment_then_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path,
        f"""
wyoming:
  uri: tcp://127.0.0.1:10301
  max_sessions: 4
vendors:
  amivoice:
    api_key: {SECRET}
    engine: -a-medgeneral
""",
    )
    monkeypatch.setenv("ASR_DAEMON_WYOMING__MAX_SESSIONS", "8")
    monkeypatch.setenv("ASR_DAEMON_VENDORS__AMIVOICE__LOGGING", "true")
    settings = load_settings(config, {"wyoming": {"uri": "tcp://127.0.0.1:10399"}})
    assert settings.wyoming.uri == "tcp://127.0.0.1:10399"  # command line wins
    assert settings.wyoming.max_sessions == 8  # environment beats the file
    vendor = settings.configured_vendors()["amivoice"]
    assert vendor.key() == SECRET
    assert vendor.engine == "-a-medgeneral"
    assert vendor.logging is True


def test_api_key_from_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_DAEMON_VENDORS__AMIVOICE__API_KEY", SECRET)
    settings = load_settings()
    assert settings.configured_vendors()["amivoice"].key() == SECRET


def test_api_key_file_and_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    settings = load_settings(write(tmp_path, f"vendors:\n  amivoice:\n    api_key_file: {key_file}\n"))
    assert settings.configured_vendors()["amivoice"].key() == SECRET

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "amivoice_api_key").write_text("from-credentials-dir")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(write(tmp_path, "vendors:\n  amivoice: {}\n"))
    assert settings.configured_vendors()["amivoice"].key() == "from-credentials-dir"


def test_unreadable_key_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vendors\.amivoice\.api_key_file = '/nonexistent/key'"):
        load_settings(write(tmp_path, "vendors:\n  amivoice:\n    api_key_file: /nonexistent/key\n"))


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("wyoming:\n  uri: http://x:1\n", r"wyoming\.uri = 'http://x:1': .*expected tcp://HOST:PORT"),
        ("wyoming:\n  max_sessions: many\n", r"wyoming\.max_sessions = 'many': .*integer"),
        ("limits:\n  final_timeout: -1\n", r"limits\.final_timeout = -1: .*greater than 0"),
        ("vendors:\n  amivoice:\n    engine: 'a b'\n", r"vendors\.amivoice\.engine = 'a b': .*engine name"),
        ("vendors:\n  nuance: {}\n", r"vendors\.nuance: unknown key"),
        ("wyoming:\n  port: 1\n", r"wyoming\.port: unknown key"),
        ("default_vendor: tiro\n", r"default_vendor = 'tiro': expected one of the configured vendors"),
        ("- a\n- b\n", r"expected a mapping"),
        ("wyoming: [\n", r"not valid YAML"),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, yaml_text))


def test_missing_config_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_are_redacted_everywhere(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f"vendors:\n  amivoice:\n    api_key: {SECRET}\n"))
    assert SECRET not in str(settings.redacted())
    assert settings.redacted()["vendors"]["amivoice"]["api_key"] == "***"
    # Once loaded, the key is masked in any text, and so are secrets we never saw in URLs and commands.
    assert redact(f"s LSB16K -a-general authorization={SECRET}") == "s LSB16K -a-general authorization=***"
    assert redact("wss://x/y?token=abc.def&z=1") == "wss://x/y?token=***&z=1"
    assert redact("Authorization: Bearer sk-12345") == "Authorization: Bearer ***"
    assert redact(f"prefix {SECRET} suffix") == "prefix *** suffix"


def test_check_command_prints_config_without_secrets(tmp_path: Path) -> None:
    config = write(tmp_path, f"vendors:\n  amivoice:\n    api_key: {SECRET}\n")
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "amivoice" in done.stdout and "ja-JP → amivoice" in done.stdout


def test_check_command_exits_non_zero_on_bad_config(tmp_path: Path) -> None:
    config = write(tmp_path, "wyoming:\n  max_sessions: 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "wyoming.max_sessions = 0" in done.stderr
