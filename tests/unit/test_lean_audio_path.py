"""The lean audio path (16 kHz s16le kept as int16) against the float path it replaced.

Tokens must not change: the VAD must take the same decisions, and every job must carry the same
float32 audio, whatever the chunking. The reference here is the per-frame VAD of before (RMS as
the mean of float64 squares, webrtcvad fed a copy of each frame) fed the float samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from ichigo_stream.actions import Submit
from ichigo_stream.audio import PcmStreamDecoder, float32_to_pcm16, pcm16_to_float32
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.messages import Capabilities, SessionLimits
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.segmentation import VadEvent, VadOptions, VadSegmenter
from ichigo_stream.session import ServerSession
from ichigo_stream.stream_buffer import AudioBuffer

Speak = Callable[..., np.ndarray]  # the conftest fixture: speak(text) -> float32 16 kHz
SHORT_CAP = VadOptions(max_segment_s=2.0, cut_search_s=0.5)  # max-length cuts read the RMS
OPTIONS = [VadOptions(), SHORT_CAP, VadOptions(frame_ms=10, preroll_ms=0)]
MODEL = ModelInfo("fake.pth", "0" * 64, 2561, 2048, 25, "medium")


class PerFrameSegmenter(VadSegmenter):
    """The VAD as it was: one frame at a time, float64 RMS, a bytes copy for webrtcvad."""

    def _frames_step(self, pcm: np.ndarray, events: list[VadEvent]) -> None:
        for at in range(0, len(pcm), self._frame):
            frame = np.array(pcm[at : at + self._frame])
            rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64))))
            voiced = self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)
            self._frame_step(voiced, rms, events)


@pytest.fixture(scope="module")
def utterance(speak: Speak) -> np.ndarray:
    """Real speech with pauses, a low noise floor and a loud stretch that clips."""
    rng = np.random.default_rng(0)
    pause = np.zeros(SAMPLE_RATE * 7 // 10, dtype=np.float32)
    speech = np.concatenate(
        [
            pause,
            speak("The quick brown fox jumps over the lazy dog."),
            pause,
            3.0 * speak("we keep talking and talking without any pause at all for a while"),
            pause,
        ]
    )
    noise = rng.normal(0, 0.002, len(speech)).astype(np.float32)
    return np.clip(speech + noise, -1.0, 1.0)


def chunkings(n: int, unit: int) -> list[list[int]]:
    """Byte counts (multiples of `unit`) covering n bytes: fixed ones and seeded random ones."""
    plans = [[n], [unit] * (n // unit), [320 * unit] * (n // (320 * unit) + 1)]
    for seed in range(3):
        sizes = np.random.default_rng(seed).integers(0, 2000, size=n // (500 * unit)) * unit
        plans.append([*sizes.tolist(), n])
    return plans


def events_of(segmenter: VadSegmenter, pieces: list[np.ndarray]) -> list[VadEvent]:
    events: list[VadEvent] = []
    for piece in pieces:
        events += segmenter.push(piece)
    return events + segmenter.finish()


def decoded(decoder: PcmStreamDecoder, data: bytes, plan: list[int]) -> list[np.ndarray]:
    pieces, pos = [], 0
    for size in plan:
        pieces.append(decoder.decode(data[pos : pos + size]))
        pos += size
        if pos >= len(data):
            break
    return [*pieces, decoder.finish()]


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "short_cap", "10ms_frames"])
def test_s16le_16k_int16_path_decides_like_the_float_path(
    utterance: np.ndarray, options: VadOptions
) -> None:
    pcm = float32_to_pcm16(utterance)
    reference = events_of(PerFrameSegmenter(options), [pcm16_to_float32(pcm)])
    assert any(getattr(e, "span", None) for e in reference)
    if options is SHORT_CAP:
        assert any(e.span.reason == "max_length" for e in reference if hasattr(e, "span"))
    for plan in chunkings(len(pcm), 2):
        decoder = PcmStreamDecoder(SAMPLE_RATE, "pcm_s16le", 1)
        pieces = decoded(decoder, pcm, plan)
        assert all(p.dtype == np.int16 for p in pieces)  # no float on the way to the VAD
        assert events_of(VadSegmenter(options), pieces) == reference


@pytest.mark.parametrize(
    ("rate", "encoding", "channels"),
    [
        (8000, "pcm_s16le", 1),
        (44100, "pcm_s16le", 2),
        (16000, "pcm_f32le", 1),
        (48000, "pcm_f32le", 1),
    ],
)
def test_other_formats_decide_like_the_per_frame_vad(
    utterance: np.ndarray, rate: int, encoding: str, channels: int
) -> None:
    from ichigo_stream.audio import resample

    audio = np.repeat(resample(utterance, SAMPLE_RATE, rate)[:, None], channels, axis=1)
    data = float32_to_pcm16(audio) if encoding == "pcm_s16le" else audio.astype("<f4").tobytes()
    frame_bytes = (2 if encoding == "pcm_s16le" else 4) * channels
    # (A resampled stream cut differently may differ in the last bits: compare like for like.)
    plans = chunkings(len(data), frame_bytes)
    for plan in (plans[0], plans[2], plans[3]):  # (one frame a push: slow, and no news)
        pieces = decoded(PcmStreamDecoder(rate, encoding, channels), data, plan)
        assert all(p.dtype == np.float32 for p in pieces)
        reference = events_of(PerFrameSegmenter(SHORT_CAP), pieces)
        assert any(getattr(e, "span", None) for e in reference)
        assert events_of(VadSegmenter(SHORT_CAP), pieces) == reference


def test_int16_buffer_slices_the_floats_the_float_buffer_held() -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32768, size=200_000).astype(np.int16)
    ints, floats = AudioBuffer(capacity=64, dtype=np.int16), AudioBuffer(capacity=64)
    pos = 0
    while pos < len(pcm):
        n = int(rng.integers(0, 5000))
        ints.append(pcm[pos : pos + n])
        floats.append(pcm16_to_float32(pcm[pos : pos + n]))
        pos += n
        keep = int(rng.integers(ints.base, ints.end + 1))
        ints.trim_before(keep)
        floats.trim_before(keep)
        start = int(rng.integers(ints.base, ints.end + 1))
        got, want = ints.slice(start, ints.end), floats.slice(start, floats.end)
        assert got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(ValueError):
        ints.append(np.zeros(3, dtype=np.float32))  # would truncate silently


def jobs_of(start: dict, data: bytes, chunk_bytes: int, bytes_per_s: int) -> list[tuple]:
    """Every job a session submits: (kind, segment, start, end, audio bytes)."""
    limits = SessionLimits(max_pending_segments=1000)
    session = ServerSession("s", MODEL, Capabilities(limits=limits), 0.0)
    now, jobs = 0.0, []
    actions = session.receive(json.dumps(start), now)
    for pos in range(0, len(data), chunk_bytes):
        now += chunk_bytes / bytes_per_s
        actions += session.receive(data[pos : pos + chunk_bytes], now)
    actions += session.receive(json.dumps({"type": "stop"}), now)
    for action in actions:
        assert action.__class__.__name__ in ("Send", "Submit", "Cancel"), action
        if isinstance(action, Submit):
            job = action.job
            assert job.audio.dtype == np.float32
            jobs.append((job.kind, job.segment, job.start, job.end, job.audio.tobytes()))
    return jobs


def test_session_jobs_carry_the_same_float32_audio_as_the_float_path(
    utterance: np.ndarray,
) -> None:
    """The same samples sent as s16le (kept int16) and as their floats in f32le (the float
    path): the same jobs, partials included, with bit-identical audio."""
    pcm = float32_to_pcm16(utterance)
    as_floats = pcm16_to_float32(pcm).astype("<f4").tobytes()
    start = {"type": "start", "sample_rate": SAMPLE_RATE, "channels": 1, "partials": True}
    lean = jobs_of({**start, "encoding": "pcm_s16le"}, pcm, 640, 2 * SAMPLE_RATE)
    float_path = jobs_of({**start, "encoding": "pcm_f32le"}, as_floats, 1280, 4 * SAMPLE_RATE)
    assert {kind for kind, *_ in lean} == {"final", "partial"}
    assert lean == float_path
