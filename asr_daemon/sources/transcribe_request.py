"""A client's ``transcribe`` event, checked: its data comes from the network and may hold any JSON.

The wyoming package copies the data into ``Transcribe`` without looking at the types, so a string where a list
is expected (``"transcript_names": "abc"``) would otherwise fail later, deep in the daemon, as an internal
error. Here it becomes a ``BadTranscribe`` naming the field, which the handler answers as ``bad-event``.
"""

from __future__ import annotations

from wyoming.asr import Transcribe
from wyoming.event import Event


class BadTranscribe(ValueError):
    """The ``transcribe`` event's data is not what the protocol says; the message names the field."""


def parse_transcribe(event: Event) -> Transcribe:
    """The request of a ``transcribe`` event, or ``BadTranscribe``."""
    data = event.data
    if not isinstance(data, dict):
        raise BadTranscribe("transcribe: the data must be a JSON object")
    language = data.get("language")
    if language is not None and not isinstance(language, str):
        raise BadTranscribe("transcribe: 'language' must be a string")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise BadTranscribe("transcribe: 'name' must be a string")
    for field in ("transcript_names", "transcript_terms"):
        _check_phrases(field, data.get(field))
    try:
        return Transcribe.from_event(event)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadTranscribe(f"transcribe: malformed data ({type(exc).__name__})") from None


def _check_phrases(field: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(phrase, str) for phrase in value):
        raise BadTranscribe(f"transcribe: {field!r} must be a list of strings")
