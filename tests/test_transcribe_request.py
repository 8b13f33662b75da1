"""A transcribe event's data is checked field by field: a wrong type is the client's bad event, named."""

from __future__ import annotations

from typing import Any

import pytest
from wyoming.event import Event

from asr_daemon.sources.transcribe_request import BadTranscribe, parse_transcribe


def transcribe(data: Any) -> Event:
    return Event(type="transcribe", data=data)


def test_a_well_formed_request_is_read_whole() -> None:
    request = parse_transcribe(transcribe(
        {"language": "ja", "name": "m", "transcript_names": ["Kitchen"], "transcript_terms": ["lamp"]}
    ))
    assert (request.language, request.transcript_names, request.transcript_terms) == ("ja", ["Kitchen"], ["lamp"])
    assert parse_transcribe(transcribe({})).language is None


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"transcript_names": "abc"}, "'transcript_names' must be a list of strings"),
        ({"transcript_terms": ["ok", 3]}, "'transcript_terms' must be a list of strings"),
        ({"transcript_names": {"a": 1}}, "'transcript_names' must be a list of strings"),
        ({"language": ["ja"]}, "'language' must be a string"),
        ({"name": 5}, "'name' must be a string"),
    ],
)
def test_a_wrong_type_is_a_bad_transcribe_naming_the_field(data: dict[str, Any], named: str) -> None:
    with pytest.raises(BadTranscribe, match=named):
        parse_transcribe(transcribe(data))
