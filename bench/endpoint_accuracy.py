"""End-of-speech detector figures: cost per frame and per chunk, accuracy on noisy speech, endpointing outcomes.

    python -m bench.endpoint_accuracy [--quick] [--json out.json]

Test speech is espeak-ng (several voices and speeds, commands with natural pauses) mixed with sox noise (white,
pink, brown and a fan-like hum: brown noise with 120/240 Hz tones) at several signal-to-noise ratios. The truth
comes from the clean speech: a 10 ms frame is speech when its energy is within 40 dB of the clip's loudest
frame. Each clip is 1 s of noise, the command, then 2 s of noise.

Detectors compared: webrtcvad at each aggressiveness (0-3), pymicro-vad (when installed) and a plain energy
detector (noise floor tracked, speech 9 dB above it). For each, per SNR: frame accuracy, and for each
``silence_seconds``: false ends (the utterance ended before its last word: cut at a natural pause, or noise
before the speech taken for speech), misses (never ended), and the delay from the true end of speech to the end
detected, p50/p95. The endpointing rule is ``Endpointer``'s (``speech_seconds`` of speech in a row, then
``silence_seconds`` of silence); the webrtcvad rows are checked against ``Endpointer`` itself.

Written up in docs/speech-detector.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asr_daemon.audio.endpoint import Endpointer, EndpointSettings
from asr_daemon.audio.format import PCM16K, AudioFormat
from tests.support.speech import RATE, speech

FRAME = 160  # samples in 10 ms at 16 kHz
LEAD_SECONDS, TAIL_SECONDS = 1.0, 2.0
TRUTH_RANGE_DB = 40.0

COMMANDS = (
    "turn on the kitchen light, and the hallway light",
    "set a timer for ten minutes",
    "what is the weather like tomorrow, in Boston",
    "turn off the lights in the living room, the bedroom, and the garage",
    "add milk, eggs, and bread to the shopping list",
    "play some jazz in the kitchen. then dim the lights",
)
VOICES = ("en-us", "en-gb-scotland", "en-us+f3")
SPEEDS = (130, 175)
# Commands said in two parts with a hesitation between them (espeak's own pauses at commas are 0.1-0.25 s).
HESITATIONS = (
    ("turn on the kitchen light", "and the hallway light"),
    ("set the thermostat", "to twenty one degrees"),
)
HESITATION_SECONDS = (0.3, 0.4, 0.5)
NOISES = ("white", "pink", "brown", "fan")
SNRS_DB = (20.0, 10.0, 5.0)
# Gain on speech and noise together: espeak's own level (speech about -19 dBFS RMS, a near microphone or one
# with automatic gain) and 15 dB quieter (about -34 dBFS, a far microphone without gain).
LEVELS_DB = (0.0, -15.0)
SILENCE_SECONDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)
SPEECH_SECONDS = 0.3
SOX_RAW = ["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-"]


# -- material --------------------------------------------------------------------------------------------------


def sox_noise(kind: str, seconds: float, seed: int) -> np.ndarray:
    synth = {"fan": ["brownnoise", "sine", "mix", "120", "sine", "mix", "240"]}.get(kind, [f"{kind}noise"])
    raw = subprocess.run(
        [*SOX_RAW, "synth", f"{seconds:.3f}", *synth, "vol", "0.5"],
        check=True,
        capture_output=True,
    ).stdout
    noise = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    # sox -R repeats itself: a per-clip offset into a longer run gives each clip its own noise.
    return np.roll(noise, seed * 977)


def frame_energy(samples: np.ndarray) -> np.ndarray:
    usable = len(samples) // FRAME * FRAME
    frames = samples[:usable].reshape(-1, FRAME)
    return np.asarray((frames**2).mean(axis=1))


@dataclass(frozen=True, slots=True)
class Clip:
    name: str
    clean: np.ndarray  # float64 samples, lead and tail silence included
    truth: np.ndarray  # bool per 10 ms frame
    speech_rms: float
    hesitation: float  # seconds of silence inside the command (0: espeak's own pauses only)

    @property
    def true_end(self) -> float:
        return float(np.flatnonzero(self.truth)[-1] + 1) * 0.01

    def pauses(self) -> list[float]:
        """Lengths (seconds) of the silent stretches inside the speech."""
        idx = np.flatnonzero(self.truth)
        gaps = np.diff(idx) - 1
        return [float(g) * 0.01 for g in gaps if g > 0]


def make_clip(name: str, spoken: np.ndarray, hesitation: float = 0.0) -> Clip:
    clean = np.concatenate([np.zeros(int(LEAD_SECONDS * RATE)), spoken, np.zeros(int(TAIL_SECONDS * RATE))])
    energy = frame_energy(clean)
    truth = energy > energy.max() * 10 ** (-TRUTH_RANGE_DB / 10)
    return Clip(name, clean, truth, float(np.sqrt(energy[truth].mean())), hesitation)


def spoken(text: str, voice: str, speed: int) -> np.ndarray:
    return np.frombuffer(speech(text, voice, speed), dtype="<i2").astype(np.float64)


def make_clips(quick: bool) -> list[Clip]:
    clips = []
    commands = COMMANDS[:3] if quick else COMMANDS
    voices = VOICES[:2] if quick else VOICES
    for voice in voices:
        for speed in SPEEDS:
            for command in commands:
                clips.append(make_clip(f"{voice}/{speed}/{command[:20]}", spoken(command, voice, speed)))
            for first, second in HESITATIONS:
                for pause in HESITATION_SECONDS:
                    gap = np.zeros(int(pause * RATE))
                    parts = [spoken(first, voice, speed), gap, spoken(second, voice, speed)]
                    clips.append(make_clip(f"{voice}/{speed}/{first[:12]} {pause}s", np.concatenate(parts), pause))
    return clips


def noisy(clip: Clip, kind: str, snr_db: float | None, seed: int, level_db: float = 0.0) -> bytes:
    samples = clip.clean
    if snr_db is not None:
        noise = sox_noise(kind, len(samples) / RATE + 0.1, seed)[: len(samples)]
        noise_rms = float(np.sqrt((noise**2).mean()))
        samples = samples + noise * (clip.speech_rms / noise_rms) * 10 ** (-snr_db / 20)
    samples = samples * 10 ** (level_db / 20)
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


# -- detectors: one bool per 10 ms frame ----------------------------------------------------------------------

Detector = Callable[[bytes], list[bool]]


def webrtc(mode: int) -> Detector:
    import webrtcvad

    def detect(pcm: bytes) -> list[bool]:
        vad = webrtcvad.Vad(mode)
        return [vad.is_speech(pcm[i : i + 2 * FRAME], RATE) for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME)]

    return detect


def micro(threshold: float = 0.5) -> Detector:
    from pymicro_vad import MicroVad

    def detect(pcm: bytes) -> list[bool]:
        vad = MicroVad()
        out = []
        probability = 0.0
        for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME):
            value = vad.process_10ms(pcm[i : i + 2 * FRAME])
            if value >= 0:  # negative while it warms up
                probability = value
            out.append(probability >= threshold)
        return out

    return detect


def energy_detector(margin_db: float = 9.0) -> Detector:
    """Speech when a frame is ``margin_db`` above a noise floor that follows the quietest recent frames."""

    def detect(pcm: bytes) -> list[bool]:
        energy = frame_energy(np.frombuffer(pcm, dtype="<i2").astype(np.float64)) + 1.0
        floor = energy[0]
        out = []
        margin = 10 ** (margin_db / 10)
        for value in energy:
            # Falls fast to quieter frames, rises slowly (about 3 dB a second) under speech.
            floor = value if value < floor else floor * 1.007
            out.append(bool(value > floor * margin))
        return out

    return detect


# -- the endpointing rule -------------------------------------------------------------------------------------


def ended_at(decisions: Sequence[bool], speech_seconds: float, silence_seconds: float) -> float | None:
    """Audio time at which ``Endpointer`` would first say ``ended`` (None: never)."""
    speech_needed = max(1, round(speech_seconds / 0.01))
    silence_needed = max(1, round(silence_seconds / 0.01))
    speech_run = silence_run = 0
    heard = False
    for index, speech_frame in enumerate(decisions):
        if speech_frame:
            silence_run = 0
            speech_run += 1
            heard = heard or speech_run >= speech_needed
        else:
            speech_run = 0
            silence_run += 1
            if heard and silence_run >= silence_needed:
                return (index + 1) * 0.01
    return None


def check_against_endpointer(pcm: bytes, decisions: Sequence[bool], mode: int, silence_seconds: float) -> None:
    endpointer = Endpointer(EndpointSettings(silence_seconds, SPEECH_SECONDS, aggressiveness=mode), PCM16K)
    found = None
    for offset in range(0, len(pcm), 320):
        endpointer.feed(pcm[offset : offset + 320])
        if endpointer.ended and found is None:
            found = round(endpointer.audio_seconds, 2)
    expected = ended_at(decisions, SPEECH_SECONDS, silence_seconds)
    assert found == (None if expected is None else round(expected, 2)), (found, expected)


# -- figures ----------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class Row:
    detector: str
    noise: str
    snr_db: float | None
    level_db: float
    clips: int
    frame_accuracy: float
    speech_recall: float
    false_speech: float
    # per silence_seconds: {"false_end": n, "missed": n, "delay_p50": s, "delay_p95": s}
    endpointing: dict[str, dict[str, float | int | None]]


def evaluate(detectors: dict[str, Detector], clips: list[Clip], quick: bool) -> list[Row]:
    conditions: list[tuple[str, float | None, float]] = []
    for level in LEVELS_DB[:1] if quick else LEVELS_DB:
        conditions.append(("clean", None, level))
        conditions += [(kind, snr, level) for kind in NOISES for snr in SNRS_DB]
    rows = []
    checked = False
    for kind, snr, level in conditions:
        audio = [noisy(clip, kind, snr, seed, level) for seed, clip in enumerate(clips)]
        for name, detect in detectors.items():
            if quick and name.startswith("pymicro") and snr not in (None, 10.0):
                continue
            correct = total = hits = speech_frames = false_alarms = silent_frames = 0
            ends: dict[float, list[tuple[float, float | None]]] = {s: [] for s in SILENCE_SECONDS}
            for clip, pcm in zip(clips, audio, strict=True):
                decisions = detect(pcm)
                truth = clip.truth[: len(decisions)]
                got = np.array(decisions, dtype=bool)
                correct += int((got == truth).sum())
                total += len(truth)
                hits += int((got & truth).sum())
                speech_frames += int(truth.sum())
                false_alarms += int((got & ~truth).sum())
                silent_frames += int((~truth).sum())
                for silence in SILENCE_SECONDS:
                    end = ended_at(decisions, SPEECH_SECONDS, silence)
                    ends[silence].append((clip.hesitation, None if end is None else end - clip.true_end))
                if name == "webrtcvad-2" and not checked:
                    check_against_endpointer(pcm, decisions, 2, 0.5)
                    checked = True
            endpointing: dict[str, dict[str, float | int | None]] = {}
            for silence, outcomes in ends.items():
                delays = [d for _, d in outcomes]
                good = [d for d in delays if d is not None and d >= 0]
                figures: dict[str, float | int | None] = {
                    "false_end": sum(1 for d in delays if d is not None and d < 0),
                    "missed": sum(1 for d in delays if d is None),
                    "delay_p50": percentile(good, 50),
                    "delay_p95": percentile(good, 95),
                }
                # Cuts split by the pause inside the command: espeak's own (0) or a hesitation.
                for pause in (0.0, *HESITATION_SECONDS):
                    figures[f"false_end_pause_{pause:g}"] = sum(
                        1 for h, d in outcomes if h == pause and d is not None and d < 0
                    )
                endpointing[f"{silence:g}"] = figures
            rows.append(
                Row(
                    name,
                    kind,
                    snr,
                    level,
                    len(clips),
                    correct / total,
                    hits / speech_frames,
                    false_alarms / silent_frames,
                    endpointing,
                )
            )
            print(summary_line(rows[-1]), flush=True)
    return rows


def noise_only(detectors: dict[str, Detector], clips: list[Clip], seconds: float = 8.0) -> dict[str, dict[str, int]]:
    """How many noise-only streams (each noise at each SNR's and each level's) a detector takes for speech."""
    out: dict[str, dict[str, int]] = {}
    speech_rms = float(np.mean([clip.speech_rms for clip in clips]))
    levels = [(snr, gain) for snr in SNRS_DB for gain in LEVELS_DB]
    for name, detect in detectors.items():
        heard = {}
        for kind in NOISES:
            count = 0
            for seed, (snr, gain) in enumerate(levels):
                noise = sox_noise(kind, seconds, seed)
                noise *= speech_rms / float(np.sqrt((noise**2).mean())) * 10 ** ((gain - snr) / 20)
                pcm = np.clip(np.round(noise), -32768, 32767).astype("<i2").tobytes()
                count += ended_at(detect(pcm) + [False] * 100, SPEECH_SECONDS, 0.01) is not None
            heard[kind] = count
        out[name] = heard
    return out


def condition(row: Row) -> str:
    snr = "clean" if row.snr_db is None else f"{row.noise} {row.snr_db:g} dB"
    return snr if row.level_db == 0 else f"{snr}, level {row.level_db:g} dB"


def markdown(rows: list[Row], silence: str = "0.5", shorter: str = "0.4") -> str:
    """The table docs/speech-detector.md carries."""
    head = [
        "| condition | detector | frame acc. | speech recall | noise taken for speech "
        f"| cuts, silence {shorter} s | cuts, silence {silence} s | no end (of {rows[0].clips}), {silence} s "
        f"| delay p50 / p95 (s), {silence} s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for row in rows:
        if row.detector not in ("webrtcvad-2", "webrtcvad-3", "pymicro-vad", "energy"):
            continue
        cuts = {
            key: "/".join(str(row.endpointing[key][f"false_end_pause_{p:g}"]) for p in (0.0, *HESITATION_SECONDS))
            for key in (shorter, silence)
        }
        figures = row.endpointing[silence]
        p50, p95 = figures["delay_p50"], figures["delay_p95"]
        delay = "–" if p50 is None or p95 is None else f"{p50:.2f} / {p95:.2f}"
        lines.append(
            f"| {condition(row)} | {row.detector} | {row.frame_accuracy:.3f} | {row.speech_recall:.3f} "
            f"| {row.false_speech:.3f} | {cuts[shorter]} | {cuts[silence]} | {figures['missed']} | {delay} |"
        )
    return "\n".join(head + lines)


def summary_line(row: Row) -> str:
    snr = condition(row)
    parts = [f"{row.detector:14} {snr:22} acc {row.frame_accuracy:.3f} recall {row.speech_recall:.3f}"]
    parts.append(f"false-speech {row.false_speech:.3f}")
    for silence in ("0.3", "0.4", "0.5", "0.7"):
        figures = row.endpointing[silence]
        p50, p95 = figures["delay_p50"], figures["delay_p95"]
        delay = "-" if p50 is None or p95 is None else f"{p50:.2f}/{p95:.2f}"
        cuts = "/".join(str(figures[f"false_end_pause_{p:g}"]) for p in (0.0, *HESITATION_SECONDS))
        parts.append(f"s{silence}: cut {cuts} miss {figures['missed']} delay {delay}")
    return " | ".join(parts)


# -- cost -------------------------------------------------------------------------------------------------------


def per_call_us(call: Callable[[], object], seconds: float = 0.5) -> float:
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            call()
        count += 200
    return (time.perf_counter() - start) / count * 1e6


def costs(pcm: bytes) -> dict[str, float]:
    """Microseconds per call: the detectors per 10 ms frame, ``Endpointer.feed`` per chunk (bookkeeping included)."""
    import webrtcvad

    frame = pcm[32000 : 32000 + 320]
    out = {}
    vad = webrtcvad.Vad(2)
    out["webrtcvad is_speech, per 10 ms frame"] = per_call_us(lambda: vad.is_speech(frame, RATE))
    try:
        from pymicro_vad import MicroVad

        micro_vad = MicroVad()
        out["pymicro-vad Process10ms, per 10 ms frame"] = per_call_us(lambda: micro_vad.process_10ms(frame), 0.3)
    except ImportError:
        pass
    detect = energy_detector()
    out["energy (numpy), per 10 ms frame"] = per_call_us(lambda: detect(frame))

    def feeder(fmt: AudioFormat, data: bytes, chunk: int) -> Callable[[], None]:
        endpointer = Endpointer(EndpointSettings(), fmt)
        chunks = [data[i : i + chunk] for i in range(0, len(data) - chunk + 1, chunk)]
        position = [0]

        def feed() -> None:
            endpointer.feed(chunks[position[0]])
            position[0] = (position[0] + 1) % len(chunks)

        return feed

    samples = np.frombuffer(pcm, dtype="<i2")
    out["Endpointer.feed, 320-byte chunk (16 kHz mono s16le)"] = per_call_us(feeder(PCM16K, pcm, 320))
    out["Endpointer.feed, 1024-byte chunk (16 kHz mono s16le)"] = per_call_us(feeder(PCM16K, pcm, 1024))
    stereo = np.repeat(samples, 2).astype("<i2").tobytes()
    out["Endpointer.feed, 10 ms of 16 kHz stereo s16le"] = per_call_us(feeder(AudioFormat(16000, 2, 2), stereo, 640))
    wide = np.repeat(samples.astype("<i4") << 8, 3)  # 48 kHz (repeated samples), 24-bit
    wide24 = np.frombuffer(wide.astype("<i4").tobytes(), dtype=np.uint8).reshape(-1, 4)[:, :3].tobytes()
    out["Endpointer.feed, 10 ms of 48 kHz mono 24-bit"] = per_call_us(feeder(AudioFormat(48000, 3, 1), wide24, 1440))
    resampled = np.repeat(samples, 3)[: len(samples) * 44100 // 16000].astype("<i2").tobytes()
    out["Endpointer.feed, 10 ms of 44.1 kHz mono s16le (resampled)"] = per_call_us(
        feeder(AudioFormat(44100, 2, 1), resampled, 882)
    )
    return out


# -- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clips and conditions")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--markdown", help="write the accuracy table (as in docs/speech-detector.md) to this file")
    args = parser.parse_args(argv)

    clips = make_clips(args.quick)
    pauses = sorted(p for clip in clips for p in clip.pauses())
    print(f"{len(clips)} clips, {sum(len(c.truth) for c in clips) / 100:.0f} s of audio per condition")
    print(f"pauses inside the commands: {len(pauses)}, longest {pauses[-5:]} s")
    detectors: dict[str, Detector] = {f"webrtcvad-{mode}": webrtc(mode) for mode in range(4)}
    detectors["energy"] = energy_detector()
    try:
        import pymicro_vad  # noqa: F401

        detectors["pymicro-vad"] = micro()
    except ImportError:
        print("pymicro-vad not installed: left out")

    cost = costs(noisy(clips[0], "pink", 10.0, 0))
    for what, us in cost.items():
        print(f"{us:8.2f} µs  {what}")
    rows = evaluate(detectors, clips, args.quick)
    false_speech = noise_only(detectors, clips)
    print(f"noise-only streams taken for speech (of {len(SNRS_DB) * len(LEVELS_DB)} per noise):", false_speech)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write(markdown(rows) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            result: dict[str, Any] = {
                "python": sys.version.split()[0],
                "clips": len(clips),
                "pauses": pauses,
                "cost_us": cost,
                "rows": [asdict(row) for row in rows],
                "noise_only_false_speech": false_speech,
            }
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
