"""The local microphone: PyAudio capture, voice activity detection, one vendor session per utterance.

``Capture`` owns one PortAudio input stream and the thread that reads it: PortAudio is opened, read and
closed on that thread only, and ``Capture.close()`` waits for the thread to end (within one read on a working
device; a device stuck in a read is given ``THREAD_JOIN_SECONDS``, then logged). Chunks reach the
event loop through a bounded hand-off; when the loop falls behind, the reading thread waits (a real device
then overruns in ALSA, as it would for any slow reader; a file-backed test device is simply read at the
pace the daemon takes it).

``MicSource`` opens the device (``mic.device``: a name substring or an index), normalises whatever rate and
channels it gives to 16 kHz mono, cuts the audio into utterances with ``VadSegmenter`` and streams each one
to the vendor (``mic.vendor``, or the one ``mic.language`` routes to) while it is spoken; with the vendor's
``prewarm``, a ready connection is held between utterances. Transcripts, partials, errors and the device's
state go out as events with the source ``mic:<device>``. A device that cannot be opened or disappears (USB
unplugged) is retried with exponential backoff and reported; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..audio.format import PCM16K, AudioFormat
from ..audio.normalise import AudioNormaliser
from ..audio.vad import (
    SpeechDetector,
    UtteranceAudio,
    UtteranceEnded,
    UtteranceStarted,
    VadSegmenter,
    VadSettings,
    webrtc_vad,
)
from ..budget import AudioBudget, BudgetExhausted
from ..events import AsrEvent, EventBus, EventKind
from ..install_hints import MIC_INSTALL_HINT
from ..resilience.backoff import Backoff
from ..routing import Router
from ..session import SessionLimits
from ..settings import DEFAULT_DRAIN_TIMEOUT, MicSettings
from ..utterance import Observer, Utterance, UtteranceServices, finish_in_time
from ..vendors.base import VendorAdapter
from ..vendors.prewarm import StreamPool

if TYPE_CHECKING:
    from ..audio.endpoint import EndpointSettings

_LOGGER = logging.getLogger(__name__)

# Rates tried, in order, when neither mic.rate nor 16 kHz is available; the device's default comes second.
_RATES = (16000, 48000, 44100, 32000, 22050, 24000, 8000, 96000)
# Chunks that may wait between the reading thread and the event loop.
MAX_QUEUED_CHUNKS = 64
# How long close() waits for the reading thread (a read returns within one chunk on a working device).
THREAD_JOIN_SECONDS = 5.0
# While the audio budget stays spent, speech the microphone hears is logged as refused at most this often.
BUDGET_LOG_INTERVAL = 600.0


class DeviceUnavailable(Exception):
    """The input device cannot be opened, or stopped delivering audio."""


@dataclass(frozen=True, slots=True)
class InputDevice:
    index: int
    name: str
    max_channels: int
    default_rate: int
    rates: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CaptureFormat:
    device: InputDevice
    rate: int
    channels: int

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat(self.rate, 2, self.channels)


def load_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise DeviceUnavailable(f"PyAudio is not installed: {MIC_INSTALL_HINT}") from exc
    return pyaudio


def _device(info: dict[str, Any]) -> InputDevice:
    return InputDevice(
        index=int(info["index"]),
        name=str(info["name"]),
        max_channels=int(info["maxInputChannels"]),
        default_rate=int(info["defaultSampleRate"]),
    )


def _supported(pa: Any, pyaudio: Any, device: InputDevice, rate: int, channels: int) -> bool:
    try:
        return bool(
            pa.is_format_supported(
                rate, input_device=device.index, input_channels=channels, input_format=pyaudio.paInt16
            )
        )
    except (ValueError, OSError):
        return False


def input_devices(pa: Any) -> list[InputDevice]:
    """Every device that can record, with the common rates it accepts (mono, or its fewest channels)."""
    pyaudio = load_pyaudio()
    devices: list[InputDevice] = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        if int(info.get("maxInputChannels", 0)) <= 0:
            continue
        device = _device(info)
        channels = 1 if device.max_channels >= 1 else device.max_channels
        rates = tuple(
            rate for rate in sorted({*_RATES, device.default_rate}) if _supported(pa, pyaudio, device, rate, channels)
        )
        devices.append(InputDevice(device.index, device.name, device.max_channels, device.default_rate, rates))
    return devices


def find_device(pa: Any, spec: str | None) -> InputDevice:
    """The input device ``spec`` names: an index, an exact name, or a name substring (case-insensitive)."""
    if spec is None or spec.strip() == "":
        try:
            return _device(pa.get_default_input_device_info())
        except (OSError, ValueError):
            raise DeviceUnavailable("no default input device") from None
    spec = spec.strip()
    candidates = [
        _device(info)
        for info in (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
        if int(info.get("maxInputChannels", 0)) > 0
    ]
    if spec.isdigit():
        for device in candidates:
            if device.index == int(spec):
                return device
        raise DeviceUnavailable(f"no input device with index {spec}")
    for device in candidates:
        if device.name == spec:
            return device
    for device in candidates:
        if spec.lower() in device.name.lower():
            return device
    names = ", ".join(repr(d.name) for d in candidates) or "none"
    raise DeviceUnavailable(f"no input device matches {spec!r} (inputs: {names})")


def choose_format(pa: Any, device: InputDevice, rate: int | None, channels: int | None) -> CaptureFormat:
    """The capture format: the configured one, else 16 kHz mono if offered, else what the device offers."""
    pyaudio = load_pyaudio()
    rates = [rate] if rate else list(dict.fromkeys([16000, device.default_rate, *_RATES]))
    channel_options = [channels] if channels else list(dict.fromkeys([1, 2, device.max_channels]))
    for wanted_rate in rates:
        for wanted_channels in channel_options:
            if wanted_channels <= device.max_channels and _supported(pa, pyaudio, device, wanted_rate, wanted_channels):
                return CaptureFormat(device, wanted_rate, wanted_channels)
    raise DeviceUnavailable(
        f"input device {device.name!r} accepts none of rate {rates} Hz with {channel_options} channel(s), 16-bit"
    )


_END = object()


class Capture:
    """One open input stream, read on a thread of its own that never outlives ``close()``."""

    def __init__(self, settings: MicSettings) -> None:
        self.settings = settings
        self.format: CaptureFormat | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._slots = threading.Semaphore(MAX_QUEUED_CHUNKS)
        self._stop = threading.Event()
        self._opened: asyncio.Future[CaptureFormat] = self._loop.create_future()
        self._thread: threading.Thread | None = None
        self.chunks = 0

    async def open(self) -> CaptureFormat:
        """Start the reading thread and wait until the device is open; raises ``DeviceUnavailable``."""
        self._thread = threading.Thread(target=self._main, name="mic capture", daemon=True)
        self._thread.start()
        self.format = await self._opened
        return self.format

    async def read(self) -> bytes:
        """The next chunk of audio; raises ``DeviceUnavailable`` when the device failed."""
        item = await self._queue.get()
        if isinstance(item, bytes):
            self._slots.release()
            return item
        if isinstance(item, BaseException):
            raise DeviceUnavailable(f"the input device failed: {_describe(item)}") from item
        raise DeviceUnavailable("the input device stopped delivering audio")

    async def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        # Let a thread waiting for room in the hand-off see the stop flag.
        self._slots.release()
        await asyncio.to_thread(thread.join, THREAD_JOIN_SECONDS)
        if thread.is_alive():
            _LOGGER.error("microphone: the capture thread did not stop within %g s", THREAD_JOIN_SECONDS)

    async def __aenter__(self) -> Capture:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the reading thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        pa: Any = None
        stream: Any = None
        opened = False
        try:
            pyaudio = load_pyaudio()
            pa = pyaudio.PyAudio()
            device = find_device(pa, self.settings.device)
            fmt = choose_format(pa, device, self.settings.rate, self.settings.channels)
            frames = max(1, fmt.rate * self.settings.chunk_ms // 1000)
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=fmt.channels,
                rate=fmt.rate,
                input=True,
                input_device_index=device.index,
                frames_per_buffer=frames,
            )
            opened = True
            self._loop.call_soon_threadsafe(_resolve, self._opened, fmt)
            while not self._stop.is_set():
                data = stream.read(frames, exception_on_overflow=False)
                if not self._hand_off(data):
                    break
        except BaseException as exc:
            if opened:
                self._hand_off(exc)
            else:
                error = exc if isinstance(exc, DeviceUnavailable) else DeviceUnavailable(_describe(exc))
                self._loop.call_soon_threadsafe(_fail, self._opened, error)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.stop_stream()
                with contextlib.suppress(Exception):
                    stream.close()
            if pa is not None:
                with contextlib.suppress(Exception):
                    pa.terminate()
            if opened:
                self._hand_off(_END, wait=False)

    def _hand_off(self, item: object, *, wait: bool = True) -> bool:
        """Queue ``item`` for the loop; False when stopping (or the loop is gone)."""
        if wait:
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return False
            if self._stop.is_set():
                return False
        if isinstance(item, bytes):
            self.chunks += 1
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True


def _resolve(future: asyncio.Future[CaptureFormat], value: CaptureFormat) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[CaptureFormat], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------------


class MicSource:
    """Listens on the configured microphone for as long as it is entered (``async with``)."""

    def __init__(
        self,
        settings: MicSettings,
        router: Router,
        limits: SessionLimits,
        bus: EventBus,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        detector_factory: Any = webrtc_vad,
        pool: StreamPool | None = None,
        observe: Observer | None = None,
        fallback: VendorAdapter | None = None,
        budget: AudioBudget | None = None,
        endpointing: EndpointSettings | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.limits = limits
        self.bus = bus
        self.drain_timeout = drain_timeout
        self.source = f"mic:{settings.device or 'default'}"
        self._detector_factory = detector_factory
        self._task: asyncio.Task[None] | None = None
        self._current: Utterance | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self.state = "starting"
        # With ``vendors.<name>.prewarm``, a connection waits ready for the next utterance (kept alive between):
        # the daemon's pool for that vendor when given, else one of our own.
        self.pool: StreamPool | None = pool
        self._own_pool = False
        self.fallback = fallback
        self.budget = budget
        self._services = UtteranceServices(
            router, limits, bus, observe=observe, fallback=fallback, budget=budget, endpointing=endpointing
        )
        # When a spent budget was last logged (monotonic): once per BUDGET_LOG_INTERVAL while it stays spent.
        self._budget_logged: float | None = None
        self.format: CaptureFormat | None = None
        self.utterances = 0
        self.failures = 0

    # -- lifetime ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> MicSource:
        adapter = self.adapter()
        if adapter is not None and adapter.settings.prewarm and self.pool is None:
            self.pool = StreamPool(adapter, self.limits.policy)
            self._own_pool = True
            await self.pool.__aenter__()
        self._task = asyncio.create_task(self._run(), name="microphone")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; the utterance being spoken is finished, in-flight ones get ``drain_timeout``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end_utterance("shutdown")
        if self._finishing:
            _LOGGER.info(
                "microphone: waiting up to %g s for %d transcript(s)", self.drain_timeout, len(self._finishing)
            )
        await finish_in_time(self._finishing, self.drain_timeout)
        pool, self.pool = self.pool, None
        if pool is not None and self._own_pool:
            await pool.__aexit__(None, None, None)

    # -- the device --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.settings.retry_min_delay, self.settings.retry_max_delay)
        while True:
            capture = Capture(self.settings)
            listened_since: float | None = None
            try:
                async with capture:
                    fmt = await capture.open()
                    self.format = fmt
                    listened_since = time.monotonic()
                    _LOGGER.info(
                        "microphone: listening on %r (index %d), %d Hz, %d channel(s)",
                        fmt.device.name,
                        fmt.device.index,
                        fmt.rate,
                        fmt.channels,
                    )
                    self._set_state("listening", f"{fmt.device.name}, {fmt.rate} Hz, {fmt.channels} ch")
                    await self._listen(capture, fmt)
            except Exception as exc:
                if not isinstance(exc, DeviceUnavailable):
                    _LOGGER.exception("microphone: capture failed")
                self.failures += 1
                if listened_since is not None and time.monotonic() - listened_since > 60:
                    backoff.reset()
                delay = backoff.next_delay()
                self._end_utterance("device lost")
                message = f"{exc}; retrying in {delay:.1f} s"
                if self.state != "unavailable":
                    _LOGGER.warning("microphone %s: %s", self.settings.device or "default", message)
                else:
                    _LOGGER.debug("microphone %s: %s", self.settings.device or "default", message)
                self._set_state("unavailable", str(exc))
                await asyncio.sleep(delay)

    async def _listen(self, capture: Capture, fmt: CaptureFormat) -> None:
        normaliser = AudioNormaliser(PCM16K)
        segmenter = self._segmenter()
        source_format = fmt.audio_format
        while True:
            data = await capture.read()
            # Let the rest of the daemon run between chunks, however fast the device delivers them.
            await asyncio.sleep(0)
            pcm = normaliser.push(data, source_format)
            if not pcm:
                continue
            for segment in segmenter.process(pcm):
                if isinstance(segment, UtteranceStarted):
                    self._begin_utterance(segment)
                elif isinstance(segment, UtteranceAudio):
                    self._feed(segment.audio)
                elif isinstance(segment, UtteranceEnded):
                    self._end_utterance(segment.reason)
            current = self._current
            if current is not None and current.speech_ended:
                # Endpointing heard the end first: the next speech starts a new utterance (and a new segmenter).
                self._end_utterance("end of speech")
                segmenter = self._segmenter()

    def _segmenter(self) -> VadSegmenter:
        return VadSegmenter(
            VadSettings(
                threshold=self.settings.vad_threshold,
                speech_seconds=self.settings.speech_seconds,
                silence_seconds=self.settings.silence_seconds,
                pre_roll_seconds=self.settings.pre_roll_seconds,
                max_seconds=max(1.0, self.limits.max_audio_seconds - 0.5),
                always_stream=self.settings.always_stream,
            ),
            self._detector(),
        )

    def _detector(self) -> SpeechDetector:
        detector: SpeechDetector = self._detector_factory()
        return detector

    def adapter(self) -> VendorAdapter | None:
        if self.settings.vendor is not None:
            return self.router.adapters.get(self.settings.vendor)
        return self.router.route(self.settings.language)

    def _set_state(self, state: str, message: str) -> None:
        if state == self.state:
            return
        self.state = state
        self.bus.publish(AsrEvent(EventKind.STATE, self.source, state=state, message=message))

    # -- utterances --------------------------------------------------------------------------------------

    def _begin_utterance(self, segment: UtteranceStarted) -> None:
        self._end_utterance("restart")
        utterance = Utterance(
            self._services,
            self.source,
            language=self.settings.language,
            vendor=self.settings.vendor,
            started=time.time() - len(segment.audio) / PCM16K.bytes_per_second,
            pool=self.pool,
            # Endpointing ends an utterance at its end of speech, or the segmenter at its silence, whichever
            # comes first. Streaming everything, the segmenter alone cuts (stretches without speech included).
            ends_itself=not self.settings.always_stream,
            # Noise the segmenter took for speech is not worth an event.
            publish_empty=False,
            log_refusals=False,
        )
        if not utterance.open():
            error = utterance.answer.result().error
            if error is not None and error.code == BudgetExhausted.code:
                self._budget_spent(error.message)
            return
        self._budget_logged = None
        self._current = utterance
        self.utterances += 1
        utterance.feed(segment.audio, PCM16K)

    def _budget_spent(self, message: str) -> None:
        now = time.monotonic()
        if self._budget_logged is None or now - self._budget_logged >= BUDGET_LOG_INTERVAL:
            self._budget_logged = now
            _LOGGER.warning("%s: speech not transcribed: %s", self.source, message)

    def _feed(self, pcm: bytes) -> None:
        utterance = self._current
        if utterance is not None and pcm:
            utterance.feed(pcm, PCM16K)

    def _end_utterance(self, reason: str) -> None:
        utterance, self._current = self._current, None
        if utterance is None:
            return
        task = asyncio.create_task(self._finish(utterance, reason), name=f"mic final {utterance.id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, utterance: Utterance, reason: str) -> None:
        try:
            answer = await utterance.finish()
        finally:
            await utterance.aclose()
        if answer.transcript is not None and not answer.transcript.text:
            _LOGGER.debug("session %s: no speech recognised (%s)", utterance.id, reason)
