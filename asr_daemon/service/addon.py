"""The Home Assistant add-on's start program: the add-on's options become the daemon's configuration, the
daemon runs as a child process, and once it answers ``describe`` the add-on announces it to Home Assistant
through the Supervisor's discovery API (service ``wyoming``), as the Wyoming add-ons do.

    python -m asr_daemon.service.addon [--options /data/options.json]

SIGTERM and SIGINT are passed on to the daemon, which finishes the utterances in flight; the program exits
with the daemon's status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pwd
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from ..redact import register_secret
from ..resilience.backoff import Backoff
from .probe import describe

_LOGGER = logging.getLogger("asr_daemon.addon")

OPTIONS = Path("/data/options.json")
DATA = Path("/data")
# The add-on's port inside its container (the Supervisor maps the host's to it); a test may move it.
PORT = int(os.environ.get("ASR_DAEMON_ADDON_PORT", "10300"))
DAEMON_USER = "asr-daemon"
# How long the daemon may take to answer describe after it starts (the offline engine loads in ~1-2 s).
READY_TIMEOUT = 60.0
DISCOVERY_ATTEMPTS = 5
HTTP_TIMEOUT = 10.0
EXIT_CONFIG = 2


class AddonError(Exception):
    """The options cannot be turned into a configuration, or the Supervisor refused the announcement."""


def _languages(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value if str(item).strip()]
    return [part for part in str(value).replace(",", " ").split() if part]


def daemon_config(options: dict[str, Any], data: Path = DATA) -> dict[str, Any]:
    """The daemon's YAML configuration (as a mapping) for the add-on's options; keys are copied as given."""
    vendors: dict[str, dict[str, Any]] = {}
    for index, vendor in enumerate(options.get("vendors") or []):
        if not isinstance(vendor, dict) or not vendor.get("name"):
            raise AddonError(f"vendors[{index}]: every vendor needs a name")
        name = str(vendor["name"])
        if name in vendors:
            raise AddonError(f"vendors[{index}]: {name} is listed twice")
        entry: dict[str, Any] = {}
        if languages := _languages(vendor.get("languages") or ""):
            entry["languages"] = languages
        for key in ("api_key", "app_key", "url"):
            if value := vendor.get(key):
                entry[key] = str(value)
        vendors[name] = entry
    config: dict[str, Any] = {
        # The Supervisor's network is private; the host port is mapped to this one.
        "wyoming": {"uri": f"tcp://0.0.0.0:{PORT}", "zeroconf": False},
        "log": {"level": options.get("log_level") or "info"},
        "vendors": vendors,
    }
    if max_sessions := options.get("max_sessions"):
        config["wyoming"]["max_sessions"] = int(max_sessions)
    for key in ("default_vendor", "fallback_vendor"):
        if value := options.get(key):
            config[key] = str(value)
    mqtt = options.get("mqtt") or {}
    if mqtt.get("host"):
        config["mqtt"] = {
            key: mqtt[key] for key in ("host", "port", "username", "password", "tls") if mqtt.get(key) is not None
        }
        config["mqtt"]["spool_dir"] = str(data / "mqtt-spool")
    # Only the settings the user set: the daemon's own defaults stay the defaults.
    endpointing = {key: value for key, value in (options.get("endpointing") or {}).items() if value is not None}
    if endpointing:
        config["endpointing"] = endpointing
    return config


def discovery_payload(hostname: str, port: int = PORT) -> dict[str, Any]:
    return {"service": "wyoming", "config": {"uri": f"tcp://{hostname}:{port}"}}


def announce(api: str, token: str, payload: dict[str, Any]) -> None:
    """POST the discovery message to the Supervisor; raises AddonError with the reason (never the token)."""
    request = urllib.request.Request(
        f"{api.rstrip('/')}/discovery",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AddonError(f"the Supervisor refused the discovery message: HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise AddonError(f"cannot reach the Supervisor at {api}: {exc}") from None
    if answer.get("result", "ok") != "ok":
        raise AddonError(f"the Supervisor refused the discovery message: {answer.get('message', answer)}")


async def announce_with_retries(api: str, token: str, payload: dict[str, Any]) -> bool:
    backoff = Backoff(initial=1.0, cap=10.0)
    for attempt in range(1, DISCOVERY_ATTEMPTS + 1):
        try:
            await asyncio.to_thread(announce, api, token, payload)
        except AddonError as exc:
            _LOGGER.warning("discovery attempt %d of %d failed: %s", attempt, DISCOVERY_ATTEMPTS, exc)
            if attempt < DISCOVERY_ATTEMPTS:
                await asyncio.sleep(backoff.next_delay())
            continue
        _LOGGER.info("announced to Home Assistant: %s", payload["config"]["uri"])
        return True
    return False


def write_config(config: dict[str, Any], owner: pwd.struct_passwd | None) -> Path:
    """The configuration in a new private directory (it holds the keys), readable by the daemon's user only."""
    directory = Path(tempfile.mkdtemp(prefix="asr-daemon-"))
    path = directory / "config.yaml"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        yaml.safe_dump(config, file, allow_unicode=True, sort_keys=False)
    if owner is not None:
        for owned in (directory, path):
            os.chown(owned, owner.pw_uid, owner.pw_gid)
    return path


def _daemon_user() -> pwd.struct_passwd | None:
    """The unprivileged user the daemon runs as when this program starts as root (the add-on's case)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(DAEMON_USER)
    except KeyError:
        return None


def _prepare_state(config: dict[str, Any], owner: pwd.struct_passwd | None) -> None:
    spool = config.get("mqtt", {}).get("spool_dir")
    if spool:
        Path(spool).mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(spool, owner.pw_uid, owner.pw_gid)


async def wait_until_ready(daemon: asyncio.subprocess.Process, uri: str, timeout: float) -> bool:
    """True once the daemon answers describe; False when it exits first or does not answer in ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while daemon.returncode is None and loop.time() < deadline:
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            await describe(uri, 2.0)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(daemon.wait(), 0.2)
    return False


def load_options(options_path: Path) -> dict[str, Any]:
    """The add-on's options, with every key and password registered for redaction before anything logs."""
    options = json.loads(options_path.read_text(encoding="utf-8"))
    if not isinstance(options, dict):
        raise AddonError(f"{options_path}: expected a JSON object")
    for vendor in options.get("vendors") or []:
        for key in ("api_key", "app_key"):
            if isinstance(vendor, dict) and vendor.get(key):
                register_secret(str(vendor[key]))
    if (options.get("mqtt") or {}).get("password"):
        register_secret(str(options["mqtt"]["password"]))
    return options


async def supervise(
    command: list[str], owner: pwd.struct_passwd | None, uri: str, api: str, token: str | None, hostname: str
) -> int:
    """Run the daemon, announce it once it answers, pass signals on; the daemon's exit status."""
    drop: dict[str, Any] = {}
    if owner is not None:
        drop = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    environment = {**os.environ, "HOME": owner.pw_dir if owner is not None else os.environ.get("HOME", "/")}
    environment.pop("SUPERVISOR_TOKEN", None)  # the daemon has no use for it
    daemon = await asyncio.create_subprocess_exec(*command, env=environment, **drop)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.send_signal, sig)
    if await wait_until_ready(daemon, uri, READY_TIMEOUT):
        if token:
            await announce_with_retries(api, token, discovery_payload(hostname))
        else:
            _LOGGER.warning("no SUPERVISOR_TOKEN: not announcing; add the Wyoming integration by hand")
    elif daemon.returncode is None:
        _LOGGER.error("the daemon did not answer describe within %g s; not announcing it", READY_TIMEOUT)
    return await daemon.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr_daemon.service.addon", description=__doc__.split("\n")[0])
    parser.add_argument("--options", type=Path, default=OPTIONS, help="the add-on's options (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = daemon_config(load_options(args.options))
    except (OSError, ValueError, AddonError) as exc:
        _LOGGER.error("cannot use the add-on options: %s", exc)
        return EXIT_CONFIG
    owner = _daemon_user()
    _prepare_state(config, owner)
    path = write_config(config, owner)
    command = [sys.executable, "-m", "asr_daemon", "run", "--config", str(path)]
    api = os.environ.get("SUPERVISOR_API", "http://supervisor")
    token = os.environ.get("SUPERVISOR_TOKEN")
    uri = config["wyoming"]["uri"]
    with asyncio.Runner() as runner:
        return runner.run(supervise(command, owner, uri, api, token, socket.gethostname()))


if __name__ == "__main__":
    sys.exit(main())
