"""Which vendor hears which language, and what the daemon advertises.

A ``transcribe`` language is matched against each vendor's ``languages``: the exact code first, then its base
language (``ja-JP`` → ``ja``), then ``default_vendor``. Home Assistant compares pipeline languages by exact
string, so the advertised list holds every configured code plus its base form.
"""

from __future__ import annotations

from collections.abc import Mapping

from .text import base_language
from .vendors.base import VendorAdapter


class Router:
    def __init__(self, adapters: Mapping[str, VendorAdapter], default: str | None = None) -> None:
        self.adapters = dict(adapters)
        self.default = default
        if default is None and len(self.adapters) == 1:
            self.default = next(iter(self.adapters))

    def route(self, language: str | None) -> VendorAdapter | None:
        """The adapter for ``language``, or None when nothing serves it."""
        if language:
            wanted = language.replace("_", "-").lower()
            for match in (self._exact, self._base):
                adapter = match(wanted)
                if adapter is not None:
                    return adapter
        return self.adapters.get(self.default) if self.default else None

    def _exact(self, wanted: str) -> VendorAdapter | None:
        for adapter in self.adapters.values():
            if wanted in (code.lower() for code in adapter.languages):
                return adapter
        return None

    def _base(self, wanted: str) -> VendorAdapter | None:
        base = base_language(wanted)
        for adapter in self.adapters.values():
            codes = [code.lower() for code in adapter.languages]
            if base in codes:
                return adapter
        for adapter in self.adapters.values():
            if any(base_language(code) == base for code in adapter.languages):
                return adapter
        return None

    def languages(self) -> list[str]:
        """Every code a user may pick: each configured code and its base language, in config order."""
        seen: dict[str, None] = {}
        for adapter in self.adapters.values():
            for code in adapter.languages:
                seen.setdefault(code, None)
                seen.setdefault(base_language(code), None)
        return list(seen)
