"""The audio a streaming client keeps for resending after a reconnect, on the VAD frame grid.

Sans-I/O: bytes in, byte ranges and resume offsets out. ClientSession owns one per stream.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from .constants import SAMPLE_RATE
from .protocol import ENCODINGS, StartOptions

log = logging.getLogger("ichigo_stream.client")


class ResendBuffer:
    """The client's audio from the resume point on, as wire bytes, with its flush positions.

    Positions are absolute byte offsets into the stream's audio (frame 0 = the first
    session's offset). The resume point only ever moves forward, to a whole frame at a VAD
    frame boundary of the original session: the server cuts its VAD frames on a grid from
    the session's start, so a new session started off that grid would classify different
    frames and could move every later segment bound (tail_ms 200 is not a multiple of
    frame_ms 30, so segment ends are off the grid). On the grid, a resumed session sees the
    same frames as the uninterrupted one would have.
    """

    def __init__(self, options: StartOptions) -> None:
        self.rate = options.sample_rate
        self.frame_bytes = ENCODINGS[options.encoding] * options.channels
        self.offset = options.offset
        self.origin = options.offset_samples  # the VAD grid's origin on the 16 kHz timeline
        self.grid = options.vad.frame_samples
        self.data = bytearray()
        self.start = 0  # absolute byte position of data[0]; always a whole frame
        self.flushes: deque[int] = deque()  # absolute byte positions, increasing

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def whole_end(self) -> int:
        """The end, less a trailing partial frame (raw bytes may split frames)."""
        return self.end - self.end % self.frame_bytes

    @property
    def resume_offset(self) -> float:
        """The timeline position (seconds) of the resume point: the next session's offset."""
        return self.offset + self.start // self.frame_bytes / self.rate

    def append(self, data: bytes) -> None:
        self.data += data

    def mark_flush(self) -> None:
        """A flush after the audio so far (its whole frames: a split frame is not sent yet)."""
        position = self.whole_end
        if not self.flushes or self.flushes[-1] < position:
            self.flushes.append(position)

    def drop_partial_frame(self) -> int:
        """At the end of the audio: a split last frame can never be completed. Returns the
        number of bytes dropped."""
        extra = self.end - self.whole_end
        if extra:
            del self.data[len(self.data) - extra :]
        return extra

    def view(self, start: int, end: int) -> bytes:
        return bytes(self.data[start - self.start : end - self.start])

    def next_flush(self, after: int) -> int | None:
        return next((p for p in self.flushes if p > after), None)

    def seconds(self, n_bytes: int) -> float:
        return n_bytes / self.frame_bytes / self.rate

    def acknowledge(self, end: float) -> None:
        """A segment up to `end` (seconds) came back: audio before it need not be resent."""
        samples = round(end * SAMPLE_RATE) - self.origin
        self._drop_before_sample(samples // self.grid * self.grid)

    def bound(self, sent: int, limit_s: float) -> None:
        """Keep at most limit_s of sent audio: drop the oldest, up to a grid point."""
        excess = sent - self.start - round(limit_s * self.rate) * self.frame_bytes
        if excess <= 0:
            return
        frame = (self.start + excess) // self.frame_bytes
        sample = math.ceil(frame * SAMPLE_RATE / self.rate)
        sample = -(-sample // self.grid) * self.grid  # up to the grid
        log.debug("resend buffer over %g s: dropping its oldest audio", limit_s)
        self._drop_before_sample(sample, limit=sent)

    def _drop_before_sample(self, sample: int, limit: int | None = None) -> None:
        # Down to a whole client frame: at 16 kHz exactly the sample, else the frame before.
        position = sample * self.rate // SAMPLE_RATE * self.frame_bytes
        if limit is not None:
            position = min(position, limit)
        position = min(position, self.whole_end)
        if position <= self.start:
            return
        del self.data[: position - self.start]
        self.start = position
        while self.flushes and self.flushes[0] <= position:
            self.flushes.popleft()
