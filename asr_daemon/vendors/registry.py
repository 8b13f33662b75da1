"""Every vendor the daemon speaks: one line each.

Entries are import paths so that only what is used gets imported (start-up time and memory on a Pi).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ..emulators.base import Emulator
    from .base import VendorAdapter


@dataclass(frozen=True)
class VendorEntry:
    adapter: str
    # "" for engines that run in the daemon and so have no service to emulate (``local``).
    emulator: str = ""


_V = "asr_daemon.vendors"
_E = "asr_daemon.emulators"

VENDORS: dict[str, VendorEntry] = {
    "amivoice": VendorEntry(f"{_V}.amivoice.adapter:AmiVoiceAdapter", f"{_E}.amivoice:AmiVoiceEmulator"),
    "iapp": VendorEntry(f"{_V}.iapp.adapter:IAppAdapter", f"{_E}.iapp:IAppEmulator"),
    "tiro": VendorEntry(f"{_V}.tiro.adapter:TiroAdapter", f"{_E}.tiro:TiroEmulator"),
    "yating": VendorEntry(f"{_V}.yating.adapter:YatingAdapter", f"{_E}.yating:YatingEmulator"),
    "zyun360": VendorEntry(f"{_V}.sauc.adapter:Zyun360Adapter", f"{_E}.sauc:Zyun360Emulator"),
    "volcengine": VendorEntry(f"{_V}.sauc.adapter:VolcengineAdapter", f"{_E}.sauc:VolcengineEmulator"),
    "local": VendorEntry(f"{_V}.local.adapter:LocalAdapter"),
}


def _load(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def available() -> list[str]:
    """Vendor names whose adapter module is present in this installation."""
    names = []
    for name, entry in VENDORS.items():
        try:
            found = importlib.util.find_spec(entry.adapter.partition(":")[0]) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            names.append(name)
    return names


@cache
def adapter_class(name: str) -> type[VendorAdapter]:
    return cast("type[VendorAdapter]", _load(VENDORS[name].adapter))


def emulated() -> list[str]:
    """Vendor names that have an emulator (``asr-daemon emulate``)."""
    return [name for name, entry in VENDORS.items() if entry.emulator]


class NoEmulator(LookupError):
    """The vendor runs inside the daemon: there is no service to emulate."""


@cache
def emulator_class(name: str) -> type[Emulator]:
    path = VENDORS[name].emulator
    if not path:
        raise NoEmulator(
            f"{name!r} has no emulator: it runs inside the daemon, so there is no service to emulate "
            f"(vendors with one: {', '.join(emulated())})"
        )
    return cast("type[Emulator]", _load(path))
