"""Language routing and the advertised language list."""

from __future__ import annotations

from asr_daemon.resilience.policy import ResiliencePolicy
from asr_daemon.routing import Router
from asr_daemon.settings import VendorSettings
from asr_daemon.text import join_segments
from asr_daemon.vendors.base import Stream, StreamCodec, StreamOptions, VendorAdapter


class _Adapter(VendorAdapter):
    name = "fake"
    settings_model = VendorSettings
    default_url = "ws://127.0.0.1:1"

    def __init__(self, name: str, languages: list[str]) -> None:
        super().__init__(VendorSettings(languages=languages))
        self.label = name

    def new_codec(self, options: StreamOptions) -> StreamCodec:
        raise NotImplementedError

    def open_stream(self, options: StreamOptions, policy: ResiliencePolicy) -> Stream:
        raise NotImplementedError


def router() -> Router:
    adapters = {
        "amivoice": _Adapter("amivoice", ["ja", "ja-JP"]),
        "iapp": _Adapter("iapp", ["th-TH"]),
        "yating": _Adapter("yating", ["zh-TW", "en"]),
        "zyun360": _Adapter("zyun360", ["zh-CN", "zh"]),
    }
    return Router(adapters, default="yating")


def label(language: str | None) -> str | None:
    adapter = router().route(language)
    return adapter.label if isinstance(adapter, _Adapter) else None


def test_exact_code_first() -> None:
    assert label("zh-TW") == "yating"
    assert label("zh-CN") == "zyun360"
    assert label("ja-JP") == "amivoice"


def test_base_language_next() -> None:
    assert label("th") == "iapp"  # only th-TH configured
    assert label("ja-jp") == "amivoice"  # case does not matter
    assert label("zh-HK") == "zyun360"  # zh listed by zyun360
    assert label("en-GB") == "yating"


def test_default_last_and_for_no_language() -> None:
    assert label("is") == "yating"
    assert label(None) == "yating"


def test_no_default_means_no_route() -> None:
    assert Router({"a": _Adapter("a", ["ja"]), "b": _Adapter("b", ["th"])}).route("is") is None


def test_single_vendor_is_the_default() -> None:
    only = _Adapter("only", ["ja"])
    assert Router({"only": only}).route("de") is only


def test_languages_advertise_short_and_region_forms_once() -> None:
    langs = router().languages()
    for code in ("ja", "ja-JP", "th", "th-TH", "zh-TW", "zh", "zh-CN", "en"):
        assert code in langs
    assert len(langs) == len(set(langs))


def test_sentences_are_joined_as_each_language_is_written() -> None:
    assert join_segments("ja", ["こんにちは。", "元気です。"]) == "こんにちは。元気です。"
    assert join_segments("zh-TW", ["今天天氣很好", "我們去散步"]) == "今天天氣很好我們去散步"
    assert join_segments("is-IS", ["góðan dag", "hvað segirðu"]) == "góðan dag hvað segirðu"
    assert join_segments("th", ["สวัสดีครับ", "วันนี้อากาศดี"]) == "สวัสดีครับ วันนี้อากาศดี"
    assert join_segments("en", ["hello", "", " world "]) == "hello world"
