"""A Wyoming wake-word service for tests: pymicro-wakeword's ``okay_nabu`` model (shipped in its wheel).

Runs under the test satellite's environment (``tests/support/wyoming_satellite.py``), like a real
openWakeWord or microWakeWord server: ``detect`` (or ``audio-start``) arms it, audio chunks are searched, and
the first match is answered with ``detection`` (name ``okay_nabu``); then it waits to be armed again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
from wyoming.audio import AudioChunk, AudioStart
from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.wake import Detect, Detection

_LOGGER = logging.getLogger("wake_service")
NAME = "okay_nabu"


class WakeHandler(AsyncEventHandler):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.detector = MicroWakeWord.from_builtin(Model.OKAY_NABU)
        self.features = MicroWakeWordFeatures()
        self.armed = True
        self.audio_seconds = 0.0

    def _arm(self) -> None:
        self.detector.reset()
        self.features.reset()
        self.armed = True

    async def handle_event(self, event: Event) -> bool:
        if Detect.is_type(event.type) or AudioStart.is_type(event.type):
            self._arm()
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            self.audio_seconds += len(chunk.audio) / (chunk.rate * chunk.width * chunk.channels)
            if not self.armed:
                return True
            for features in self.features.process_streaming(chunk.audio):
                if self.detector.process_streaming(features):
                    self.armed = False
                    _LOGGER.info("detected %s at %.2f s of audio", NAME, self.audio_seconds)
                    await self.write_event(Detection(name=NAME, timestamp=chunk.timestamp).event())
                    break
        return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = AsyncServer.from_uri(f"tcp://127.0.0.1:{args.port}")
    await server.run(partial(WakeHandler))


if __name__ == "__main__":
    asyncio.run(main())
