"""The pre-built ``info`` answer to ``describe`` (Home Assistant gives it 1 s)."""

from __future__ import annotations

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from . import __version__
from .routing import Router
from .text import base_language

PROJECT_URL = "https://github.com/asr-daemon/asr-daemon"


def build_info(router: Router, *, endpointing: bool = False) -> Info:
    """One program, one model per configured vendor, advertising both short and region language forms.

    With ``endpointing`` the daemon ends each utterance itself, so Home Assistant (2026.x) skips its own voice
    activity detection; and cloud recognisers are trained on unprocessed audio and do their own noise handling, so
    the program asks for neither automatic gain nor noise reduction (Home Assistant then also takes a voice
    satellite's unprocessed channel); Home Assistant reads only the first program, so this holds for every
    vendor (docs/endpointing.md).
    """
    attribution = Attribution(name="asr-daemon", url=PROJECT_URL)
    models = []
    for name, adapter in router.adapters.items():
        languages: dict[str, None] = {}
        for code in adapter.languages:
            languages.setdefault(code, None)
            languages.setdefault(base_language(code), None)
        models.append(
            AsrModel(
                name=name,
                attribution=attribution,
                installed=True,
                description=f"{name} cloud streaming recognition",
                version=None,
                languages=list(languages),
            )
        )
    program = AsrProgram(
        name="asr-daemon",
        attribution=attribution,
        installed=True,
        description="Streams speech live to cloud recognisers ("
        + (", ".join(router.adapters) or "none configured")
        + ")",
        version=__version__,
        models=models,
        supports_transcript_streaming=True,
        # Without endpointing the program says what it always said (the package's defaults).
        requires_external_vad=not endpointing,
        prefers_auto_gain_enabled=not endpointing,
        prefers_noise_reduction_enabled=not endpointing,
    )
    return Info(asr=[program])
