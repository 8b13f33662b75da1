"""The pipeline runner's side of the Wyoming satellite protocol, for one satellite, without any I/O.

A ``wyoming-satellite`` device is a Wyoming *server* that waits for a pipeline runner (usually Home
Assistant) to connect. ``SatelliteProtocol`` is that runner's state machine: it takes what the satellite, the
wake-word service and the spoken command report, and answers with ``Action``s for the connection code
(``sources/satellite.py``) to carry out. It never touches a socket or a clock, so every version's behaviour is
tested event by event.

The conversation, as the satellite expects it::

    runner                         satellite
    describe ───────────────────>
             <─────────────────── info (with a ``satellite``)
    run-satellite, ping ────────>
             <─────────────────── run-pipeline (start_stage asr: wake word heard on the satellite;
                                                start_stage wake: the runner must find the wake word)
             <─────────────────── audio-chunk × N
    [wake: audio to the wake-word service until its detection; detection ──> satellite]
    voice-started ──────────────>   (the command's speech began)
    voice-stopped ──────────────>   (it ended: later audio is dropped)
    transcript (or error) ──────>   (the satellite goes back to waiting for its wake word)

Differences between versions handled here: 1.0.0 (the release on PyPI) has no ping and no
``pause-satellite``, keeps streaming after an ``error`` until it gets a ``transcript`` or ``run-satellite``,
and with remote wake sends ``run-pipeline`` once, so the runner re-arms wake detection after every command
itself. 1.1 and later answer a ``ping`` and then ping the runner, stop on ``error`` and on ``pause-satellite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.vad import VoiceStarted, VoiceStopped
from wyoming.wake import Detect, Detection

from ..audio.format import AudioFormat

# Error codes this runner sends to a satellite (and publishes on the bus).
NOT_A_SATELLITE = "not-a-satellite"
NO_WAKE_SERVICE = "no-wake-service"
UNSUPPORTED_STAGE = "unsupported-stage"


class Phase(StrEnum):
    DESCRIBING = "describing"  # describe sent, waiting for info
    WAITING = "waiting"  # the satellite listens for its own wake word
    WAKE = "wake"  # remote wake: its audio goes to the wake-word service
    COMMAND = "command"  # its audio is the command being spoken
    ANSWERING = "answering"  # the command is over; waiting for its transcript, audio dropped


@dataclass(frozen=True, slots=True)
class Send:
    """Write this event to the satellite."""

    event: Event


@dataclass(frozen=True, slots=True)
class ToWake:
    """Write this event to the wake-word service."""

    event: Event


@dataclass(frozen=True, slots=True)
class StartCommand:
    """A command begins: open an utterance for the satellite's audio."""

    wake_word: str | None


@dataclass(frozen=True, slots=True)
class FeedCommand:
    pcm: bytes
    fmt: AudioFormat


@dataclass(frozen=True, slots=True)
class EndCommand:
    """No more audio for the command (the satellite said so): finish the utterance."""

    reason: str


@dataclass(frozen=True, slots=True)
class AbortCommand:
    """The command cannot go on (the satellite is gone or started over): end it with this error."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """This satellite cannot be served as configured: say why and disconnect."""

    code: str
    message: str


Action = Send | ToWake | StartCommand | FeedCommand | EndCommand | AbortCommand | Refuse


@dataclass(frozen=True, slots=True)
class SatelliteIdentity:
    """What the satellite's ``info`` says about it."""

    name: str
    version: str | None
    area: str | None


class SatelliteProtocol:
    """One connection to one satellite; make a new one for every connection."""

    def __init__(self, *, wake_service: bool, wake_words: Sequence[str] = ()) -> None:
        self.wake_service = wake_service
        self.wake_words = list(wake_words)
        self.phase = Phase.DESCRIBING
        self.identity: SatelliteIdentity | None = None
        # The satellite sent ``run-pipeline`` with start_stage wake: re-arm after every command.
        self.remote_wake = False
        # It answered our ping (1.1 and later): it will ping us too.
        self.answers_pings = False
        self.commands = 0

    @property
    def in_command(self) -> bool:
        return self.phase in (Phase.COMMAND, Phase.ANSWERING)

    def start(self) -> list[Action]:
        return [Send(Describe().event())]

    # -- from the satellite ----------------------------------------------------------------------------

    def receive(self, event: Event) -> list[Action]:
        kind = event.type
        if AudioChunk.is_type(kind):
            return self._audio(event)
        if Ping.is_type(kind):
            return [Send(Pong(text=Ping.from_event(event).text).event())]
        if Pong.is_type(kind):
            self.answers_pings = True
            return []
        if self.phase is Phase.DESCRIBING:
            return self._described(event) if Info.is_type(kind) else []
        if RunPipeline.is_type(kind):
            return self._run_pipeline(event)
        if AudioStop.is_type(kind) and self.phase is Phase.COMMAND:
            self.phase = Phase.ANSWERING
            return [EndCommand("the satellite stopped its audio")]
        return []

    def _described(self, event: Event) -> list[Action]:
        satellite = (event.data or {}).get("satellite")
        if not isinstance(satellite, dict):
            return [Refuse(NOT_A_SATELLITE, "the service answers describe without a satellite: it is not one")]
        name, version, area = satellite.get("name"), satellite.get("version"), satellite.get("area")
        self.identity = SatelliteIdentity(
            str(name) if name else "", str(version) if version else None, str(area) if area else None
        )
        self.phase = Phase.WAITING
        return [Send(RunSatellite().event()), Send(Ping(text="asr-daemon").event())]

    def _run_pipeline(self, event: Event) -> list[Action]:
        data = event.data or {}
        start = data.get("start_stage")
        actions: list[Action] = []
        if self.in_command:
            # The satellite started over (a new wake word, or it restarted its pipeline): the old command is done.
            actions.append(AbortCommand("satellite-restarted", "the satellite started a new pipeline mid-command"))
        if start == PipelineStage.ASR.value:
            self.remote_wake = False
            return [*actions, *self._begin_command(None)]
        if start == PipelineStage.WAKE.value:
            self.remote_wake = True
            if not self.wake_service:
                return [
                    *actions,
                    Refuse(
                        NO_WAKE_SERVICE,
                        "the satellite wants its wake word found for it (it has no wake-word service of its own), "
                        "and satellites.wake_uri is not set: its audio is not streamed anywhere",
                    ),
                ]
            return [*actions, *self._arm_wake()]
        self.phase = Phase.WAITING
        message = f"pipelines starting at {start!r} are not run here (only wake and asr)"
        return [*actions, Send(Error(text=message, code=UNSUPPORTED_STAGE).event())]

    def _audio(self, event: Event) -> list[Action]:
        if self.phase is Phase.COMMAND:
            chunk = AudioChunk.from_event(event)
            return [FeedCommand(chunk.audio, AudioFormat(chunk.rate, chunk.width, chunk.channels))]
        if self.phase is Phase.WAKE:
            return [ToWake(event)]
        return []

    # -- from the wake-word service --------------------------------------------------------------------

    def wake_connected(self) -> list[Action]:
        """The wake-word service (re)connected: it needs to hear what to detect again."""
        return self._arm_wake() if self.phase is Phase.WAKE else []

    def wake_received(self, event: Event) -> list[Action]:
        if self.phase is not Phase.WAKE or not Detection.is_type(event.type):
            return []
        detection = Detection.from_event(event)
        return [
            ToWake(AudioStop().event()),
            Send(Detection(name=detection.name, timestamp=detection.timestamp).event()),
            *self._begin_command(detection.name),
        ]

    # -- from the spoken command -----------------------------------------------------------------------

    def speech_started(self) -> list[Action]:
        return [Send(VoiceStarted().event())] if self.phase is Phase.COMMAND else []

    def speech_ended(self) -> list[Action]:
        """End of speech (endpointing): the satellite hears it, and later audio is dropped."""
        if self.phase is not Phase.COMMAND:
            return []
        self.phase = Phase.ANSWERING
        return [Send(VoiceStopped().event()), EndCommand("end of speech")]

    def answered(self, text: str | None, error: tuple[str, str] | None = None) -> list[Action]:
        """The command's outcome: its transcript, or ``error`` as (code, message)."""
        if not self.in_command:
            return []
        if error is not None:
            code, message = error
            actions: list[Action] = [Send(Error(text=message, code=code).event())]
            if not self.remote_wake:
                # 1.0.0 keeps streaming after an error: run-satellite sends it back to its wake word.
                actions.append(Send(RunSatellite().event()))
        else:
            actions = [Send(Transcript(text=text or "").event())]
        if self.remote_wake:
            actions.extend(self._arm_wake())
        else:
            self.phase = Phase.WAITING
        return actions

    def lost(self) -> list[Action]:
        """The connection to the satellite is gone."""
        actions: list[Action] = []
        if self.in_command:
            actions.append(AbortCommand("satellite-lost", "the connection to the satellite was lost mid-command"))
        self.phase = Phase.DESCRIBING
        return actions

    # --------------------------------------------------------------------------------------------------

    def _begin_command(self, wake_word: str | None) -> list[Action]:
        self.phase = Phase.COMMAND
        self.commands += 1
        return [StartCommand(wake_word)]

    def _arm_wake(self) -> list[Action]:
        self.phase = Phase.WAKE
        return [ToWake(Detect(names=self.wake_words or None).event()), ToWake(AudioStart(16000, 2, 1).event())]
