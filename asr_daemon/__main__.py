"""Command line: ``asr-daemon run | check | transcribe | emulate | health | devices``.

Every setting has an environment variable (``ASR_DAEMON_`` + the key path joined with ``__``); the flags here
override the config file and the environment for the common ones.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__

_LOGGER = logging.getLogger("asr_daemon")

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"ASR_DAEMON_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-daemon",
        description="Wyoming speech-to-text server streaming live to cloud recognisers.",
    )
    parser.add_argument("--version", action="version", version=f"asr-daemon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, default=_env("CONFIG"), help="YAML config file (env ASR_DAEMON_CONFIG)")
        sub.add_argument(
            "--debug",
            action="store_true",
            default=_env("DEBUG", "") in ("1", "true", "yes"),
            help="log debug messages (env ASR_DAEMON_DEBUG=1)",
        )
        sub.add_argument(
            "--log-format", choices=("human", "json"), default=None, help="log format (env ASR_DAEMON_LOG__FORMAT)"
        )

    run = commands.add_parser("run", help="run the Wyoming server")
    with_config(run)
    run.add_argument("--uri", default=None, help="listen URI, e.g. tcp://0.0.0.0:10300 (env ASR_DAEMON_WYOMING__URI)")
    run.add_argument(
        "--zeroconf",
        nargs="?",
        const=True,
        default=None,
        metavar="NAME",
        help="announce with zeroconf, optionally under NAME (env ASR_DAEMON_WYOMING__ZEROCONF)",
    )
    run.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=_env("EVENT_LOOP", "auto"),
        help="auto (default): uvloop when installed, else asyncio's own (env ASR_DAEMON_EVENT_LOOP)",
    )

    check = commands.add_parser("check", help="validate the config and print it with secrets masked")
    with_config(check)

    transcribe = commands.add_parser("transcribe", help="stream a WAV file through a vendor and print the result")
    with_config(transcribe)
    transcribe.add_argument("--vendor", required=True, help="configured vendor name")
    transcribe.add_argument("--language", required=True, help="language code, e.g. ja")
    transcribe.add_argument(
        "--pace", type=float, default=1.0, help="1 = real time (default), 2 = twice as fast, 0 = as fast as possible"
    )
    transcribe.add_argument(
        "--endpointing",
        action="store_true",
        help="end at the first end of speech (endpointing: settings), as a live stream would; "
        "default: the whole file, pauses included",
    )
    transcribe.add_argument("file", type=Path, help="WAV file (any rate, width, channels)")

    emulate = commands.add_parser("emulate", help="run a vendor emulator for offline testing")
    from .emulators.cli import add_arguments as add_emulate_arguments

    add_emulate_arguments(emulate)

    commands.add_parser("devices", help="list the audio input devices (for mic.device)")

    health = commands.add_parser("health", help="exit 0 when a running daemon answers describe")
    health.add_argument("--uri", default=_env("WYOMING__URI", "tcp://127.0.0.1:10300"))
    health.add_argument("--timeout", type=float, default=2.0)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    wyoming: dict[str, Any] = {}
    if getattr(args, "uri", None):
        wyoming["uri"] = args.uri
    zeroconf = getattr(args, "zeroconf", None)
    if zeroconf is not None:
        wyoming["zeroconf"] = True
        if isinstance(zeroconf, str):
            wyoming["zeroconf_name"] = zeroconf
    if wyoming:
        overrides["wyoming"] = wyoming
    log: dict[str, Any] = {}
    if getattr(args, "debug", False):
        log["level"] = "debug"
    if getattr(args, "log_format", None):
        log["format"] = args.log_format
    if log:
        overrides["log"] = log
    return overrides


def _load(args: argparse.Namespace) -> Any:
    from .config import load_settings
    from .logging_setup import setup_logging
    from .settings import ConfigError

    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"asr-daemon: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    setup_logging(settings.log.level, settings.log.format)
    return settings


async def _run(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .settings import ConfigError
    from .vendors.base import VendorFailure

    settings = _load(args)
    if not _log_problems(settings):
        return EXIT_CONFIG
    _LOGGER.debug("event loop: %s", type(asyncio.get_running_loop()).__module__)
    daemon = Daemon(settings)
    # A start that fails has already undone what it started, whichever step failed.
    try:
        await daemon.start()
    except ConfigError as exc:
        print(f"asr-daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        _LOGGER.error("cannot start: %s", exc)
        return EXIT_FAILED
    except VendorFailure as failure:
        print(f"asr-daemon: cannot start: {failure.error.message}", file=sys.stderr)
        return EXIT_CONFIG
    # What start-up built lives as long as the daemon: out of the collector's sight, a full collection under load
    # scans only the utterances' objects instead of pausing every stream for tens of ms (bench/RESULTS.md).
    gc.freeze()
    try:
        await daemon.wait_for_stop()
    finally:
        await daemon.stop()
    return 0


def _log_problems(settings: Any) -> bool:
    """Log what ``check`` would report; False when an error means the daemon must not start."""
    from .setup_check import find_problems

    problems = find_problems(settings)
    for problem in problems:
        log = _LOGGER.error if problem.level == "error" else _LOGGER.warning
        log("%s: %s", problem.key, problem.message)
    if any(problem.level == "error" for problem in problems):
        _LOGGER.error("not starting: fix the configuration errors above (asr-daemon check lists them)")
        return False
    return True


def _check(args: argparse.Namespace) -> int:
    import yaml

    from .daemon import Daemon
    from .setup_check import find_problems

    settings = _load(args)
    print(yaml.safe_dump(settings.redacted(), sort_keys=False, allow_unicode=True), end="")
    router = Daemon(settings).router
    print("# routes:")
    for language in router.languages():
        adapter = router.route(language)
        print(f"#   {language} → {adapter.name if adapter else 'none'}")
    if router.default:
        print(f"#   anything else → {router.default}")
    problems = find_problems(settings)
    for problem in problems:
        print(f"asr-daemon: {problem}", file=sys.stderr)
    errors = sum(problem.level == "error" for problem in problems)
    if errors:
        print(f"# configuration is not usable: {errors} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    warnings = len(problems)
    print(f"# configuration is valid{f' ({warnings} warning(s))' if warnings else ''}", file=sys.stderr)
    return 0


async def _transcribe(args: argparse.Namespace) -> int:
    from .daemon import endpoint_settings
    from .events import EventBus
    from .routing import Router
    from .session import SessionLimits
    from .utterance import Utterance, UtteranceServices
    from .vendors import registry
    from .vendors.base import AudioFormat

    settings = _load(args)
    vendors = settings.configured_vendors()
    if args.vendor not in vendors:
        print(
            f"asr-daemon: vendor {args.vendor!r} is not configured (configured: {', '.join(vendors) or 'none'}); "
            f"add vendors.{args.vendor} to the config or set ASR_DAEMON_VENDORS__{args.vendor.upper()}__API_KEY",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        with wave.open(str(args.file), "rb") as wav:
            fmt = AudioFormat(wav.getframerate(), wav.getsampwidth(), wav.getnchannels())
            frames = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        print(f"asr-daemon: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    adapter = registry.adapter_class(args.vendor)(vendors[args.vendor])
    limits = SessionLimits(
        max_audio_seconds=settings.limits.max_utterance_seconds, final_timeout=settings.limits.final_timeout
    )
    interactive = sys.stderr.isatty()

    def show_partial(text: str) -> None:
        if interactive:
            print(f"\r\033[K… {text}", end="", file=sys.stderr, flush=True)
        else:
            print(f"… {text}", file=sys.stderr, flush=True)

    # A file is a recording: its pauses are part of it, unless --endpointing asks to end at the first one.
    endpointing = endpoint_settings(settings.endpointing.model_copy(update={"enabled": True}))
    services = UtteranceServices(Router({args.vendor: adapter}), limits, EventBus(), endpointing=endpointing)
    utterance = Utterance(
        services,
        "cli",
        language=args.language,
        vendor=args.vendor,
        on_partial=show_partial,
        endpointing=args.endpointing,
        log_refusals=False,
    )
    step = fmt.bytes_per_second // 10 // fmt.frame_bytes * fmt.frame_bytes
    started = time.monotonic()
    try:
        if utterance.open(fmt):
            for offset in range(0, len(frames), step):
                utterance.feed(frames[offset : offset + step], fmt)
                if not utterance.taking_audio:
                    break
                if args.pace > 0:
                    due = started + (offset + step) / fmt.bytes_per_second / args.pace
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                else:
                    await asyncio.sleep(0)
        answer = await utterance.finish()
    finally:
        await utterance.aclose()
    result = answer.transcript
    if result is None:
        error = answer.error
        assert error is not None
        if interactive:
            print(file=sys.stderr)
        print(f"asr-daemon: {error.message} ({error.code})", file=sys.stderr)
        return EXIT_FAILED
    if interactive:
        print(file=sys.stderr)
    print(result.text)
    return 0


async def _emulate(args: argparse.Namespace) -> int:
    from .emulators.cli import run as run_emulator
    from .logging_setup import setup_logging
    from .vendors import registry

    setup_logging("debug" if args.debug else "info")
    return await run_emulator(args, registry.emulated(), registry.emulator_class)


async def _health(args: argparse.Namespace) -> int:
    from .service.probe import describe, local_uri

    uri = local_uri(args.uri)
    try:
        info = await describe(uri, args.timeout)
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"unhealthy: {uri}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    languages = sorted({lang for program in info.asr for model in program.models for lang in model.languages})
    print(f"healthy: {uri} asr-daemon {info.asr[0].version if info.asr else '?'}; languages: {', '.join(languages)}")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .sources.mic import DeviceUnavailable, input_devices, load_pyaudio

    try:
        pyaudio = load_pyaudio()
    except DeviceUnavailable as exc:
        print(f"asr-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    pa = pyaudio.PyAudio()
    try:
        devices = input_devices(pa)
        try:
            default: int | None = int(pa.get_default_input_device_info()["index"])
        except (OSError, ValueError):
            default = None
    finally:
        pa.terminate()
    if not devices:
        print("no audio input devices found", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'index':>5}  {'channels':>8}  {'default rate':>12}  name / 16-bit rates accepted")
    for device in devices:
        mark = " (default)" if device.index == default else ""
        rates = ", ".join(str(rate) for rate in device.rates) or "none of the common rates"
        print(f"{device.index:>5}  {device.max_channels:>8}  {device.default_rate:>12}  {device.name}{mark}")
        print(f"{'':>33}  rates: {rates}")
    print("# set mic.device to an index or to part of a name", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "check":
        return _check(args)
    if args.command == "devices":
        return _devices(args)
    runner = {"run": _run, "transcribe": _transcribe, "emulate": _emulate, "health": _health}[args.command]
    loop_factory = _loop_factory(args.event_loop) if args.command == "run" else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
            return loop_runner.run(runner(args))
    except KeyboardInterrupt:
        return 130


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The daemon's event loop: uvloop moves each audio chunk with about a quarter less CPU (bench/RESULTS.md)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            print("asr-daemon: --event-loop uvloop: uvloop is not installed (pip install uvloop)", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
