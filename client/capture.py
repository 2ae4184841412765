"""Microphone capture: a PortAudio input stream -> 16 kHz PCM16 chunks, as an async iterator.

sounddevice (PortAudio) records at the device's own default rate, because asking a device for
16 kHz makes PortAudio or the driver resample with whatever quality it has, or fail. The
PortAudio callback runs on PortAudio's thread and must never block: it only copies the block
and hands it to the event loop with call_soon_threadsafe (a lock-free append and a wake-up
byte). Everything else runs on the loop: level metering, downmix, soxr resampling to 16 kHz (so
the network carries 32 kB/s of int16 instead of e.g. 192 kB/s of float32 at 48 kHz) and
queueing.

Outages. ichigo_stream.client reconnects and resends what it already sent since the last
segment end, but does not read the audio iterator while disconnected. So the captured audio
waits here, in a queue bounded by --buffer-s (oldest audio dropped first, counted and shown),
and is handed over in larger chunks once the client reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ichigo_stream.audio import StreamResampler, downmix, silence_non_finite, to_pcm16
from ichigo_stream.constants import SAMPLE_RATE

from .devices import DeviceError, InputDevice

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "BLOCK_S",
    "CHUNK_S",
    "DEFAULT_BUFFER_S",
    "MicCapture",
]


log = logging.getLogger("ichigo_stream.mic")

DEFAULT_BUFFER_S = 120.0  # audio captured during an outage, kept for the client (seconds)
BLOCK_S = 0.02  # PortAudio block: a steady meter, and small enough to add no latency
CHUNK_S = 0.05  # audio handed to the client per message while live
CATCH_UP_CHUNK_S = 1.0  # after an outage the backlog goes out in bigger chunks
CLOSE_TIMEOUT_S = 2.0  # a device that does not close by then is left to the exit
MARKS_KEPT = 4096  # timeline -> capture-time marks kept for latencies (~200 s of chunks)


# -- capture --------------------------------------------------------------------------------------


class MicCapture:
    """A PortAudio input stream -> 16 kHz int16 chunks, as an async iterator (chunks()).

    Loop-side state only changes on the loop thread: the PortAudio thread touches nothing
    but call_soon_threadsafe.
    """

    def __init__(
        self,
        sd: ModuleType,
        device: InputDevice,
        loop: asyncio.AbstractEventLoop,
        *,
        buffer_s: float = DEFAULT_BUFFER_S,
    ) -> None:
        self._sd = sd
        self.device = device
        self._loop = loop
        self.rate = round(device.default_rate)
        self.channels = 1
        self._limit = max(1, round(buffer_s * SAMPLE_RATE))
        self._stream: Any = None
        # One resampler for the whole capture, the one the server's stream decoder uses:
        # the same samples in the same blocks give the same 16 kHz audio on both sides.
        self._resampler = StreamResampler(self.rate, SAMPLE_RATE)
        # (16 kHz int16 samples, monotonic time its last sample reached us), oldest first
        self._queue: deque[tuple[np.ndarray, float]] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._ended = False
        self._stop_requested = False
        self._level = 0.0  # highest block RMS since the last take_level()
        self.frames_in = 0
        self.overflows = 0
        self.dropped = 0  # 16 kHz samples dropped by the outage bound
        self.sent = 0  # 16 kHz samples handed to the client: the stream's timeline
        self._marks: deque[tuple[int, float]] = deque(maxlen=MARKS_KEPT)
        self.stopped_by_device = False
        self.close_hung = False  # PortAudio's close never returned: exit without it
        self._last_block_at = time.monotonic()
        self._finishing: asyncio.Task[None] | None = None

    def start_finishing(self) -> None:
        """finish() in the background (from a signal or device callback), once."""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self.finish())

    # -- open / close ------------------------------------------------------------------

    def open(self) -> None:
        """Start capturing; DeviceError if the device cannot be opened (busy, gone, ...)."""
        sd = self._sd
        # Mono is what the server wants and what most devices give; some hardware only
        # opens in stereo, so fall back to two channels and downmix here.
        tries = [1] + ([2] if self.device.channels >= 2 else [])
        first: Exception | None = None
        for channels in tries:
            try:
                stream = sd.InputStream(
                    samplerate=self.rate,
                    blocksize=max(1, round(self.rate * BLOCK_S)),
                    device=self.device.index,
                    channels=channels,
                    dtype="float32",
                    callback=self._callback,
                    finished_callback=self._finished,
                )
            except (sd.PortAudioError, ValueError) as e:
                first = first or e
                continue
            self.channels = channels
            break
        else:
            raise DeviceError(
                f"cannot open input device {self.device.index} {self.device.name!r} at "
                f"{self.rate} Hz: {first} (busy, unplugged or not an input?)"
            )
        try:
            stream.start()
        except sd.PortAudioError as e:
            with contextlib.suppress(Exception):
                stream.close(ignore_errors=True)
            raise DeviceError(
                f"cannot start input device {self.device.index} {self.device.name!r}: {e}"
            ) from None
        self._stream = stream

    async def finish(self) -> None:
        """Stop capturing, hand over what is left, end chunks(). Idempotent."""
        self._stop_requested = True
        stream, self._stream = self._stream, None
        try:
            if stream is not None and not await _close_in_thread(stream, CLOSE_TIMEOUT_S):
                self.close_hung = True
                log.warning("the input device did not close within %g s", CLOSE_TIMEOUT_S)
        finally:
            if not self._ended:
                tail = self._resampler.flush()
                if len(tail):
                    self._push(to_pcm16(tail), time.monotonic())
                self._ended = True
                self._wake.set()

    def abort(self) -> None:
        """Last-resort close from the loop thread (exiting at once)."""
        self._stop_requested = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)

    # -- the PortAudio thread --------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Nothing here may block or wait on the loop: copy, timestamp, hand over.
        try:  # noqa: SIM105 -- not contextlib.suppress: no object per block on this thread
            self._loop.call_soon_threadsafe(
                self._on_block, indata.copy(), time.monotonic(), bool(status.input_overflow)
            )
        except RuntimeError:  # the loop is closed: the app is exiting
            pass

    def _finished(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_stream_finished)

    # -- the loop thread -----------------------------------------------------------------

    def _on_stream_finished(self) -> None:
        if not self._stop_requested:  # PortAudio stopped on its own: the device went away
            self.stopped_by_device = True
            self.start_finishing()

    def _on_block(self, block: np.ndarray, at: float, overflow: bool) -> None:
        if self._ended:  # after the resampler's flush: too late for this stream
            return
        self._last_block_at = at
        if overflow:
            self.overflows += 1
        # A driver's NaN burst is heard as silence (audio.silence_non_finite says why).
        mono = silence_non_finite(downmix(block))
        self.frames_in += len(mono)
        if len(mono):
            self._level = max(self._level, float(np.sqrt(np.mean(np.square(mono)))))
        out = self._resampler.push(mono)
        if len(out):
            self._push(to_pcm16(out), at)

    def _push(self, pcm: np.ndarray, at: float) -> None:
        self._queue.append((pcm, at))
        self._queued += len(pcm)
        # Over the bound only while the client is not reading (an outage): drop the oldest,
        # so what is sent when the connection is back is the most recent speech.
        while self._queued > self._limit:
            head, head_at = self._queue[0]
            excess = self._queued - self._limit
            if len(head) <= excess:
                self._queue.popleft()
                cut = len(head)
            else:
                self._queue[0] = (head[excess:], head_at)
                cut = excess
            self._queued -= cut
            self.dropped += cut
        if self._queued >= round(CHUNK_S * SAMPLE_RATE):
            self._wake.set()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """16 kHz int16 mono chunks until finish(): the client's audio source."""
        live = round(CHUNK_S * SAMPLE_RATE)
        while True:
            while self._queued < live and not self._ended:
                self._wake.clear()
                await self._wake.wait()
            if self._queued == 0:
                return
            yield self._take(round(CATCH_UP_CHUNK_S * SAMPLE_RATE))

    def _take(self, most: int) -> np.ndarray:
        parts = []
        taken = 0
        while self._queue and taken < most:
            pcm, at = self._queue.popleft()
            room = most - taken
            if len(pcm) > room:
                # The rest stays queued; its first sample's time is what this part ends at.
                self._queue.appendleft((pcm[room:], at))
                at -= (len(pcm) - room) / SAMPLE_RATE
                pcm = pcm[:room]
            parts.append(pcm)
            taken += len(pcm)
            self._marks.append((self.sent + taken, at))
        self._queued -= taken
        self.sent += taken
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    # -- what the view shows ---------------------------------------------------------------

    def take_level(self) -> float:
        """The loudest block's RMS in dBFS since the last call."""
        level, self._level = self._level, 0.0
        return 20 * math.log10(level) if level > 0 else -math.inf

    @property
    def silent_for_s(self) -> float:
        """Time since the device last delivered a block (a stalled or vanished source)."""
        return time.monotonic() - self._last_block_at

    @property
    def heard_s(self) -> float:
        return self.frames_in / self.rate

    @property
    def buffered_s(self) -> float:
        return self._queued / SAMPLE_RATE

    def captured_at(self, seconds: float) -> float | None:
        """When the sample at `seconds` on the timeline reached us (monotonic), if known."""
        sample = round(seconds * SAMPLE_RATE)
        later: tuple[int, float] | None = None
        for mark in reversed(self._marks):
            if mark[0] < sample:
                break
            later = mark
        if later is None:
            return None
        return later[1] - (later[0] - sample) / SAMPLE_RATE


def _close_stream(stream: Any) -> None:
    # abort, not stop: stop waits for the capture thread, which on a device that stopped
    # delivering (an ALSA/PulseAudio source with no data) waits forever; abort returns at
    # once and loses at most the block in flight.
    try:
        stream.abort(ignore_errors=True)
    finally:
        stream.close(ignore_errors=True)


async def _close_in_thread(stream: Any, timeout: float) -> bool:
    """Close off the loop, which must keep drawing and receiving; False if it hangs.

    A daemon thread, not asyncio.to_thread: asyncio.run waits for its executor's threads
    at exit, so a hung close would hang the exit too. Blocks PortAudio delivered before
    the close returned were queued on the loop before this resumes, so none is lost.
    """
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def set_closed() -> None:
        if not closed.done():
            closed.set_result(None)

    def work() -> None:
        try:
            _close_stream(stream)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(set_closed)

    threading.Thread(target=work, name="ichigo-mic-close", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(closed), timeout)
    except asyncio.TimeoutError:
        return False
    return True
