"""Settings: YAML, environment, secret files, and errors that name the key, the value and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr_daemon.config import load_settings, local_engine_installed
from asr_daemon.redact import redact
from asr_daemon.settings import ConfigError
from asr_daemon.setup_check import Finding, find_problems

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


# ---------------------------------------------------------------------------------------------------------
# A bad config never shows a secret: this runs before any secret is registered for masking.

TYPO_CONFIG = """\
vendors:
  amivoice:
    apikey: typo-secret-0001
    api_key: [list-secret-0002]
  volcengine:
    app_kee: typo-secret-0003
  tiro: typo-secret-0010
mqtt:
  host: broker.lan
  passwd: typo-secret-0004
  password: {nested: nested-secret-0005}
  port: 77777
wyoming:
  max_sessions: lots
"""


def test_config_errors_never_show_a_secret_even_misspelt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, TYPO_CONFIG))
    message = str(caught.value)
    assert "secret-000" not in message
    # Every bad key is still named, and harmless values are still shown.
    for key in ("vendors.amivoice.apikey: unknown key", "vendors.volcengine.app_kee: unknown key",
                "mqtt.passwd: unknown key", "vendors.amivoice.api_key", "mqtt.password", "vendors.tiro"):
        assert key in message
    assert "mqtt.port = 77777" in message
    assert "wyoming.max_sessions = 'lots'" in message


def test_check_command_keeps_misspelt_secrets_off_the_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon", "check", "--config", str(write(tmp_path, TYPO_CONFIG))],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "secret-000" not in done.stdout + done.stderr
    assert "mqtt.passwd: unknown key" in done.stderr


def test_yaml_syntax_error_names_the_line_but_not_its_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, 'vendors:\n  amivoice:\n    api_key: "yaml-secret-0006\n  x: [\n'))
    assert "yaml-secret-0006" not in str(caught.value)
    assert "not valid YAML: line" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Setups that load but cannot work: `check` and `run` say so, naming the key and what to do.


def problems(tmp_path: Path, text: str) -> dict[str, Finding]:
    return {finding.key: finding for finding in find_problems(load_settings(write(tmp_path, text)))}


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_DAEMON_") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "asr_daemon", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_a_cloud_vendor_without_a_key_is_an_error_that_says_how_to_give_one(tmp_path: Path) -> None:
    found = problems(tmp_path, "vendors:\n  iapp:\n    api_key: ''\n  tiro: {}\n")
    for name in ("iapp", "tiro"):
        finding = found[f"vendors.{name}.api_key"]
        assert finding.level == "error"
        for way in ("api_key_file", f"ASR_DAEMON_VENDORS__{name.upper()}__API_KEY", f"credentials/{name}_api_key"):
            assert way in finding.message
    done = run_check(write(tmp_path, "vendors:\n  iapp: {}\n"))
    assert done.returncode == 2
    assert "configuration is valid" not in done.stderr
    assert "error: vendors.iapp.api_key: no API key" in done.stderr


def test_a_key_from_a_file_or_a_tiro_token_in_the_url_is_a_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k" * 8)
    text = f"vendors:\n  iapp:\n    api_key_file: {key_file}\n  tiro:\n    url: wss://x/y?token=t0ken\n"
    assert not any(finding.level == "error" for finding in problems(tmp_path, text).values())


def test_no_config_at_all_warns_what_will_answer(tmp_path: Path) -> None:
    finding = problems(tmp_path, "")["vendors"]
    assert finding.level == "warning"
    if local_engine_installed():
        assert "serves English (en) only" in finding.message
    else:
        assert "nothing is routed" in finding.message and "scripts/install --with-local" in finding.message
    done = run_check(write(tmp_path, ""))
    assert done.returncode == 0
    assert "warning: vendors:" in done.stderr and "configuration is valid (1 warning(s))" in done.stderr


def test_microphone_without_pyaudio_is_an_error_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # import pyaudio fails as when it is not installed
    finding = problems(tmp_path, "mic:\n  enabled: true\n")["mic.enabled"]
    assert finding.level == "error"
    assert "PyAudio" in finding.message
    assert "sudo scripts/install --with-mic" in finding.message and "pip install -e '.[mic]'" in finding.message


CLEARTEXT = """\
vendors:
  zyun360:
    api_key: zyun-key-1234
  yating:
    api_key: yating-key-1234
    token_url: http://tokens.example.com/token
  iapp:
    api_key: iapp-key-1234
    url: ws://127.0.0.1:9/asr
  amivoice:
    api_key: ami-key-1234
mqtt:
  host: broker.lan
  password: mqtt-pass-1234
"""


def test_secrets_sent_in_the_clear_are_warned_about_by_key(tmp_path: Path) -> None:
    found = problems(tmp_path, CLEARTEXT)
    warned = {key for key, finding in found.items() if finding.level == "warning"}
    # zyun360's documented endpoint is ws://; loopback (the emulators) and wss:// are fine.
    assert warned == {"vendors.zyun360.url", "vendors.yating.token_url", "mqtt.password"}
    assert "(the default)" in found["vendors.zyun360.url"].message
    assert "mqtt.tls" in found["mqtt.password"].message
    done = run_check(write(tmp_path, CLEARTEXT))
    assert done.returncode == 0, done.stderr
    assert "warning: vendors.zyun360.url" in done.stderr
    assert "-1234" not in done.stdout + done.stderr


def test_tls_or_a_local_broker_needs_no_warning(tmp_path: Path) -> None:
    for mqtt in ("  host: broker.lan\n  tls: true\n", "  host: 127.0.0.1\n", "  host: localhost\n"):
        found = problems(tmp_path, f"mqtt:\n{mqtt}  password: mqtt-pass-1234\n")
        assert "mqtt.password" not in found


def test_environment_typos_and_bad_json_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_DAEMON_VENDORS__AMIVOICE__APIKEY", "env-secret-0007")
    monkeypatch.setenv("ASR_DAEMON_MQTT__PASSWD", "env-secret-0008")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "env-secret" not in str(caught.value)
    assert "vendors.amivoice.apikey: unknown key" in str(caught.value)
    monkeypatch.delenv("ASR_DAEMON_VENDORS__AMIVOICE__APIKEY")
    monkeypatch.delenv("ASR_DAEMON_MQTT__PASSWD")
    monkeypatch.setenv("ASR_DAEMON_VENDORS", '{"amivoice": {"api_key": "env-secret-0009"')  # cut short
    with pytest.raises(ConfigError, match='field "vendors"') as caught:
        load_settings()
    assert "env-secret" not in str(caught.value)


def test_no_config_without_the_offline_engine_warns_that_nothing_is_routed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("asr_daemon.config.local_engine_installed", lambda: False)
    finding = problems(tmp_path, "")["vendors"]
    assert finding.level == "warning"
    assert "nothing is routed" in finding.message and "sudo scripts/install --with-local" in finding.message
