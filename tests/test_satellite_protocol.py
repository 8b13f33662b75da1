"""The pipeline runner's side of the satellite protocol, event by event, as each satellite version behaves."""

from __future__ import annotations

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Info, Satellite
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.vad import VoiceStarted, VoiceStopped
from wyoming.wake import Detect, Detection

from asr_daemon.audio.format import AudioFormat
from asr_daemon.sources.satellite_protocol import (
    NO_WAKE_SERVICE,
    NOT_A_SATELLITE,
    AbortCommand,
    Action,
    EndCommand,
    FeedCommand,
    Phase,
    Refuse,
    SatelliteProtocol,
    Send,
    StartCommand,
    ToWake,
)

CHUNK = AudioChunk(rate=16000, width=2, channels=1, audio=b"\1\0" * 1024).event()


def info(version: str | None = None) -> Event:
    satellite = Satellite(
        name="kitchen", attribution=Attribution(name="", url=""), installed=True, description="kitchen", version=version
    )
    return Info(satellite=satellite).event()


def sent(actions: list[Action]) -> list[str]:
    return [a.event.type for a in actions if isinstance(a, Send)]


def to_wake(actions: list[Action]) -> list[str]:
    return [a.event.type for a in actions if isinstance(a, ToWake)]


def connected(*, wake_service: bool = False, version: str | None = None) -> SatelliteProtocol:
    protocol = SatelliteProtocol(wake_service=wake_service, wake_words=["okay_nabu"])
    assert sent(protocol.start()) == ["describe"]
    actions = protocol.receive(info(version))
    assert sent(actions) == [RunSatellite().event().type, "ping"]
    assert protocol.phase is Phase.WAITING
    return protocol


def test_a_service_without_a_satellite_in_its_info_is_refused() -> None:
    protocol = SatelliteProtocol(wake_service=False)
    protocol.start()
    actions = protocol.receive(Info().event())
    assert [type(a) for a in actions] == [Refuse]
    assert isinstance(actions[0], Refuse) and actions[0].code == NOT_A_SATELLITE


def test_local_wake_command_streams_then_answers_and_returns_to_waiting() -> None:
    protocol = connected()
    assert protocol.identity is not None and protocol.identity.name == "kitchen"
    assert protocol.receive(CHUNK) == []  # audio before a pipeline goes nowhere
    run = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.HANDLE).event()
    assert protocol.receive(run) == [StartCommand(None)]
    fed = protocol.receive(CHUNK)
    assert fed == [FeedCommand(b"\1\0" * 1024, AudioFormat(16000, 2, 1))]
    assert sent(protocol.speech_started()) == [VoiceStarted().event().type]
    ended = protocol.speech_ended()
    assert sent(ended) == [VoiceStopped().event().type] and EndCommand("end of speech") in ended
    # Audio after the end of speech is dropped, never fed.
    assert protocol.receive(CHUNK) == []
    answer = protocol.answered("turn on the light")
    assert [a.event for a in answer if isinstance(a, Send)] == [Transcript(text="turn on the light").event()]
    assert protocol.phase is Phase.WAITING


def test_an_error_also_sends_run_satellite_so_a_1_0_satellite_stops_streaming() -> None:
    protocol = connected()
    protocol.receive(RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS).event())
    protocol.speech_ended()
    answer = protocol.answered(None, ("vendor-error", "the vendor failed"))
    assert sent(answer) == [Error(text="").event().type, RunSatellite().event().type]
    error = next(a.event for a in answer if isinstance(a, Send))
    assert Error.from_event(error).code == "vendor-error"
    assert protocol.phase is Phase.WAITING


def test_the_satellite_ending_its_audio_ends_the_command() -> None:
    protocol = connected()
    protocol.receive(RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.HANDLE).event())
    assert protocol.receive(AudioStop().event()) == [EndCommand("the satellite stopped its audio")]
    assert protocol.phase is Phase.ANSWERING


def test_pings_are_answered_and_a_pong_marks_a_satellite_that_pings() -> None:
    protocol = connected(version="1.4.1")
    assert [a.event for a in protocol.receive(Ping(text="x").event()) if isinstance(a, Send)] == [
        Pong(text="x").event()
    ]
    assert not protocol.answers_pings
    protocol.receive(Pong().event())
    assert protocol.answers_pings
    assert protocol.identity is not None and protocol.identity.version == "1.4.1"


def test_remote_wake_without_a_wake_service_is_refused_not_streamed() -> None:
    protocol = connected(wake_service=False)
    actions = protocol.receive(RunPipeline(start_stage=PipelineStage.WAKE, end_stage=PipelineStage.HANDLE).event())
    assert [type(a) for a in actions] == [Refuse]
    assert isinstance(actions[0], Refuse) and actions[0].code == NO_WAKE_SERVICE


def test_remote_wake_audio_goes_to_the_wake_service_until_detection_and_is_rearmed_after() -> None:
    protocol = connected(wake_service=True)
    armed = protocol.receive(RunPipeline(start_stage=PipelineStage.WAKE, end_stage=PipelineStage.HANDLE).event())
    assert to_wake(armed) == [Detect().event().type, AudioStart(16000, 2, 1).event().type]
    detect = next(a.event for a in armed if isinstance(a, ToWake))
    assert Detect.from_event(detect).names == ["okay_nabu"]
    assert protocol.receive(CHUNK) == [ToWake(CHUNK)]
    detected = protocol.wake_received(Detection(name="okay_nabu").event())
    assert to_wake(detected) == [AudioStop().event().type]
    assert sent(detected) == [Detection().event().type]
    assert StartCommand("okay_nabu") in detected
    assert isinstance(protocol.receive(CHUNK)[0], FeedCommand)
    protocol.speech_ended()
    # 1.0.0 sends run-pipeline once: after the answer the daemon arms wake detection again by itself.
    answer = protocol.answered("play some music")
    assert sent(answer) == [Transcript(text="").event().type]
    assert to_wake(answer) == [Detect().event().type, AudioStart(16000, 2, 1).event().type]
    assert protocol.phase is Phase.WAKE
    assert protocol.receive(CHUNK) == [ToWake(CHUNK)]


def test_a_reconnected_wake_service_is_armed_again_only_while_listening() -> None:
    protocol = connected(wake_service=True)
    assert protocol.wake_connected() == []
    protocol.receive(RunPipeline(start_stage=PipelineStage.WAKE, end_stage=PipelineStage.TTS).event())
    assert to_wake(protocol.wake_connected()) == [Detect().event().type, AudioStart(16000, 2, 1).event().type]


def test_a_lost_connection_or_a_new_pipeline_aborts_the_command_in_progress() -> None:
    protocol = connected()
    run = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.HANDLE).event()
    protocol.receive(run)
    again = protocol.receive(run)
    assert isinstance(again[0], AbortCommand) and again[1] == StartCommand(None)
    lost = protocol.lost()
    assert [type(a) for a in lost] == [AbortCommand]
    assert protocol.phase is Phase.DESCRIBING
    assert protocol.lost() == []
