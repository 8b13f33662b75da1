"""The local engine: pocketsphinx's streaming decoder behind the ``Stream`` contract the session uses.

Three layers:

* ``Recogniser`` (synchronous, no threads): feeds one stream's audio to a decoder in 30 ms frames, asks a
  voice-activity detector about each frame, closes a sentence (``end_utt`` → final) after a pause, and asks
  the decoder for its hypothesis once per chunk (→ partial). It is driven with a fake decoder in the tests.
* ``LocalEngine``: builds decoders (the wheel's en-US model; a grammar's decoder loads only its own words)
  and lends them out, at most ``max_streams`` at a time, keeping ``keep_loaded`` of them between utterances.
* ``LocalStream``: one worker thread per stream runs the ``Recogniser``. Audio reaches it through a bounded
  queue (``send_audio`` waits, without blocking the event loop, when the decoder falls behind); events come
  back with ``loop.call_soon_threadsafe``. ``aclose()`` stops the thread and waits for it: a thread never
  outlives its stream, and a stream closed mid-sentence hands its decoder back reset.

pocketsphinx holds the GIL inside its C calls, so the event loop waits while one runs: audio is therefore fed
in 30 ms frames (a few milliseconds of decoding each) and the slow pass at the end of a sentence is off
(``fwdflat``). Loading a decoder is one long C call; see ``LocalAdapter.preload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ...resilience.policy import DEFAULT_POLICY, ResiliencePolicy
from ..base import BaseStream, StreamOptions, VendorAdapter, VendorError, VendorEvent, VendorFailure
from .codec import Boundary, LocalCodec, SpeechSegmenter
from .grammar import EngineUnavailable, Grammar, import_pocketsphinx, model_paths

_LOGGER = logging.getLogger(__name__)

RATE = 16000
# Voice activity is decided per 30 ms frame (480 samples), the size pocketsphinx's VAD works in at 16 kHz.
FRAME_MS = 30
# Audio chunks waiting for the worker: 2 s. When the decoder falls behind, the session's sender waits (its
# replay buffer holds the rest), so the work left after the end of audio stays small.
MAX_QUEUED_CHUNKS = 20
# A sentence that has heard no speech yet is restarted after this much silence (bounds decoder memory on a
# long, mostly quiet stream such as an always-on microphone).
IDLE_RESTART_MS = 3000
# How often a waiting worker looks at its stop flag and at the event loop.
_POLL_SECONDS = 0.25


class DecoderLike(Protocol):
    def start_utt(self) -> None: ...
    def end_utt(self) -> None: ...
    def process_raw(self, data: bytes, no_search: bool = False, full_utt: bool = False) -> int: ...
    def hyp(self) -> Any: ...


class VadLike(Protocol):
    frame_bytes: int

    def is_speech(self, frame: bytes) -> bool: ...


def hypothesis_text(decoder: DecoderLike) -> str:
    hyp = decoder.hyp()
    text = getattr(hyp, "hypstr", None) if hyp is not None else None
    return text if isinstance(text, str) else ""


class Recogniser:
    """One stream's audio through one decoder: sentences, partials, finals. Not thread-safe: one thread drives it."""

    def __init__(self, decoder: DecoderLike, vad: VadLike, codec: LocalCodec, end_silence_ms: int = 800) -> None:
        self.decoder = decoder
        self.vad = vad
        self.codec = codec
        self.frame_bytes = vad.frame_bytes
        frame_ms = self.frame_bytes * 1000 // (RATE * 2)
        self.segmenter = SpeechSegmenter(frame_ms=frame_ms, end_silence_ms=end_silence_ms)
        self._rest = b""
        self._utterance_open = False  # the decoder is inside start_utt … end_utt
        self._heard_speech = False  # the open decoder utterance holds a sentence
        self._utterance_frames = 0
        self._idle_restart_frames = IDLE_RESTART_MS // frame_ms

    @property
    def busy(self) -> bool:
        """The decoder is inside an utterance (it must be ended before the decoder is reused)."""
        return self._utterance_open

    def feed(self, pcm: bytes) -> list[VendorEvent]:
        """Audio (16 kHz s16le mono): finals for sentences that ended in it, then the open sentence's partial."""
        data = self._rest + pcm if self._rest else pcm
        events: list[VendorEvent] = []
        usable = len(data) - len(data) % self.frame_bytes
        for offset in range(0, usable, self.frame_bytes):
            events += self._frame(data[offset : offset + self.frame_bytes])
        self._rest = data[usable:]
        if self._heard_speech:
            events += self.codec.hypothesis(hypothesis_text(self.decoder))
        return events

    def finish(self) -> list[VendorEvent]:
        """The end of audio: the last sentence's final, then ``StreamCompleted``."""
        events: list[VendorEvent] = []
        if self._rest and self._utterance_open:
            self.decoder.process_raw(self._rest, False, False)
        self._rest = b""
        if self._utterance_open:
            events += self._close_sentence()
        return events + self.codec.complete()

    def abort(self) -> None:
        """Leave the decoder between utterances (the stream was closed early); what it heard is dropped."""
        self._rest = b""
        if self._utterance_open:
            self._utterance_open = False
            self._heard_speech = False
            self.decoder.end_utt()

    def _frame(self, frame: bytes) -> list[VendorEvent]:
        if not self._utterance_open:
            self.decoder.start_utt()
            self._utterance_open = True
            self._utterance_frames = 0
        self.decoder.process_raw(frame, False, False)
        self._utterance_frames += 1
        boundary = self.segmenter.push(bool(self.vad.is_speech(frame)))
        if boundary is Boundary.SPEECH_STARTED:
            self._heard_speech = True
        elif boundary is Boundary.SPEECH_ENDED:
            return self._close_sentence()
        elif (
            not self._heard_speech
            and self._utterance_frames >= self._idle_restart_frames
            and self.segmenter.silence_ms >= IDLE_RESTART_MS
        ):
            # Only silence so far: start afresh instead of decoding an ever longer nothing.
            self.decoder.end_utt()
            self._utterance_open = False
        return []

    def _close_sentence(self) -> list[VendorEvent]:
        self.decoder.end_utt()
        self._utterance_open = False
        heard, self._heard_speech = self._heard_speech, False
        if not heard:
            # No speech by the voice-activity detector: whatever the decoder made of noise is not a transcript.
            return self.codec.sentence_final("", None, None)
        text = hypothesis_text(self.decoder)
        return self.codec.sentence_final(text, self.segmenter.speech_start_ms, self.segmenter.speech_end_ms)


# ---------------------------------------------------------------------------------------------------------
# Decoders


@dataclass(frozen=True)
class EngineConfig:
    grammar: Grammar | None = None
    max_streams: int = 2
    keep_loaded: int = 1
    end_silence_ms: int = 800


class LocalEngine:
    """Builds decoders and lends them to streams; thread-safe (workers acquire and release)."""

    def __init__(self, config: EngineConfig, name: str = "local") -> None:
        self.config = config
        self.name = name
        self._lock = threading.Condition()
        self._idle: list[Any] = []
        self._leased = 0
        # Counters, for logs and tests.
        self.loaded = 0
        self.load_seconds: list[float] = []

    @property
    def leased(self) -> int:
        with self._lock:
            return self._leased

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def new_decoder(self) -> Any:
        """A decoder for this engine's grammar, or for open dictation with the bundled language model."""
        ps = import_pocketsphinx()
        paths = model_paths()
        grammar = self.config.grammar
        common: dict[str, Any] = {
            "hmm": str(paths.acoustic),
            "samprate": RATE,
            "loglevel": "FATAL",
        }
        started = time.monotonic()
        if grammar is None:
            # The second ("flat") pass at the end of each sentence barely changes the result here and would
            # hold the GIL for a long time (about 4 % of the sentence's duration on x86) in one C call.
            decoder = ps.Decoder(
                lm=str(paths.language_model), dict=str(paths.dictionary), fwdflat=False, bestpath=True, **common
            )
        else:
            # Only the grammar's words: loads in milliseconds instead of reading the whole dictionary. The
            # lattice "best path" would pick partial sentences over complete ones, so it is off.
            decoder = ps.Decoder(lm=None, dict=None, bestpath=False, toprule=grammar.top_rule, **common)
            for entry, phones in grammar.pronunciations:
                decoder.add_word(entry, phones, False)
            decoder.add_jsgf_string("grammar", grammar.jsgf)
            decoder.activate_search("grammar")
        elapsed = time.monotonic() - started
        with self._lock:
            self.loaded += 1
            self.load_seconds.append(elapsed)
        _LOGGER.info(
            "%s: loaded a decoder (%s) in %.0f ms",
            self.name,
            grammar.description if grammar else "open dictation",
            elapsed * 1000,
        )
        return decoder

    def new_vad(self) -> Any:
        ps = import_pocketsphinx()
        return ps.Vad(ps.Vad.LOOSE, RATE, FRAME_MS / 1000)

    def acquire(self, stop: threading.Event) -> Any | None:
        """A decoder (loaded now if none is idle); waits while ``max_streams`` are lent; None once ``stop`` is set."""
        with self._lock:
            while True:
                if stop.is_set():
                    return None
                if self._idle:
                    self._leased += 1
                    return self._idle.pop()
                if self._leased < self.config.max_streams:
                    self._leased += 1
                    break
                self._lock.wait(_POLL_SECONDS)
        try:
            return self.new_decoder()
        except BaseException:
            self.release(None)
            raise

    def release(self, decoder: Any | None) -> None:
        """Give a decoder back (between utterances), or None for one that is broken or not wanted."""
        with self._lock:
            self._leased -= 1
            if decoder is not None and len(self._idle) < self.config.keep_loaded:
                self._idle.append(decoder)
            self._lock.notify()

    def preload(self) -> None:
        """Load one decoder now and keep it idle (blocking; call it from a thread)."""
        decoder = self.acquire(threading.Event())
        self.release(decoder)

    def unload(self) -> None:
        """Forget the idle decoders (their memory goes when the last reference does)."""
        with self._lock:
            self._idle.clear()


# ---------------------------------------------------------------------------------------------------------
# The stream


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_END = _Marker("end")
_STOP = _Marker("stop")


class LocalStream(BaseStream):
    """A recognition stream decoded on this machine by a worker thread."""

    codec: LocalCodec

    def __init__(
        self,
        adapter: VendorAdapter,
        engine: LocalEngine,
        options: StreamOptions,
        policy: ResiliencePolicy = DEFAULT_POLICY,
    ) -> None:
        super().__init__(adapter, options, policy)
        self.engine = engine
        self._inbox: queue.Queue[bytes | _Marker] = queue.Queue(MAX_QUEUED_CHUNKS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._space = asyncio.Event()
        self._space_wanted = False
        self._connect_error: VendorError | None = None

    def fail_on_connect(self, error: VendorError) -> None:
        """Make ``connect()`` fail with ``error`` (the adapter knows the engine cannot run)."""
        self._connect_error = error

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    async def connect(self) -> None:
        """Start the worker and wait until it holds a decoder; raises ``VendorFailure``."""
        if self._thread is not None:
            raise RuntimeError("connect() called twice")
        if self._connect_error is not None:
            self._closed.set()
            raise VendorFailure(self._connect_error)
        started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started = loop.create_future()
        self._finished = loop.create_future()
        name = f"asr-daemon local {self.options.session_id or hex(id(self))}"
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        timeout = self.adapter.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._started)
        except TimeoutError:
            await self.aclose()
            busy = self.engine.leased >= self.engine.config.max_streams
            why = (
                f"all {self.engine.config.max_streams} local decoders are busy (vendors.local.max_streams)"
                if busy
                else "loading the local decoder took too long"
            )
            raise VendorFailure(VendorError(f"{why}; gave up after {timeout:g} s")) from None
        except BaseException:
            await self.aclose()
            raise
        self.connect_seconds = time.monotonic() - started_at
        self.codec.ready = True
        self._ready.set()

    async def send_audio(self, pcm: bytes) -> None:
        """Queue audio for the worker; waits (without blocking the loop) while its queue is full."""
        if pcm:
            await self._put(pcm)

    async def end(self) -> None:
        self.codec.end()
        await self._put(_END)
        self.end_sent.set()

    async def _put(self, item: bytes | _Marker) -> None:
        """Hand an item to the worker once its queue has room (dropped if the stream stopped meanwhile)."""
        while not self.closed and not self._stop.is_set():
            self._space.clear()
            self._space_wanted = True
            try:
                self._inbox.put_nowait(item)
            except queue.Full:
                await self._space.wait()
                continue
            self._space_wanted = False
            return

    async def aclose(self) -> None:
        """Stop the worker (mid-sentence too) and wait until its thread has ended."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(_STOP)
        self._space.set()
        thread = self._thread
        if self._finished is not None and thread is not None and thread.is_alive():
            # Bounded by one decoder call (or one decoder load): the worker looks at the stop flag in between.
            await asyncio.shield(self._finished)
            # The worker's last act was to schedule ``_worker_ended``: it is returning, so this is immediate.
            thread.join(1.0)
        self._closed.set()

    # -- the worker thread ---------------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _resolve(self, future: asyncio.Future[None] | None, error: BaseException | None = None) -> None:
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _deliver(self, events: Iterable[VendorEvent]) -> None:
        self._emit(events)

    def _wake_sender(self) -> None:
        self._space.set()

    def _worker_ended(self) -> None:
        self._closed.set()
        self._space.set()
        self._resolve(self._finished)

    def _next_item(self) -> bytes | _Marker:
        while True:
            try:
                item = self._inbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set() or self._loop is None or self._loop.is_closed():
                    return _STOP
                continue
            if self._space_wanted:
                self._space_wanted = False
                self._post(self._wake_sender)
            return item

    def _work(self) -> None:
        decoder: Any | None = None
        recogniser: Recogniser | None = None
        reusable = False
        try:
            try:
                decoder = self.engine.acquire(self._stop)
            except EngineUnavailable as exc:
                self._post(self._resolve, self._started, VendorFailure(VendorError(str(exc), fatal=True)))
                return
            except Exception as exc:
                _LOGGER.exception("%s: cannot load a decoder", self.adapter.name)
                failure = VendorFailure(VendorError(f"cannot load the local decoder: {exc}", fatal=True))
                self._post(self._resolve, self._started, failure)
                return
            if decoder is None:  # stopped while waiting for a decoder
                return
            recogniser = Recogniser(decoder, self.engine.new_vad(), self.codec, self.engine.config.end_silence_ms)
            self._post(self._resolve, self._started)
            while True:
                item = self._next_item()
                if item is _STOP or self._stop.is_set():
                    break
                if item is _END:
                    events = recogniser.finish()
                    self._post(self._deliver, events)
                    break
                assert isinstance(item, bytes)
                events = recogniser.feed(item)
                if events:
                    self._post(self._deliver, events)
            recogniser.abort()
            reusable = True
        except Exception as exc:
            _LOGGER.exception("%s: decoding failed", self.adapter.name)
            self._post(self._deliver, self.codec.failure(f"the local decoder failed: {exc}"))
        finally:
            if decoder is not None:
                self.engine.release(decoder if reusable else None)
            self._post(self._worker_ended)
