"""``asr-daemon emulate``: every emulator knob is reachable from the command line."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from asr_daemon.__main__ import build_parser
from asr_daemon.emulators.base import Emulator, EmulatorOptions, Fault
from asr_daemon.emulators.cli import VENDOR_OPTIONS, emulator_options, vendor_keywords
from asr_daemon.vendors import registry

# EmulatorOptions fields with no flag of their own: the record of PCM only matters to code that reads the
# records (tests), and ``tls`` is made by --tls.
NOT_FLAGS = {"keep_pcm", "tls", "api_keys", "stream_scripts", "script"}


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["emulate", *argv])


def constructor_keywords(cls: type[Emulator]) -> set[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("vendor", registry.emulated())
def test_every_constructor_keyword_has_a_flag(vendor: str) -> None:
    cls = registry.emulator_class(vendor)
    flagged = {option.parameter for option in VENDOR_OPTIONS if vendor in option.vendors}
    assert constructor_keywords(cls) == flagged


def test_every_shared_option_has_a_flag() -> None:
    fields = {field.name for field in dataclasses.fields(EmulatorOptions)} - NOT_FLAGS
    args = parse("iapp")
    assert all(hasattr(args, name) for name in fields), fields - set(vars(args))


def test_shared_flags_set_the_options() -> None:
    args = parse(
        "tiro",
        "--script",
        "a|b",
        "--stream-script",
        "c|d",
        "--stream-script",
        "e",
        "--key",
        "k1",
        "--fault",
        "slow_final",
        "--fault-streams",
        "2",
        "--fault-after-bytes",
        "320",
        "--slow-final-seconds",
        "0.5",
        "--idle-timeout",
        "4",
        "--recognise-by-audio",
        "--silence-ms",
        "600",
        "--word-ms",
        "100",
        "--energy-threshold",
        "50",
    )
    options = emulator_options(args)
    assert options.script == ["a", "b"] and options.stream_scripts == [["c", "d"], ["e"]]
    assert options.api_keys == ["k1"] and options.fault is Fault.SLOW_FINAL and options.fault_streams == 2
    assert (options.fault_after_bytes, options.slow_final_seconds, options.idle_timeout) == (320, 0.5, 4.0)
    assert options.recognise_by_audio and (options.silence_ms, options.word_ms, options.energy_threshold) == (
        600,
        100,
        50.0,
    )
    # Unset flags keep the defaults the benchmark and the endpointing work rely on.
    defaults = emulator_options(parse("amivoice"))
    assert (defaults.silence_ms, defaults.word_ms, defaults.energy_threshold) == (500, 250, 300.0)


@pytest.mark.parametrize(
    ("vendor", "argv", "attributes"),
    [
        ("iapp", ["--start-error-status", "503"], {"start_error_status": 503}),
        (
            "tiro",
            [
                "--auth-failure",
                "error_line",
                "--close-mode",
                "normal",
                "--interim-interval",
                "0",
                "--decode-speed",
                "0",
                "--language-code",
                "is-IS",
                "--language-code",
                "en-US",
            ],
            {
                "auth_failure": "error_line",
                "close_mode": "normal",
                "interim_interval": 0.0,
                "decode_speed": 0.0,
                "language_codes": ("is-IS", "en-US"),
            },
        ),
        (
            "yating",
            [
                "--early-audio",
                "disconnect",
                "--greeting",
                "bare",
                "--greeting-delay",
                "0.2",
                "--token-ttl",
                "5",
                "--error-close-delay",
                "0.1",
                "--eof-close-after",
                "1",
                "--start-error",
                "pipeline",
            ],
            {
                "early_audio": "disconnect",
                "greeting": "bare",
                "greeting_delay": 0.2,
                "token_ttl": 5.0,
                "error_close_delay": 0.1,
                "eof_close_after": 1.0,
                "start_error": "pipeline",
            },
        ),
        ("amivoice", ["--no-speech-limit-ms", "1000"], {"no_speech_limit_ms": 1000}),
        (
            "zyun360",
            ["--auth-error-frame", "--keep-open-after-final"],
            {"auth_error_frame": True, "close_after_final": False},
        ),
        ("volcengine", ["--auth-error-frame"], {"auth_error_frame": True, "close_after_final": True}),
    ],
)
def test_vendor_flags_reach_the_emulator(vendor: str, argv: list[str], attributes: dict[str, Any]) -> None:
    args = parse(vendor, *argv)
    emulator = registry.emulator_class(vendor)(emulator_options(args), **vendor_keywords(vendor, args))
    for name, value in attributes.items():
        assert getattr(emulator, name) == value, name


def test_a_flag_of_another_vendor_is_refused() -> None:
    with pytest.raises(ValueError, match="--early-audio applies to yating only"):
        vendor_keywords("tiro", parse("tiro", "--early-audio", "accept"))
