"""Cut 16 kHz audio into model windows: a causal webrtcvad chunker, fixed 30 s windows, or whole.

The chunker (VadSegmenter) is shared by the offline CLI and the streaming server, which runs one
per session: it is incremental, pure (no I/O, threads or clocks), keeps at most cut_search_s of
per-frame RMS values and never the audio, and emits the same events for any chunking of the
same audio.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from .audio import finite_to_pcm16, silence_non_finite
from .constants import SAMPLE_RATE, WINDOW_SAMPLES
from .errors import AudioError, SegmentationError

VAD_FRAME_MS = (10, 20, 30)  # the only frame sizes webrtcvad accepts


def _ms_to_samples(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


@dataclass(frozen=True)
class VadOptions:
    """Settings of the webrtcvad chunker; validated on construction."""

    frame_ms: int = 30  # longest frame webrtcvad takes: fewest calls, steadiest decisions
    aggressiveness: int = 2  # 0..3; 2 rejects steady noise without clipping soft word onsets
    preroll_ms: int = 200  # audio kept before the first voiced frame (soft onsets)
    tail_ms: int = 200  # audio kept after the last voiced frame (decaying endings)
    min_silence_ms: int = 500  # silence after the last voiced frame that ends a segment
    max_segment_s: float = 30.0  # hard cap: one Whisper window
    cut_search_s: float = 5.0  # a max-length cut picks the quietest frame in this last stretch

    def __post_init__(self) -> None:
        if self.frame_ms not in VAD_FRAME_MS:
            raise SegmentationError(f"frame_ms must be one of {VAD_FRAME_MS}, got {self.frame_ms}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise SegmentationError(f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if self.preroll_ms < 0 or self.tail_ms < 0:
            raise SegmentationError("preroll_ms and tail_ms must be >= 0")
        if self.min_silence_ms <= self.tail_ms:
            raise SegmentationError(
                f"min_silence_ms ({self.min_silence_ms}) must be > tail_ms ({self.tail_ms})"
            )
        if not 0 < self.max_segment_s <= WINDOW_SAMPLES / SAMPLE_RATE:
            raise SegmentationError(
                f"max_segment_s must be in (0, {WINDOW_SAMPLES / SAMPLE_RATE:g}], "
                f"got {self.max_segment_s}"
            )
        # A segment opens spanning up to preroll + one frame, and a cut needs a frame boundary
        # behind the frame that reached the cap: so the cap must hold preroll + two frames.
        if self.cap_samples < self.preroll_samples + 2 * self.frame_samples:
            raise SegmentationError("max_segment_s must be >= preroll_ms + 2 * frame_ms")
        if self.cut_search_samples < self.frame_samples:
            raise SegmentationError(f"cut_search_s must be >= frame_ms ({self.frame_ms} ms)")

    @property
    def frame_samples(self) -> int:
        return _ms_to_samples(self.frame_ms)

    @property
    def preroll_samples(self) -> int:
        return _ms_to_samples(self.preroll_ms)

    @property
    def tail_samples(self) -> int:
        return _ms_to_samples(self.tail_ms)

    @property
    def min_silence_samples(self) -> int:
        return _ms_to_samples(self.min_silence_ms)

    @property
    def cap_samples(self) -> int:
        return round(self.max_segment_s * SAMPLE_RATE)

    @property
    def cut_search_samples(self) -> int:
        """The search stretch, kept a frame short of the cap so a reopened segment fits."""
        return min(round(self.cut_search_s * SAMPLE_RATE), self.cap_samples - self.frame_samples)


DEFAULT_VAD_OPTIONS = VadOptions()


@dataclass(frozen=True)
class Span:
    """Samples [start, end) of the 16 kHz timeline that the model reads as one clip, and why
    it ended. (Not messages.Segment, the wire message that carries a span's tokens.)"""

    start: int
    end: int
    reason: str  # "silence" | "max_length" | "flush" | "finish" | "fixed" | "whole"


@dataclass(frozen=True)
class SpeechStarted:
    index: int
    start: int


@dataclass(frozen=True)
class EndpointCandidate:
    """tail_ms of silence after the last voiced frame: if it lasts, the segment is [start, end)."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class CandidateCancelled:
    index: int


@dataclass(frozen=True)
class SegmentClosed:
    index: int
    span: Span


# What the VAD decides as audio arrives (not the client's StreamEvent, nor the wire messages).
VadEvent = SpeechStarted | EndpointCandidate | CandidateCancelled | SegmentClosed


def vad_pcm16(samples: np.ndarray) -> np.ndarray:
    """webrtcvad's input: mono samples (int16, or float in [-1, 1]) as 16-bit PCM.

    audio.to_pcm16's rule, the scale PCM is read with, so PCM that came in as int16 and was
    read as float gives webrtcvad back exactly the same samples; floats are clipped, and
    non-finite samples (a broken live source) read as silence, not as an error.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioError(f"expected 1-D mono samples, got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"expected float or int16 samples, got {samples.dtype}")
    return finite_to_pcm16(silence_non_finite(samples))


class VadSegmenter:
    """Causal webrtcvad chunker: push() 16 kHz audio, get events as soon as they are decided.

    Frames lie on a grid anchored at sample 0; a trailing partial frame waits for its rest.
    One voiced frame opens a segment (webrtcvad's own hangover already smooths clicks).
    """

    def __init__(self, options: VadOptions = DEFAULT_VAD_OPTIONS) -> None:
        self.options = options
        self._vad = webrtcvad.Vad(options.aggressiveness)
        self._frame = options.frame_samples
        # The options' sample counts, read for every frame: computed once.
        self._preroll = options.preroll_samples
        self._tail = options.tail_samples
        self._min_silence = options.min_silence_samples
        self._cap = options.cap_samples
        self._pending = np.zeros(self._frame, dtype=np.int16)
        self._n_pending = 0
        self._position = 0  # samples pushed
        self._frames_done = 0  # frames classified
        # (frame end, rms) of recent frames: only the cut search reads them, so keep that many.
        n_search = math.ceil(options.cut_search_samples / self._frame) + 2
        self._rms: deque[tuple[int, float]] = deque(maxlen=n_search)
        self._index = 0  # index of the next (or open) segment
        self._prev_end = 0
        self._start: int | None = None
        self._last_voiced_end = 0
        self._candidate = False
        self._finished = False

    @property
    def position(self) -> int:
        return self._position

    @property
    def in_speech(self) -> bool:
        """A segment is open (between SpeechStarted and SegmentClosed)."""
        return self._start is not None

    @property
    def open_start(self) -> int | None:
        return self._start

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed mono 16 kHz samples (float in [-1, 1] or int16, any length).

        int16 PCM is read as it is (no copy, no float round trip): webrtcvad takes the bytes
        of each frame straight from it, and the frames' RMS is taken for all whole frames at
        once. Float samples are converted to PCM once (vad_pcm16), the same PCM either way.
        """
        if self._finished:
            raise SegmentationError("push() after finish(): the segmenter is finished")
        pcm = np.ascontiguousarray(vad_pcm16(samples))
        n = len(pcm)
        self._position += n
        events: list[VadEvent] = []
        i = 0
        if self._n_pending:
            i = min(self._frame - self._n_pending, n)
            self._pending[self._n_pending : self._n_pending + i] = pcm[:i]
            self._n_pending += i
            if self._n_pending < self._frame:
                return events
            self._n_pending = 0
            self._frames_step(self._pending, events)
        whole = (n - i) // self._frame * self._frame
        if whole:
            self._frames_step(pcm[i : i + whole], events)
            i += whole
        rest = n - i
        self._pending[:rest] = pcm[i:]
        self._n_pending = rest
        return events

    def flush(self) -> list[VadEvent]:
        """Close the open segment at the samples pushed so far (capped); no-op when none is open."""
        events: list[VadEvent] = []
        if self._start is not None:
            end = min(self._position, self._start + self.options.cap_samples)
            self._close(end, "flush", events)
        return events

    def finish(self) -> list[VadEvent]:
        """End of input: close the open segment after its last voiced frame plus the tail."""
        events: list[VadEvent] = []
        if self._start is not None:
            opts = self.options
            end = min(
                self._last_voiced_end + opts.tail_samples,
                self._position,
                self._start + opts.cap_samples,
            )
            self._close(end, "finish", events)
        self._finished = True
        return events

    def discard(self) -> list[VadEvent]:
        """Drop the open segment (a client cleared its uncommitted audio): it never closes,
        its index is reused by the next one, and the next one starts after what was pushed.

        A speculative endpoint of the dropped segment is withdrawn (CandidateCancelled)."""
        events: list[VadEvent] = []
        if self._start is not None:
            if self._candidate:
                events.append(CandidateCancelled(self._index))
            self._start = None
            self._candidate = False
            # Frames already classified are behind the new segment's preroll.
            self._prev_end = self._position
        return events

    def _frames_step(self, pcm: np.ndarray, events: list[VadEvent]) -> None:
        """Classify whole frames of contiguous int16 PCM, in order."""
        frame = self._frame
        # Squares of int16 and their sums stay below 2**53, so float64 holds them exactly and
        # each frame's sum is exact in any summation order: its RMS is the same float as the
        # mean of float64 squares gives, at a third of the cost.
        wide = pcm.astype(np.float64)
        raw = memoryview(pcm).cast("B")  # webrtcvad reads frames' bytes from here, uncopied
        is_speech = self._vad.is_speech
        for at in range(0, len(pcm), frame):
            x = wide[at : at + frame]
            voiced = is_speech(raw[2 * at : 2 * (at + frame)], SAMPLE_RATE, frame)
            self._frame_step(voiced, math.sqrt(float(x @ x) / frame), events)

    def _frame_step(self, voiced: bool, rms: float, events: list[VadEvent]) -> None:
        """One frame's decision, given webrtcvad's verdict and its RMS (int16 units)."""
        self._frames_done += 1
        f_end = self._frames_done * self._frame
        self._rms.append((f_end, rms))

        if self._start is None:
            if not voiced:
                return
            f_start = f_end - self._frame
            self._start = max(f_start - self._preroll, self._prev_end, 0)
            self._last_voiced_end = f_end
            events.append(SpeechStarted(self._index, self._start))
            return  # validation guarantees a fresh segment is shorter than the cap

        start = self._start
        if voiced:
            if self._candidate:
                self._candidate = False
                events.append(CandidateCancelled(self._index))
            self._last_voiced_end = f_end
            if f_end >= start + self._cap:
                self._cut(f_end, events)
            return

        # Post-speech silence: every way it ends uses this end, so a candidate never lies.
        silence = f_end - self._last_voiced_end
        end = min(self._last_voiced_end + self._tail, start + self._cap)
        if silence >= self._tail and not self._candidate:
            self._candidate = True
            events.append(EndpointCandidate(self._index, start, end))
        if silence >= self._min_silence:
            reached_cap = end < self._last_voiced_end + self._tail
            self._close(end, "max_length" if reached_cap else "silence", events)
        elif f_end >= start + self._cap:
            self._close(end, "max_length", events)

    def _cut(self, f_end: int, events: list[VadEvent]) -> None:
        """At the cap in speech: cut after the quietest earlier frame, reopen at the cut."""
        start = self._start
        assert start is not None
        cap_end = start + self.options.cap_samples
        lo = max(start, cap_end - self.options.cut_search_samples)
        # Boundaries in [lo, cap_end] behind the current frame: the previous frame's end always
        # qualifies (see VadOptions), and the current voiced frame opens the next segment.
        best_end, best_rms = -1, math.inf
        for end, rms in self._rms:
            if lo <= end <= cap_end and start < end < f_end and rms <= best_rms:
                best_end, best_rms = end, rms
        self._close(best_end, "max_length", events)
        # Continuous speech: the next segment starts exactly at the cut, already voiced.
        self._start = best_end
        self._last_voiced_end = f_end
        events.append(SpeechStarted(self._index, best_end))

    def _close(self, end: int, reason: str, events: list[VadEvent]) -> None:
        assert self._start is not None
        events.append(SegmentClosed(self._index, Span(self._start, end, reason)))
        self._index += 1
        self._prev_end = end
        self._start = None
        self._candidate = False


def segment_vad(audio: np.ndarray, options: VadOptions = DEFAULT_VAD_OPTIONS) -> list[Span]:
    """Speech segments of a whole clip: the streaming chunker fed everything at once."""
    segmenter = VadSegmenter(options)
    events = segmenter.push(audio) + segmenter.finish()
    return [e.span for e in events if isinstance(e, SegmentClosed)]


def segment_fixed(n_samples: int) -> list[Span]:
    """Back-to-back 30 s windows covering [0, n_samples); the last one may be shorter."""
    if n_samples < 0:
        raise SegmentationError(f"n_samples must be >= 0, got {n_samples}")
    return [
        Span(s, min(s + WINDOW_SAMPLES, n_samples), "fixed")
        for s in range(0, n_samples, WINDOW_SAMPLES)
    ]


def segment_whole(n_samples: int) -> list[Span]:
    """One window [0, n_samples); over 30 s is an error, never a silent cut."""
    if n_samples < 0:
        raise SegmentationError(f"n_samples must be >= 0, got {n_samples}")
    if n_samples > WINDOW_SAMPLES:
        raise SegmentationError(
            f"audio is {n_samples / SAMPLE_RATE:.2f} s, over one {WINDOW_SAMPLES // SAMPLE_RATE} s "
            "window: use segment mode 'vad' or 'fixed'"
        )
    return [Span(0, n_samples, "whole")] if n_samples else []


def split(
    audio: np.ndarray,
    mode: Literal["vad", "fixed", "none"],
    options: VadOptions = DEFAULT_VAD_OPTIONS,
) -> list[Span]:
    """Segments of a 16 kHz mono clip under the given segment mode."""
    if mode == "vad":
        return segment_vad(audio, options)
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"expected 1-D mono samples, got shape {audio.shape}")
    n_samples = len(audio)
    if mode == "fixed":
        return segment_fixed(n_samples)
    if mode == "none":
        return segment_whole(n_samples)
    raise SegmentationError(f"unknown segment mode {mode!r}: expected 'vad', 'fixed' or 'none'")
