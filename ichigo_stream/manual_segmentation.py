"""Commit-driven segmentation: the client, not a VAD, says where each segment ends.

The OpenAI Realtime API with `turn_detection: null` works this way: every audio sample
appended since the previous commit belongs to the next item, speech or not. ManualSegmenter
speaks VadSegmenter's interface (push, flush, finish, discard, the same events), so
ServerSession runs it unchanged: flush() is a commit, discard() a clear. No audio is judged,
so nothing is kept but counters.
"""

from __future__ import annotations

import numpy as np

from .errors import SegmentationError
from .segmentation import (
    DEFAULT_VAD_OPTIONS,
    SegmentClosed,
    Span,
    SpeechStarted,
    VadEvent,
    VadOptions,
)


class ManualSegmenter:
    """A segment opens with the first sample after a commit and closes at the next commit,
    or at max_segment_s (one Whisper window), where the next one opens at once."""

    def __init__(self, options: VadOptions = DEFAULT_VAD_OPTIONS) -> None:
        # Only max_segment_s applies; the rest is read by ServerSession's buffer trimming.
        self.options = options
        self._position = 0
        self._index = 0
        self._start: int | None = None
        self._finished = False

    @property
    def position(self) -> int:
        return self._position

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    @property
    def open_start(self) -> int | None:
        return self._start

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        if self._finished:
            raise SegmentationError("push() after finish(): the segmenter is finished")
        n = len(samples)
        events: list[VadEvent] = []
        end = self._position + n
        cap = self.options.cap_samples
        while self._position < end:
            if self._start is None:
                self._start = self._position
                events.append(SpeechStarted(self._index, self._start))
            # A segment reaching the window's length closes there; the rest opens the next.
            step = min(end, self._start + cap)
            self._position = step
            if step - self._start >= cap:
                self._close(step, "max_length", events)
        return events

    def flush(self) -> list[VadEvent]:
        """The commit: close the open segment at the samples pushed so far."""
        events: list[VadEvent] = []
        if self._start is not None:
            self._close(self._position, "flush", events)
        return events

    def finish(self) -> list[VadEvent]:
        """End of input: what was appended but never committed is still one segment (a
        draining server does not throw a client's audio away)."""
        events = self.flush()
        self._finished = True
        return events

    def discard(self) -> list[VadEvent]:
        """The clear: drop the uncommitted audio; the next segment reuses the index."""
        self._start = None
        return []

    def _close(self, end: int, reason: str, events: list[VadEvent]) -> None:
        assert self._start is not None
        events.append(SegmentClosed(self._index, Span(self._start, end, reason)))
        self._index += 1
        self._start = None
