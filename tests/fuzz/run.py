"""Long fuzzing runs, coverage-guided by libFuzzer through atheris (``pip install -e '.[fuzz]'``).

    python -m tests.fuzz.run TARGET [libFuzzer options]    e.g. python -m tests.fuzz.run sauc -runs=100000

TARGET is a vendor codec (iapp, tiro, yating, amivoice, sauc) or ``wyoming`` (one client connection, reader and
handler). The same invariants as the pytest fuzz tests are checked for every input. The corpus starts from inputs
the hypothesis strategies generate (``FUZZ_CORPUS``, default /tmp/asr-daemon-fuzz/TARGET) and libFuzzer's
dictionary holds each protocol's keywords. A broken invariant stops the run and leaves the input in the corpus
directory as ``crash-*``; known failures (``tests.fuzz.wyoming.KNOWN_FAILURES``) are counted and skipped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["asr_daemon", "wyoming"]):
    import asr_daemon.sources.wyoming_handler
    import asr_daemon.sources.wyoming_reader
    import asr_daemon.vendors.amivoice.codec
    import asr_daemon.vendors.iapp.codec
    import asr_daemon.vendors.sauc.codec
    import asr_daemon.vendors.tiro.codec
    import asr_daemon.vendors.yating.codec  # noqa: F401

from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from tests.fuzz import codecs as vendor_inputs
from tests.fuzz import wyoming
from tests.test_fuzz_codecs import CODECS, closes, run_stream

# Between two messages (or TCP segments) of one input: bytes that never occur in UTF-8 text.
SEPARATOR = b"\xfe\xfe"
# A message that starts with this goes as the other frame type (text for SAUC, binary for the others).
OTHER_FRAME = b"\xfd"
CLOSE_CODES = [None, 1000, 1006, 1011, 4000]
MAX_MESSAGES = 16
SEEDS = int(os.environ.get("FUZZ_SEEDS", "300"))


def codec_target(name: str) -> Callable[[bytes], None]:
    make, _, max_error = CODECS[name]
    binary = name == "sauc"

    def one_input(data: bytes) -> None:
        if not data:
            return
        end_at, close = data[0] & 7, CLOSE_CODES[(data[0] >> 3) % len(CLOSE_CODES)]
        messages: list[str | bytes] = []
        for part in data[1:].split(SEPARATOR)[:MAX_MESSAGES]:
            other = part.startswith(OTHER_FRAME)
            body = part[1:] if other else part
            messages.append(body if binary != other else body.decode("utf-8", "replace"))
        run_stream(make(), messages, end_at, close, max_error)

    return one_input


def encode_codec_input(messages: list[str | bytes], end_at: int, close: int | None, binary: bool) -> bytes:
    head = bytes([(min(end_at, 7)) | (CLOSE_CODES.index(close) << 3)])
    parts = []
    for message in messages:
        body = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
        parts.append(body if isinstance(message, bytes) == binary else OTHER_FRAME + body)
    return head + SEPARATOR.join(parts)


known = collections.Counter[str]()


def wyoming_target() -> Callable[[bytes], None]:
    loop = asyncio.new_event_loop()

    def one_input(data: bytes) -> None:
        if not data:
            return
        segments = [part for part in data[1:].split(SEPARATOR) if part]
        try:
            wyoming.run(loop, segments, lost=bool(data[0] & 1))
        except wyoming.ConnectionFailure as failure:
            name = wyoming.known_failure(failure)
            if name is None:
                raise
            known[name] += 1
            total = known.total()
            if total & (total - 1) == 0 or total % 10_000 == 0:  # libFuzzer exits without returning: tell as we go
                print(f"known failures skipped so far: {dict(known)}", file=sys.stderr, flush=True)

    return one_input


def seeds(name: str) -> list[bytes]:
    """Starting inputs, drawn from the hypothesis strategies the pytest fuzz tests use."""
    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
    out = []
    if name == "wyoming":
        streams = wyoming.client_streams()
        for _ in range(SEEDS):
            segments, lost = streams.example()
            out.append(bytes([int(lost)]) + SEPARATOR.join(segments))
    else:
        _, messages, _ = CODECS[name]
        inputs = st.tuples(st.lists(messages, max_size=6), st.integers(0, 6), closes)
        for _ in range(SEEDS):
            out.append(encode_codec_input(*inputs.example(), binary=name == "sauc"))
    return out


def dictionary(name: str) -> list[str]:
    words: list[Any]
    if name == "wyoming":
        words = [*wyoming.EVENT_TYPES, "type", "data", "data_length", "payload_length", "version", "rate", "width",
                 "channels", "language", "transcript_names", "transcript_terms", "\n", "{", "}", "[", "]"]  # fmt: skip
    else:
        keys = {"iapp": (vendor_inputs.IAPP_KEYS, vendor_inputs.IAPP_WORDS),
                "tiro": (vendor_inputs.TIRO_KEYS, vendor_inputs.TIRO_WORDS),
                "yating": (vendor_inputs.YATING_KEYS, vendor_inputs.YATING_WORDS),
                "amivoice": (vendor_inputs.AMIVOICE_KEYS, vendor_inputs.AMIVOICE_WORDS),
                "sauc": (vendor_inputs.SAUC_KEYS, vendor_inputs.SAUC_WORDS)}[name]  # fmt: skip
        words = [*keys[0], *keys[1]]
    return [
        *(_dictionary_entry(str(word).encode("utf-8", "replace")) for word in words if word),
        _dictionary_entry(SEPARATOR),
    ]


def _dictionary_entry(word: bytes) -> str:
    """A libFuzzer dictionary line: quoted, anything but printable ASCII as \\xNN."""
    shown = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02X}" for b in word)
    return f'"{shown}"'


def main() -> None:
    name, options = sys.argv[1], sys.argv[2:]
    # The handler logs every refused input; at hundreds of connections a second that is all the output would be.
    logging.disable(logging.CRITICAL)
    corpus = Path(os.environ.get("FUZZ_CORPUS", f"/tmp/asr-daemon-fuzz/{name}"))
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for index, seed in enumerate(seeds(name)):
            (corpus / f"seed-{index:04d}").write_bytes(seed)
    words = corpus.parent / f"{name}.dict"
    words.write_text("".join(f"{word}\n" for word in dictionary(name)))
    target = wyoming_target() if name == "wyoming" else codec_target(name)
    # Inputs named on the command line (a crash to reproduce) are run once each, instead of fuzzing the corpus.
    inputs = [] if any(not option.startswith("-") for option in options) else [str(corpus)]
    args = [sys.argv[0], f"-dict={words}", f"-artifact_prefix={corpus}/", *options, *inputs]
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
