"""The model that ships in the pocketsphinx wheel, its pronunciation dictionary, and command grammars.

Everything here runs at start-up (settings validation) and when an engine is built; nothing runs per
utterance. A grammar is checked completely before the daemon serves anything: the file is readable, it is
JSGF that pocketsphinx parses (its own parser's message is quoted, with the line), the rule exists, and every
word has a pronunciation in the dictionary. A decoder built from a checked grammar then needs only the
dictionary entries of the grammar's own words, which makes it quick to load and small.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...install_hints import LOCAL_INSTALL_HINT

# The acoustic model, dictionary and language model inside the wheel: US English.
MODEL_LANGUAGE = "en-us"

# Name of the grammar built from ``phrases`` and of the rules added to a grammar file.
PHRASES_GRAMMAR = "asr_daemon"
PHRASES_RULE = "asr_daemon_phrases"
TOP_RULE = "asr_daemon_top"

# Characters that mean something in JSGF and so cannot be part of a word of a phrase.
_JSGF_SPECIAL = set(';=|*+<>()[]{}/\\"#')
# Punctuation stripped from both ends of a phrase's words ("Lights, please!" → lights please).
_EDGE_PUNCTUATION = ".,!?;:\"'()[]{}"
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_GRAMMAR_NAME = re.compile(r"^\s*grammar\s+([A-Za-z0-9_.$-]+)\s*;", re.MULTILINE)
_RULE_DEFINITION = re.compile(r"(?:^|;)\s*(public\s+)?<([^<>\s]+)>\s*=", re.MULTILINE)
_IMPORT = re.compile(r"^\s*import\s+<", re.MULTILINE)
# Longest piece of pocketsphinx's own error output quoted in a message.
_QUOTE_CHARS = 300


class GrammarError(ValueError):
    """A grammar or phrase list that cannot be used; the message says what to fix."""


class EngineUnavailable(RuntimeError):
    """pocketsphinx or its bundled model is not installed."""


@dataclass(frozen=True)
class ModelPaths:
    """The files of the bundled en-US model."""

    acoustic: Path
    dictionary: Path
    language_model: Path


def missing_reason() -> str | None:
    """Why the local engine cannot run here (None: it can)."""
    try:
        model_paths()
    except EngineUnavailable as exc:
        return str(exc)
    return None


@lru_cache(maxsize=1)
def model_paths() -> ModelPaths:
    """Where the wheel's model is; raises ``EngineUnavailable``. Finds it without importing the native module."""
    try:
        spec = importlib.util.find_spec("pocketsphinx")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(f"the local engine needs the pocketsphinx package: {LOCAL_INSTALL_HINT}")
    base = Path(next(iter(spec.submodule_search_locations))) / "model" / MODEL_LANGUAGE
    paths = ModelPaths(base / MODEL_LANGUAGE, base / "cmudict-en-us.dict", base / "en-us.lm.bin")
    for path in (paths.acoustic / "mdef", paths.dictionary, paths.language_model):
        if not path.is_file():
            raise EngineUnavailable(f"the pocketsphinx installation has no {MODEL_LANGUAGE} model ({path} is missing)")
    return paths


def import_pocketsphinx() -> Any:
    """The pocketsphinx module (imported only when a grammar is checked or a decoder is built)."""
    try:
        import pocketsphinx
    except ImportError as exc:
        needed = f"the local engine needs the pocketsphinx package ({exc}): {LOCAL_INSTALL_HINT}"
        raise EngineUnavailable(needed) from None
    return pocketsphinx


# ---------------------------------------------------------------------------------------------------------
# The dictionary


@lru_cache(maxsize=16)
def _pronunciations(words: frozenset[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Dictionary entries (``word`` or ``word(2)``, phones) of ``words``, read in one pass over the file."""
    found: dict[str, list[tuple[str, str]]] = {}
    with model_paths().dictionary.open(encoding="utf-8") as lines:
        for line in lines:
            entry, _, phones = line.strip().partition(" ")
            word = entry.split("(", 1)[0]
            if word in words:
                found.setdefault(word, []).append((entry, phones.strip()))
    return {word: tuple(entries) for word, entries in found.items()}


def pronunciations(words: Iterable[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    return _pronunciations(frozenset(words))


def check_vocabulary(words: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The dictionary entries of ``words``; raises ``GrammarError`` naming every word it lacks."""
    wanted = sorted(set(words))
    known = pronunciations(wanted)
    missing = [w for w in wanted if w not in known]
    if missing:
        lowercase = {w.lower() for w in missing if w != w.lower()}
        known_lower = pronunciations(lowercase) if lowercase else {}
        shown = ", ".join(repr(w) for w in missing[:20]) + (" …" if len(missing) > 20 else "")
        hint = " (the dictionary's words are lowercase)" if known_lower else ""
        raise GrammarError(
            f"not in the {MODEL_LANGUAGE} pronunciation dictionary: {shown}{hint}; use other words "
            "(spell numbers out: 'ten', not '10')"
        )
    return tuple(entry for word in wanted for entry in known[word])


# ---------------------------------------------------------------------------------------------------------
# Phrases


def phrase_words(phrase: str) -> tuple[str, ...]:
    """A configured phrase as dictionary words: lowercase, punctuation at word edges dropped."""
    words = []
    for token in phrase.lower().split():
        word = token.strip(_EDGE_PUNCTUATION)
        if word:
            words.append(word)
    return tuple(words)


def check_phrases(phrases: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Each phrase's words; raises ``GrammarError`` naming the first unusable phrase by its index."""
    result = [phrase_words(phrase) for phrase in phrases]
    known = pronunciations({word for words in result for word in words}) if result else {}
    for index, (phrase, words) in enumerate(zip(phrases, result, strict=True)):
        where = f"phrases[{index}] = {phrase!r}"
        if not words:
            raise GrammarError(f"{where}: has no words")
        bad = [w for w in words if _JSGF_SPECIAL & set(w)]
        if bad:
            raise GrammarError(f"{where}: {bad[0]!r} is not a word")
        if any(w not in known for w in words):
            try:
                check_vocabulary(words)
            except GrammarError as exc:
                raise GrammarError(f"{where}: {exc}") from None
    return tuple(result)


def _phrases_body(phrases: Sequence[tuple[str, ...]]) -> str:
    # Duplicates would only add identical paths; order kept for a readable grammar.
    unique = list(dict.fromkeys(phrases))
    return " | ".join("( " + " ".join(words) + " )" for words in unique)


# ---------------------------------------------------------------------------------------------------------
# Grammars


@dataclass(frozen=True)
class Grammar:
    """A checked JSGF grammar, ready for a decoder."""

    jsgf: str
    # The rule recognition starts from, qualified with the grammar's name (pocketsphinx's ``toprule``).
    top_rule: str
    # Dictionary entries for every word the grammar can produce (alternative pronunciations included).
    pronunciations: tuple[tuple[str, str], ...]
    # For logs and ``check``: where it came from.
    description: str


def build_grammar(path: str | None, rule: str | None, phrases: Sequence[str]) -> Grammar | None:
    """The grammar of ``grammar`` (a JSGF file) and/or ``phrases``; None for open dictation.

    Raises ``GrammarError`` (what is wrong, in words a user can act on) or ``EngineUnavailable``.
    """
    return _build(path, rule, tuple(phrases), _mtime(path))


def _mtime(path: str | None) -> tuple[int, int] | None:
    """The file's modification time and size: a changed file is checked again."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


@lru_cache(maxsize=8)
def _build(
    path: str | None, rule: str | None, phrases: tuple[str, ...], _version: tuple[int, int] | None
) -> Grammar | None:
    """Cached so that validation and the adapter share the work (the file's mtime and size are in the key)."""
    phrase_words_list = check_phrases(phrases)
    if path is None:
        if rule is not None:
            raise GrammarError("grammar_rule is set but there is no grammar file")
        if not phrase_words_list:
            return None
        body = _phrases_body(phrase_words_list)
        text = f"#JSGF V1.0;\ngrammar {PHRASES_GRAMMAR};\npublic <{PHRASES_RULE}> = {body};\n"
        top = f"{PHRASES_GRAMMAR}.{PHRASES_RULE}"
        return _checked(text, top, f"{len(phrase_words_list)} phrases")
    try:
        source = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GrammarError(f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise GrammarError("is not UTF-8 text") from None
    bare = _COMMENTS.sub(" ", source)
    if not bare.lstrip().startswith("#JSGF"):
        raise GrammarError("is not a JSGF grammar (it must start with a '#JSGF V1.0;' header)")
    if _IMPORT.search(bare):
        raise GrammarError("imports another grammar; put all rules in this one file")
    name_match = _GRAMMAR_NAME.search(bare)
    if name_match is None:
        raise GrammarError("has no 'grammar NAME;' declaration")
    name = name_match.group(1)
    defined = [(bool(public), rule_name) for public, rule_name in _RULE_DEFINITION.findall(bare)]
    if rule is None:
        public_rules = [rule_name for public, rule_name in defined if public]
        if not public_rules:
            raise GrammarError("has no public rule to start from (declare one 'public <name> = ...;')")
        rule = public_rules[0]
    else:
        rule = rule.strip().strip("<>")
        rule = rule.removeprefix(f"{name}.")
        if rule not in {rule_name for _, rule_name in defined}:
            known = ", ".join(f"<{r}>" for _, r in defined) or "none"
            raise GrammarError(f"has no rule <{rule}> (grammar_rule); its rules: {known}")
    described = f"{Path(path).name} <{rule}>"
    if not phrase_words_list:
        return _checked(source, f"{name}.{rule}", described)
    combined = (
        f"{source.rstrip()}\n\n// Added by asr-daemon from vendors.local.phrases:\n"
        f"<{PHRASES_RULE}> = {_phrases_body(phrase_words_list)};\n"
        f"public <{TOP_RULE}> = <{rule}> | <{PHRASES_RULE}>;\n"
    )
    return _checked(combined, f"{name}.{TOP_RULE}", f"{described} and {len(phrase_words_list)} phrases")


def _checked(text: str, top_rule: str, description: str) -> Grammar:
    """Parse ``text`` with pocketsphinx's own JSGF parser and check its vocabulary against the dictionary."""
    ps = import_pocketsphinx()
    with tempfile.TemporaryDirectory(prefix="asr-daemon-jsgf-") as folder:
        grammar_file = Path(folder) / "grammar.jsgf"
        grammar_file.write_text(text, encoding="utf-8")
        with _c_stderr() as captured:
            try:
                jsgf = ps.Jsgf(str(grammar_file))
            except (ValueError, RuntimeError):
                jsgf = None
        if jsgf is None:
            detail = _parser_message(captured.text)
            raise GrammarError(f"is not valid JSGF{': ' + detail if detail else ''}")
        found = jsgf.get_rule(top_rule)
        if found is None:
            raise GrammarError(f"has no rule <{top_rule.rpartition('.')[2]}>")
        fsg = jsgf.build_fsg(found, ps.LogMath(), 7.5)
        fsg_file = Path(folder) / "grammar.fsg"
        fsg.writefile(str(fsg_file))
        words = _fsg_words(fsg_file.read_text(encoding="utf-8", errors="replace"))
    if not words:
        raise GrammarError("produces no words")
    return Grammar(text, top_rule, check_vocabulary(words), description)


def _fsg_words(fsg: str) -> set[str]:
    """Words on the transitions of pocketsphinx's FSG text format (``TRANSITION from to prob [word]``)."""
    words = set()
    for line in fsg.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "TRANSITION":
            words.add(parts[4])
    return words


def _parser_message(text: str) -> str:
    """pocketsphinx's syntax error, without its source-file prefixes; the temporary file name left out."""
    messages = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("ERROR:"):
            continue
        message = re.sub(r'^ERROR:\s*"[^"]*",\s*line\s*\d+:\s*', "", line)
        if "Failed to parse JSGF grammar from" in message:
            continue
        messages.append(message)
    joined = "; ".join(messages)
    return joined if len(joined) <= _QUOTE_CHARS else joined[: _QUOTE_CHARS - 1] + "…"


class _Captured:
    text = ""


@contextlib.contextmanager
def _c_stderr() -> Iterator[_Captured]:
    """Collect what the C library writes to file descriptor 2 (its parser reports errors only there).

    Only used while a grammar is checked at start-up; pocketsphinx's log level is raised to errors for the
    duration and set back to fatal-only afterwards (decoders log nothing).
    """
    ps = import_pocketsphinx()
    captured = _Captured()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            ps.set_loglevel("ERROR")
            yield captured
        finally:
            ps.set_loglevel("FATAL")
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        captured.text = sink.read().decode("utf-8", "replace")
