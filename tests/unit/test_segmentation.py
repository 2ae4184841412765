"""ichigo_stream.segmentation on real espeak-ng speech: events, cuts, chunking invariance."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ichigo_stream.constants import SAMPLE_RATE, WINDOW_SAMPLES
from ichigo_stream.errors import AudioError, SegmentationError
from ichigo_stream.segmentation import (
    CandidateCancelled,
    EndpointCandidate,
    SegmentClosed,
    Span,
    SpeechStarted,
    VadEvent,
    VadOptions,
    VadSegmenter,
    segment_fixed,
    segment_vad,
    segment_whole,
    split,
    vad_pcm16,
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore on a sunny day.",
    "Please call Stella and ask her to bring these things with her from the store.",
)
# No punctuation: espeak-ng then never pauses, so the speech has no 500 ms silence anywhere.
RUN_ON = (
    "we keep talking about the weather and the trains and the long road home without any "
    "pause at all because the test needs speech that never stops for a breath so the cutter "
    "has to find a quiet place "
) * 7
Speak = Callable[..., np.ndarray]  # the conftest fixture: speak(text) -> float32 16 kHz
QUIET = 0.01  # |sample| above this is espeak-ng speech, below it its (digital) silence
SHORT_CAP = VadOptions(max_segment_s=4.0, cut_search_s=1.0)  # forces max-length cuts
# Default, and short caps: a one-frame search on a grid-aligned start (preroll 0) makes the
# frame that reaches the cap a boundary candidate, which a cut must never take.
CAP_OPTIONS = [
    VadOptions(),
    VadOptions(max_segment_s=2.0, cut_search_s=0.5),
    VadOptions(preroll_ms=0, max_segment_s=0.96, cut_search_s=0.03),  # 32 frames
]


def ms(n: float) -> int:
    return round(n * SAMPLE_RATE / 1000)


def silence(milliseconds: float) -> np.ndarray:
    return np.zeros(ms(milliseconds), dtype=np.float32)


def loud_region(x: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the samples above QUIET."""
    idx = np.flatnonzero(np.abs(x) > QUIET)
    return int(idx[0]), int(idx[-1]) + 1


def trim(x: np.ndarray) -> np.ndarray:
    lo, hi = loud_region(x)
    return x[lo:hi]


def run(audio: np.ndarray, chunks: list[int], options: VadOptions) -> list[VadEvent]:
    """Push audio in chunks of the given sizes (the rest in one go), then finish."""
    seg = VadSegmenter(options)
    events: list[VadEvent] = []
    pos = 0
    for n in chunks:
        events += seg.push(audio[pos : pos + n])
        pos += n
    events += seg.push(audio[pos:])
    assert seg.position == len(audio)
    return events + seg.finish()


def closed(events: list[VadEvent]) -> list[Span]:
    return [e.span for e in events if isinstance(e, SegmentClosed)]


def check_invariants(segments: list[Span], total: int, options: VadOptions) -> None:
    for s in segments:
        assert 0 <= s.start < s.end <= total
        assert s.end - s.start <= options.cap_samples
    for a, b in itertools.pairwise(segments):
        assert a.end <= b.start


def check_event_grammar(events: list[VadEvent]) -> None:
    """Started, then candidates/cancels alternating, then closed; indices 0, 1, 2, ..."""
    index, open_, candidate = 0, False, None
    for e in events:
        if isinstance(e, SpeechStarted):
            assert not open_ and e.index == index
            open_, start = True, e.start
        elif isinstance(e, EndpointCandidate):
            assert open_ and candidate is None and e.index == index and e.start == start
            candidate = e
        elif isinstance(e, CandidateCancelled):
            assert open_ and candidate is not None and e.index == index
            candidate = None
        else:
            assert open_ and e.index == index and e.span.start == start
            if candidate is not None:  # a candidate never lies about the end
                assert e.span.end == candidate.end
            open_, candidate, index = False, None, index + 1
    assert not open_


@pytest.fixture(scope="module")
def sentences(speak: Speak) -> list[np.ndarray]:
    return [speak(t) for t in SENTENCES]


@pytest.fixture(scope="module")
def paused(sentences: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """0.5 s silence, then the sentences each followed by 1 s of silence; and their offsets."""
    parts, offsets, pos = [silence(500)], [], ms(500)
    for s in sentences:
        offsets.append(pos)
        parts += [s, silence(1000)]
        pos += len(s) + ms(1000)
    return np.concatenate(parts), offsets


@pytest.fixture(scope="module")
def continuous(speak: Speak) -> np.ndarray:
    """About 70 s of speech without a pause, between 0.5 s and 1 s of silence."""
    audio = np.concatenate([silence(500), speak(RUN_ON), silence(1000)])
    assert len(audio) > 65 * SAMPLE_RATE
    return audio


# --- chunking invariance ----------------------------------------------------------------------


@pytest.mark.parametrize("options", [VadOptions(), SHORT_CAP, VadOptions(frame_ms=10)])
def test_any_chunking_gives_the_same_events(
    paused: tuple[np.ndarray, list[int]], options: VadOptions
) -> None:
    audio = paused[0]
    n = len(audio)
    reference = run(audio, [], options)
    check_event_grammar(reference)
    check_invariants(closed(reference), n, options)
    assert len(closed(reference)) >= 3
    if options is SHORT_CAP:  # the cut path is exercised, not only silence endpoints
        assert any(s.reason == "max_length" for s in closed(reference))
    plans = [[7] * (n // 7), [160] * (n // 160), [4801] * (n // 4801), [0, 0, 1, n - 2, 0]]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        plans.append(list(rng.integers(0, 3000, size=n // 1500)))
    for plan in plans:
        assert run(audio, plan, options) == reference


@pytest.mark.parametrize("options", [VadOptions(), VadOptions(max_segment_s=1.0, cut_search_s=0.5)])
def test_one_sample_at_a_time_gives_the_same_events(speak: Speak, options: VadOptions) -> None:
    audio = np.concatenate([speak("Hello there."), silence(300), speak("General Kenobi.")])
    reference = run(audio, [], options)
    assert closed(reference)
    assert run(audio, [1] * len(audio), options) == reference


def test_int16_input_matches_float_input(paused: tuple[np.ndarray, list[int]]) -> None:
    audio = paused[0]
    assert run(vad_pcm16(audio), [4801] * 20, SHORT_CAP) == run(audio, [], SHORT_CAP)
    # Floats are clipped, not wrapped; NaN (a broken source) reads as silence.
    floats = np.array([2.0, -2.0, 1.0, -1.0, 0.25, np.nan], dtype=np.float32)
    assert vad_pcm16(floats).tolist() == [32767, -32768, 32767, -32768, 8192, 0]
    # PCM read as float (x / 32768) converts back to exactly the same PCM.
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(vad_pcm16(pcm.astype(np.float32) / 32768), pcm)


def test_bad_sample_arrays_raise_audio_error() -> None:
    seg = VadSegmenter()
    with pytest.raises(AudioError):
        seg.push(np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(AudioError):
        seg.push(np.zeros(10, dtype=np.int32))


# --- endpoints on real speech -----------------------------------------------------------------


def test_one_segment_per_sentence(
    paused: tuple[np.ndarray, list[int]], sentences: list[np.ndarray]
) -> None:
    audio, offsets = paused
    opts = VadOptions()
    segments = segment_vad(audio, opts)
    check_invariants(segments, len(audio), opts)
    assert len(segments) == len(SENTENCES)
    for s, offset, sentence in zip(segments, offsets, sentences, strict=True):
        lo, hi = loud_region(sentence)
        first, last = offset + lo, offset + hi
        assert s.reason == "silence"
        assert s.start <= first and s.end >= last  # the whole sentence is inside
        # ... and not much more: preroll / tail plus a frame and webrtcvad's hangover.
        assert first - s.start <= opts.preroll_samples + opts.frame_samples
        assert s.end - last <= opts.tail_samples + ms(300)


@pytest.mark.parametrize("opts", CAP_OPTIONS)
def test_continuous_speech_is_cut_without_losing_a_sample(
    continuous: np.ndarray, opts: VadOptions
) -> None:
    total = len(continuous)
    segments = segment_vad(continuous, opts)
    check_invariants(segments, total, opts)
    assert len(segments) >= 3
    assert [s.reason for s in segments[:-1]] == ["max_length"] * (len(segments) - 1)
    for a, b in itertools.pairwise(segments):
        assert a.end == b.start  # contiguous: no gap, no preroll at a cut
    first, last = loud_region(continuous)
    assert segments[0].start <= first and segments[-1].end >= last
    # Segments plus the (silent) gaps before and after them tile [0, total).
    gaps = [(0, segments[0].start), (segments[-1].end, total)]
    assert sum(s.end - s.start for s in segments) + sum(b - a for a, b in gaps) == total
    assert all(np.abs(continuous[a:b]).max(initial=0) <= QUIET for a, b in gaps)


@pytest.mark.parametrize("opts", CAP_OPTIONS)
def test_max_length_cut_is_at_the_quietest_frame(continuous: np.ndarray, opts: VadOptions) -> None:
    frame, cap, search = opts.frame_samples, opts.cap_samples, opts.cut_search_samples
    pcm = vad_pcm16(continuous).astype(np.float64)
    # Frame-sized pushes on the grid: a cut (cap reached in speech) closes and reopens in the
    # same push; a max-length close in post-speech silence does not reopen.
    seg, timed = VadSegmenter(opts), []
    for pos in range(0, len(continuous), frame):
        timed += [(seg.position, e) for e in seg.push(continuous[pos : pos + frame])]
    cuts = [
        e.span
        for (p, e), (q, f) in itertools.pairwise(timed)
        if isinstance(e, SegmentClosed) and isinstance(f, SpeechStarted) and p == q
    ]
    assert len(cuts) >= 2 and all(s.reason == "max_length" for s in cuts)
    for s in cuts:
        cap_end = s.start + cap
        trigger = -(-cap_end // frame) * frame  # end of the frame that reached the cap
        ends = [
            b
            for b in range(frame, trigger, frame)
            if max(s.start, cap_end - search) <= b <= cap_end and b > s.start
        ]
        rms = [np.sqrt(np.mean(pcm[b - frame : b] ** 2)) for b in ends]
        quietest = max(b for b, r in zip(ends, rms, strict=True) if r == min(rms))  # ties -> latest
        assert s.end == quietest
        assert s.end - s.start >= cap - search


@pytest.mark.parametrize("where", ["speech", "tail", "after_tail", "same_frame"])
def test_cap_reached_at_the_end_of_speech(sentences: list[np.ndarray], where: str) -> None:
    """The cap falls on the last voiced frame, inside the tail, or after the tail; or (with
    min_silence and tail deciding on the same frame) where the cap cuts the tail short."""
    audio = np.concatenate([silence(300), trim(sentences[0]), silence(1000)])
    free = closed(run(audio, [], VadOptions()))
    assert len(free) == 1 and free[0].reason == "silence"
    base = VadOptions(cut_search_s=1.0)
    start, last_voiced = free[0].start, free[0].end - base.tail_samples
    frame, tail = base.frame_samples, base.tail_samples
    cap_end = last_voiced + {"speech": -100, "tail": 100, "after_tail": tail + 100}.get(
        where, tail - 100
    )
    opts = VadOptions(
        cut_search_s=1.0,
        max_segment_s=(cap_end - start) / SAMPLE_RATE,
        min_silence_ms=210 if where == "same_frame" else 500,
    )
    assert opts.cap_samples == cap_end - start
    # Frame-sized pushes on the grid: each push returns what its frame decided.
    seg, timed = VadSegmenter(opts), []
    for pos in range(0, len(audio), frame):
        timed += [(seg.position, e) for e in seg.push(audio[pos : pos + frame])]
    trigger = -(-cap_end // frame) * frame  # end of the frame that reaches the cap
    segments = [(p, e.span) for p, e in timed if isinstance(e, SegmentClosed)]
    check_event_grammar([e for _, e in timed])
    if where == "speech":
        # Cut before the last voiced frame; the new segment knows that frame was voiced and
        # ends a tail after it, exactly as the uncapped run did: no speech lost.
        (p0, a), (_, b) = segments
        assert p0 == trigger and a.reason == "max_length" and a.start == start
        assert cap_end - 1.0 * SAMPLE_RATE <= a.end <= trigger - frame
        assert b == Span(a.end, free[0].end, "silence")
    else:
        [(p0, a)] = segments
        assert p0 == trigger and a.reason == "max_length"
        assert a == Span(start, min(last_voiced + tail, cap_end), "max_length")
        candidates = [e for _, e in timed if isinstance(e, EndpointCandidate)]
        assert [c.end for c in candidates] == ([] if where == "tail" else [a.end])


def test_silence_gives_no_segments() -> None:
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(5 * SAMPLE_RATE) * 1e-4).astype(np.float32)
    assert segment_vad(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)) == []
    assert segment_vad(hiss) == []
    assert split(hiss, "vad") == []
    assert segment_vad(np.zeros(0, dtype=np.float32)) == []


# --- events: candidate, cancel, flush, finish -------------------------------------------------


@pytest.mark.parametrize("frame_ms", [30, 10])
def test_candidate_then_cancel_then_close(speak: Speak, frame_ms: int) -> None:
    # A 400 ms pause between trimmed utterances: after webrtcvad's hangover (~100 ms) the
    # silence is still > tail (200) and < min_silence (500).
    a, b = (trim(speak(t)) for t in ("Good morning.", "How are you?"))
    a_end, b_start = ms(300) + len(a), ms(300) + len(a) + ms(400)
    audio = np.concatenate([silence(300), a, silence(400), b, silence(1000)])
    opts = VadOptions(frame_ms=frame_ms)
    seg = VadSegmenter(opts)
    timed: list[tuple[int, VadEvent]] = []
    for i in range(len(audio)):  # one sample at a time: each event's exact emission point
        timed += [(seg.position, e) for e in seg.push(audio[i : i + 1])]
    timed += [(seg.position, e) for e in seg.finish()]
    kinds = [type(e) for _, e in timed]
    assert kinds == [
        SpeechStarted,
        EndpointCandidate,
        CandidateCancelled,
        EndpointCandidate,
        SegmentClosed,
    ]
    events = [e for _, e in timed]
    assert {e.index for e in events} == {0}
    (_, first), (_, last), (at_close, end) = timed[1], timed[3], timed[4]
    assert end.span.reason == "silence"
    assert end.span.start == events[0].start and end.span.end == last.end
    # The first candidate's end falls in the pause; the segment covers both utterances.
    assert a_end < first.end < b_start
    assert end.span.start <= ms(300) and end.span.end >= b_start + len(b)
    # Causal: each decision is emitted on the sample that completes the deciding frame.
    frame = opts.frame_samples
    for pos, e in (timed[1], timed[3]):
        last_voiced = e.end - opts.tail_samples
        assert pos == -(-(last_voiced + opts.tail_samples) // frame) * frame
    last_voiced = end.span.end - opts.tail_samples
    assert at_close == last_voiced + -(-opts.min_silence_samples // frame) * frame


def test_flush_ends_the_segment_now_and_speech_continues(sentences: list[np.ndarray]) -> None:
    audio = sentences[2]
    cut = ms(1500) + 77  # mid-speech and mid-frame
    seg = VadSegmenter()
    assert seg.flush() == [] and not seg.in_speech and seg.open_start is None
    started = seg.push(audio[:cut])
    assert [type(e) for e in started] == [SpeechStarted] and seg.in_speech
    assert seg.open_start == started[0].start
    flushed = seg.flush()
    assert flushed == [SegmentClosed(0, Span(started[0].start, cut, "flush"))]
    assert not seg.in_speech and seg.flush() == []
    rest = seg.push(audio[cut:]) + seg.finish()
    assert rest[0] == SpeechStarted(1, cut)  # the next segment picks up exactly at the flush
    assert closed(rest)[0].end >= loud_region(audio)[1]


def test_finish_closes_a_segment_mid_speech(sentences: list[np.ndarray]) -> None:
    audio = sentences[1]
    stop = ms(1200) + 5
    seg = VadSegmenter()
    events = seg.push(audio[:stop]) + seg.finish()
    assert [type(e) for e in events] == [SpeechStarted, SegmentClosed]
    assert events[1].span == Span(events[0].start, stop, "finish")
    assert events[0].start <= loud_region(audio)[0]
    assert seg.finished and seg.finish() == []
    with pytest.raises(SegmentationError):
        seg.push(audio[stop:])


# --- offline modes and options ----------------------------------------------------------------


def test_fixed_and_whole_windows() -> None:
    w = WINDOW_SAMPLES
    assert segment_fixed(0) == [] and segment_whole(0) == []
    assert segment_fixed(w) == [Span(0, w, "fixed")]
    assert segment_fixed(w + 1) == [Span(0, w, "fixed"), Span(w, w + 1, "fixed")]
    assert segment_fixed(2 * w + 5)[-1] == Span(2 * w, 2 * w + 5, "fixed")
    assert segment_whole(w) == [Span(0, w, "whole")]
    with pytest.raises(SegmentationError, match="30 s"):
        segment_whole(w + 1)


def test_split_modes() -> None:
    w = WINDOW_SAMPLES
    empty = np.zeros(0, dtype=np.float32)
    assert split(empty, "vad") == split(empty, "fixed") == split(empty, "none") == []
    assert split(np.zeros(w, dtype=np.float32), "none") == [Span(0, w, "whole")]
    assert len(split(np.zeros(w + 1, dtype=np.int16), "fixed")) == 2
    with pytest.raises(SegmentationError):
        split(np.zeros(w + 1, dtype=np.float32), "none")
    with pytest.raises(SegmentationError):
        split(empty, "words")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_ms": 25},
        {"aggressiveness": 4},
        {"aggressiveness": -1},
        {"tail_ms": 500},
        {"tail_ms": 600},
        {"preroll_ms": -1},
        {"max_segment_s": 30.5},
        {"max_segment_s": 0},
        {"max_segment_s": -1.0},
        {"max_segment_s": 0.2},  # cannot hold preroll + two frames
        {"cut_search_s": 0.0},
    ],
)
def test_bad_options_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(SegmentationError):
        VadOptions(**kwargs)  # type: ignore[arg-type]


def test_segmentation_does_not_import_torch() -> None:
    # The server's protocol side and light clients import this module without the model extra.
    code = "import sys, ichigo_stream.segmentation; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
