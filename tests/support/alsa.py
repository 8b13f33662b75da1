"""A fake ALSA microphone: ALSA's ``file`` plugin reading known PCM, selected with ``ALSA_CONFIG_PATH``.

PortAudio (and so PyAudio and the daemon) sees a capture device named ``name`` whose audio is the bytes of
``infile``, in whatever format the reader opens it with: write the file in the rate/channels the daemon
will ask for. The ``null`` plugin underneath is not paced, so the device delivers audio as fast as it is
read, and what a read past the end of the file returns is not defined as silence: pad the file with plenty
of silence and stop reading before its end.

The config replaces the system's ALSA configuration entirely (nothing else exists for the process): only
``name``, ``null`` and ``default`` (also ``null``; PortAudio insists on a default) are defined.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_DEVICE = """\
pcm.{name} {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
    hint {{ show on description "asr-daemon test microphone" }}
}}
"""
_BASE = """\
pcm.null {
    type null
}
pcm.default {
    type null
}
"""


def write_config(path: Path, devices: dict[str, Path]) -> Path:
    """An ALSA configuration with a fake capture device per ``name → infile``."""
    text = _BASE + "".join(_DEVICE.format(name=name, infile=infile) for name, infile in devices.items())
    path.write_text(text, encoding="ascii")
    return path


@contextmanager
def alsa_config(path: Path) -> Iterator[Path]:
    """Point this process (and the children it starts) at ``path`` as its whole ALSA configuration."""
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = previous


def to_format(pcm16k_mono: bytes, rate: int, channels: int) -> bytes:
    """16 kHz mono s16le converted to ``rate``/``channels`` (a real resampler, as a device would give)."""
    samples = np.frombuffer(pcm16k_mono, dtype="<i2")
    if rate != 16000:
        import soxr

        samples = soxr.resample(samples, 16000, rate, quality="HQ").astype("<i2")
    if channels > 1:
        samples = np.repeat(samples[:, None], channels, axis=1).reshape(-1)
    return samples.astype("<i2").tobytes()


@contextmanager
def fake_microphone(
    directory: Path, pcm16k_mono: bytes, *, name: str = "asr_test_mic", rate: int = 16000, channels: int = 1
) -> Iterator[str]:
    """A device ``name`` whose audio is ``pcm16k_mono`` (as ``rate``/``channels``); yields the device name."""
    infile = directory / f"{name}.raw"
    infile.write_bytes(to_format(pcm16k_mono, rate, channels))
    with alsa_config(write_config(directory / "asound.conf", {name: infile})):
        yield name
