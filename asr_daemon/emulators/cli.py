"""``asr-daemon emulate VENDOR``: every emulator knob as a command-line option.

Options shared by every emulator map onto ``EmulatorOptions``; the others onto one emulator's constructor,
and are refused for a vendor they do not apply to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import EmulatorOptions, Fault

if TYPE_CHECKING:
    from .base import Emulator

EXIT_CONFIG = 2


@dataclass(frozen=True)
class VendorOption:
    """A flag that sets one keyword of some emulators' constructors."""

    flag: str
    parameter: str
    vendors: tuple[str, ...]
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    # "store", "store_true" (the parameter gets ``value``), or "append" (a list).
    action: str = "store"
    value: Any = True


_SAUC = ("zyun360", "volcengine")

VENDOR_OPTIONS: tuple[VendorOption, ...] = (
    VendorOption(
        "--start-error-status", "start_error_status", ("iapp",), "HTTP status of error_at_start (401; 503: outage)", int
    ),
    VendorOption(
        "--auth-failure",
        "auth_failure",
        ("tiro",),
        "how a bad token is refused: HTTP 401 at the upgrade, or a code-16 error line after it",
        choices=("http", "error_line"),
    ),
    VendorOption(
        "--close-mode",
        "close_mode",
        ("tiro",),
        "how a stream ends: TCP close without a close frame (abrupt, the real proxy) or close code 1000",
        choices=("abrupt", "normal"),
    ),
    VendorOption(
        "--interim-interval", "interim_interval", ("tiro",), "seconds between interims (0.35; 0: every change)", float
    ),
    VendorOption(
        "--decode-speed",
        "decode_speed",
        ("tiro",),
        "times real time the recogniser works through audio sent ahead (4; 0: at once)",
        float,
    ),
    VendorOption(
        "--language-code",
        "language_codes",
        ("tiro",),
        "a languageCode with a loaded model (repeatable; default is-IS and is-IS-x-exp)",
        action="append",
    ),
    VendorOption("--token-port", "token_port", ("yating",), "port of the token endpoint (default: the port + 1)", int),
    VendorOption("--token-ttl", "token_ttl", ("yating",), "seconds a one-time token stays valid (60)", float),
    VendorOption("--greeting-delay", "greeting_delay", ("yating",), "seconds before session_started", float),
    VendorOption(
        "--greeting",
        "greeting",
        ("yating",),
        "greeting with message_type session_started, or the older bare {status: ok}",
        choices=("session_started", "bare"),
    ),
    VendorOption(
        "--error-close-delay", "error_close_delay", ("yating",), "seconds from a status error to the close (3)", float
    ),
    VendorOption(
        "--eof-close-after", "eof_close_after", ("yating",), "seconds to wait for the close after asr_eof", float
    ),
    VendorOption(
        "--early-audio",
        "early_audio",
        ("yating",),
        "audio before session_started: accept and note it (the SDK sends it), or disconnect (the documented rule)",
        choices=("accept", "disconnect"),
    ),
    VendorOption(
        "--start-error",
        "start_error",
        ("yating",),
        "what error_at_start refuses: the token (fatal), the pipeline (transient) or the token endpoint (HTTP 503)",
        choices=("token", "pipeline", "http"),
    ),
    VendorOption(
        "--no-speech-limit-ms",
        "no_speech_limit_ms",
        ("amivoice",),
        "ms of audio without speech before the session is cut (600000)",
        int,
    ),
    VendorOption(
        "--auth-error-frame",
        "auth_error_frame",
        _SAUC,
        "refuse bad credentials with an error frame after the upgrade, not an HTTP status",
        action="store_true",
    ),
    VendorOption(
        "--keep-open-after-final",
        "close_after_final",
        _SAUC,
        "leave the socket open after the final response (the client must close it)",
        action="store_true",
        value=False,
    ),
)


def add_arguments(emulate: argparse.ArgumentParser) -> None:
    """The ``emulate`` subcommand's arguments."""
    emulate.add_argument("vendor", help="vendor to emulate")
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=0)
    emulate.add_argument("--key", action="append", default=None, help="accepted API key (repeatable; default test-key)")
    emulate.add_argument("--script", default=None, help="sentences to 'recognise', separated by |")
    emulate.add_argument(
        "--stream-script",
        action="append",
        default=None,
        metavar="SCRIPT",
        help="a script (sentences separated by |) per stream, in turn (repeatable; overrides --script)",
    )
    emulate.add_argument("--fault", default="none", help=", ".join(f.value for f in Fault))
    emulate.add_argument("--fault-streams", type=int, default=0, help="apply the fault to the first N streams (0: all)")
    emulate.add_argument("--fault-after-bytes", type=int, default=None, help="PCM bytes before drop/stall (16000)")
    emulate.add_argument("--slow-final-seconds", type=float, default=None, help="delay of slow_final (3)")
    emulate.add_argument("--idle-timeout", type=float, default=None, help="seconds before the vendor's idle cut")
    emulate.add_argument(
        "--recognise-by-audio",
        action="store_true",
        help="the same speech gets the same sentence on any connection (for clients that replay audio)",
    )
    emulate.add_argument("--silence-ms", type=int, default=None, help="silence that ends a sentence (500)")
    emulate.add_argument("--word-ms", type=int, default=None, help="speech per revealed word of a partial (250)")
    emulate.add_argument("--energy-threshold", type=float, default=None, help="RMS of a 10 ms speech frame (300)")
    emulate.add_argument(
        "--tls",
        action="store_true",
        help="serve wss:// (and https://) with a self-signed certificate made at start; its path is printed",
    )
    emulate.add_argument("--debug", action="store_true")
    group = emulate.add_argument_group("vendor-specific options")
    for option in VENDOR_OPTIONS:
        help_text = f"{option.help} [{', '.join(option.vendors)}]"
        if option.action == "store_true":
            group.add_argument(option.flag, action="store_const", const=option.value, default=None, help=help_text)
        elif option.action == "append":
            group.add_argument(option.flag, action="append", type=option.type, default=None, help=help_text)
        else:
            group.add_argument(option.flag, type=option.type, choices=option.choices, default=None, help=help_text)


def _split(script: str) -> list[str]:
    return [sentence.strip() for sentence in script.split("|") if sentence.strip()]


def emulator_options(args: argparse.Namespace) -> EmulatorOptions:
    """The shared options; raises ``ValueError`` with the message for the user."""
    try:
        fault = Fault(args.fault)
    except ValueError:
        raise ValueError(f"--fault {args.fault!r}: expected one of {', '.join(f.value for f in Fault)}") from None
    options = EmulatorOptions(
        script=_split(args.script) if args.script else [],
        stream_scripts=[_split(script) for script in args.stream_script or []],
        api_keys=args.key or ["test-key"],
        fault=fault,
        fault_streams=args.fault_streams,
        idle_timeout=args.idle_timeout,
        recognise_by_audio=args.recognise_by_audio,
    )
    for name in ("fault_after_bytes", "slow_final_seconds", "silence_ms", "word_ms", "energy_threshold"):
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, value)
    return options


def vendor_keywords(vendor: str, args: argparse.Namespace) -> dict[str, Any]:
    """The chosen vendor's constructor keywords; raises ``ValueError`` for options of other vendors."""
    keywords: dict[str, Any] = {}
    for option in VENDOR_OPTIONS:
        value = getattr(args, option.flag[2:].replace("-", "_"))
        if value is None:
            continue
        if vendor not in option.vendors:
            raise ValueError(f"{option.flag} applies to {', '.join(option.vendors)} only, not {vendor}")
        keywords[option.parameter] = value
    return keywords


async def run(args: argparse.Namespace, emulated: list[str], factory: Callable[[str], Callable[..., Emulator]]) -> int:
    """Serve until SIGINT/SIGTERM."""
    if args.vendor not in emulated:
        print(f"asr-daemon: no emulator for {args.vendor!r} (emulated: {', '.join(emulated)})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        options = emulator_options(args)
        keywords = vendor_keywords(args.vendor, args)
    except ValueError as exc:
        print(f"asr-daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with contextlib.ExitStack() as stack:
        if args.tls:
            from .tls import CertificateError, make_certificate

            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asr-daemon-emulator-")))
            try:
                certificate = make_certificate(directory, [args.host])
            except CertificateError as exc:
                print(f"asr-daemon: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            options.tls = certificate.server_context()
            print(f"TLS certificate (trust it in the client): {certificate.certificate}", flush=True)
        emulator = factory(args.vendor)(options, **keywords)
        await emulator.start(args.host, args.port)
        print(f"{args.vendor} emulator listening; configure vendors.{args.vendor}.url: {emulator.url}", flush=True)
        token_url = getattr(emulator, "token_url", None)
        if token_url:
            print(f"and vendors.{args.vendor}.token_url: {token_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await emulator.stop()
    return 0
