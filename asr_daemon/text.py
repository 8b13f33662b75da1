"""How recognised segments become one transcript, per written language."""

from __future__ import annotations

# Languages written without spaces between words (and so between sentences).
_UNSPACED = frozenset({"ja", "zh", "yue", "cmn", "wuu", "nan"})


def base_language(language: str) -> str:
    """``ja-JP`` → ``ja``; ``zh_TW`` → ``zh``."""
    return language.replace("_", "-").split("-")[0].lower()


def sentence_separator(language: str | None) -> str:
    """What stands between two sentences: nothing for Japanese and Chinese, a space otherwise (Thai too)."""
    if language and base_language(language) in _UNSPACED:
        return ""
    return " "


def join_segments(language: str | None, segments: list[str]) -> str:
    """Join final segments the way the language is written; empty segments are dropped."""
    parts = [s.strip() for s in segments if s and s.strip()]
    return sentence_separator(language).join(parts)
