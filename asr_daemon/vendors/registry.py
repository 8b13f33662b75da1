"""Every vendor the daemon speaks: one line each.

Entries are import paths so that only what is used gets imported (start-up time and memory on a Pi).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ..emulators.base import Emulator
    from .base import VendorAdapter


@dataclass(frozen=True)
class VendorEntry:
    adapter: str
    emulator: str


VENDORS: dict[str, VendorEntry] = {
    "amivoice": VendorEntry("asr_daemon.vendors.amivoice.adapter:AmiVoiceAdapter", "asr_daemon.emulators.amivoice:AmiVoiceEmulator"),
    "iapp": VendorEntry("asr_daemon.vendors.iapp.adapter:IAppAdapter", "asr_daemon.emulators.iapp:IAppEmulator"),
    "tiro": VendorEntry("asr_daemon.vendors.tiro.adapter:TiroAdapter", "asr_daemon.emulators.tiro:TiroEmulator"),
    "yating": VendorEntry("asr_daemon.vendors.yating.adapter:YatingAdapter", "asr_daemon.emulators.yating:YatingEmulator"),
    "zyun360": VendorEntry("asr_daemon.vendors.sauc.adapter:Zyun360Adapter", "asr_daemon.emulators.sauc:Zyun360Emulator"),
    "volcengine": VendorEntry("asr_daemon.vendors.sauc.adapter:VolcengineAdapter", "asr_daemon.emulators.sauc:VolcengineEmulator"),
}


def _load(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def available() -> list[str]:
    """Vendor names whose adapter module is present in this installation."""
    names = []
    for name, entry in VENDORS.items():
        try:
            importlib.util.find_spec(entry.adapter.partition(":")[0])
        except ModuleNotFoundError:
            continue
        if importlib.util.find_spec(entry.adapter.partition(":")[0]) is not None:
            names.append(name)
    return names


@cache
def adapter_class(name: str) -> type[VendorAdapter]:
    return cast("type[VendorAdapter]", _load(VENDORS[name].adapter))


@cache
def emulator_class(name: str) -> type[Emulator]:
    return cast("type[Emulator]", _load(VENDORS[name].emulator))
