"""The Home Assistant add-on's start program (``asr_daemon.service.addon``), and the stop timeouts that must fit
the container engines' and the Supervisor's 10 s.

The whole program runs here against a fake Supervisor: from an ``options.json`` it writes a configuration the
daemon accepts, starts the daemon, and announces it exactly once, with the token, once it answers describe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from asr_daemon.config import load_settings
from asr_daemon.service import addon
from asr_daemon.settings import EventsSettings, LimitsSettings
from asr_daemon.vendors import registry
from tests.support import supervisor as fake_supervisor
from tests.support.supervisor import FakeSupervisor
from tests.support.wyoming import describe
from tests.test_systemd_install import free_port

ROOT = Path(__file__).resolve().parent.parent
ENGINE_STOP_TIMEOUT = 10.0


@pytest.fixture
def supervisor() -> Iterator[FakeSupervisor]:
    with fake_supervisor.running() as server:
        yield server


def test_stop_timeouts_fit_the_engines_stop_timeout() -> None:
    # Drain, then flush: what SIGTERM may take before the engine's SIGKILL (1 s left for closing the rest).
    worst = LimitsSettings().drain_timeout + EventsSettings().flush_timeout
    assert worst <= ENGINE_STOP_TIMEOUT - 1
    unit = (ROOT / "systemd/asr-daemon.service").read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert stop and int(stop.group(1)) > worst
    config = yaml.safe_load((ROOT / "addon/config.yaml").read_text())
    assert config["timeout"] >= worst + 1


def test_addon_schema_offers_every_vendor_and_the_defaults_fit_it(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "addon/config.yaml").read_text())
    names = re.fullmatch(r"list\((.*)\)", config["schema"]["vendors"][0]["name"])
    assert names and set(names.group(1).split("|")) == set(registry.VENDORS)
    assert {"aarch64", "amd64"} <= set(config["arch"]) and config["discovery"] == ["wyoming"]
    assert "10300/tcp" in config["ports"]
    # The options a fresh install starts with make a configuration the daemon accepts.
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(addon.daemon_config(config["options"], data=tmp_path)))
    assert set(load_settings(written).configured_vendors()) == {"local"}


def test_options_become_a_configuration_the_daemon_accepts(tmp_path: Path) -> None:
    options = {
        "vendors": [
            {"name": "amivoice", "api_key": "amivoice-key-123456", "languages": "ja, ja-JP"},
            {"name": "volcengine", "api_key": "volc-access-123456", "app_key": "volc-app-123456"},
            {"name": "local", "languages": "en"},
        ],
        "default_vendor": "amivoice",
        "log_level": "debug",
        "max_sessions": 4,
        "mqtt": {"host": "core-mosquitto", "port": 1883, "username": "addons", "password": "mqtt-secret-123456"},
        "endpointing": {},
    }
    config = addon.daemon_config(options, data=tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    vendors = settings.configured_vendors()
    assert set(vendors) == {"amivoice", "volcengine", "local"}
    assert vendors["amivoice"].languages == ["ja", "ja-JP"]
    assert vendors["amivoice"].api_key is not None
    assert vendors["amivoice"].api_key.get_secret_value() == "amivoice-key-123456"
    assert settings.default_vendor == "amivoice"
    assert settings.wyoming.uri == "tcp://0.0.0.0:10300" and settings.wyoming.max_sessions == 4
    assert not settings.wyoming.zeroconf  # the Supervisor's discovery announces it
    assert settings.mqtt.host == "core-mosquitto" and settings.mqtt.spool_dir == str(tmp_path / "mqtt-spool")
    assert settings.log.level == "debug"


def test_a_vendor_without_a_name_is_refused() -> None:
    with pytest.raises(addon.AddonError, match=r"vendors\[0\]"):
        addon.daemon_config({"vendors": [{"languages": "en"}]})
    with pytest.raises(addon.AddonError, match="twice"):
        addon.daemon_config({"vendors": [{"name": "local"}, {"name": "local"}]})


def test_announce_sends_the_token_and_the_uri(supervisor: FakeSupervisor) -> None:
    api = f"http://127.0.0.1:{supervisor.server_port}"
    addon.announce(api, supervisor.token, addon.discovery_payload("a0d7b954-asr-daemon"))
    assert supervisor.discoveries == [{"service": "wyoming", "config": {"uri": "tcp://a0d7b954-asr-daemon:10300"}}]
    with pytest.raises(addon.AddonError, match="HTTP 401") as refused:
        addon.announce(api, "wrong-token-value", addon.discovery_payload("x"))
    assert "wrong-token-value" not in str(refused.value)


def test_start_program_runs_the_daemon_and_announces_it_once(supervisor: FakeSupervisor, tmp_path: Path) -> None:
    port = free_port()
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"vendors": [{"name": "local", "languages": "en"}], "log_level": "info"}))
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SUPERVISOR_API": f"http://127.0.0.1:{supervisor.server_port}",
        "SUPERVISOR_TOKEN": supervisor.token,
        "ASR_DAEMON_ADDON_PORT": str(port),
        # Off the LAN in the test (the environment overrides the written configuration).
        "ASR_DAEMON_WYOMING__URI": f"tcp://127.0.0.1:{port}",
    }
    program = subprocess.Popen(
        [sys.executable, "-m", "asr_daemon.service.addon", "--options", str(options)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not supervisor.discoveries and time.monotonic() < deadline and program.poll() is None:
            time.sleep(0.1)
        info = asyncio.run(describe(port))
        assert info.asr, info
        time.sleep(1.0)  # a second announcement would have arrived by now
        hostname = os.uname().nodename
        assert supervisor.discoveries == [{"service": "wyoming", "config": {"uri": f"tcp://{hostname}:{port}"}}]
        assert supervisor.bad_requests == []
    finally:
        program.send_signal(signal.SIGTERM)
        output, _ = program.communicate(timeout=30)
    assert program.returncode == 0, output
    assert supervisor.token not in output


def test_start_program_stops_on_bad_options(tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"vendors": [{"name": "amivoice", "api_key": "secret-key-987654321"}, {}]}))
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon.service.addon", "--options", str(options)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "vendors[1]" in done.stderr and "secret-key-987654321" not in done.stderr


def test_a_daemon_that_refuses_its_configuration_is_not_announced(supervisor: FakeSupervisor, tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"vendors": [{"name": "no-such-vendor", "languages": "en"}]}))
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SUPERVISOR_API": f"http://127.0.0.1:{supervisor.server_port}",
        "SUPERVISOR_TOKEN": supervisor.token,
        "ASR_DAEMON_ADDON_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "asr_daemon.service.addon", "--options", str(options)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr  # the daemon's configuration error, passed on
    assert "no-such-vendor" in done.stderr
    assert supervisor.discoveries == []


@pytest.mark.parametrize(("kind", "where"), [("container", "/run/secrets"), ("addon", "Configuration tab")])
def test_install_advice_fits_where_the_daemon_runs(kind: str, where: str, tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "ASR_DAEMON_INSTALL": kind}
    hints = subprocess.run(
        [
            sys.executable,
            "-c",
            "from asr_daemon import install_hints as h; print(h.LOCAL_INSTALL_HINT, h.MIC_INSTALL_HINT)",
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "scripts/install --with-local" not in hints and "pip install" not in hints, hints
    # A vendor without a key: check says where the key goes here, not in a Raspberry Pi install's paths.
    config = tmp_path / "config.yaml"
    config.write_text("vendors:\n  amivoice:\n    languages: [ja]\n")
    environment.pop("ASR_DAEMON_VENDORS__AMIVOICE__API_KEY", None)
    environment.pop("CREDENTIALS_DIRECTORY", None)
    check = subprocess.run(
        [sys.executable, "-m", "asr_daemon", "check", "--config", str(config)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = check.stdout + check.stderr
    assert "no API key" in shown and where in shown, shown
    assert "/etc/asr-daemon/credentials" not in shown and "scripts/install" not in shown, shown
