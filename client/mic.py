"""The `ichigo-stream mic` subcommand: live microphone -> server -> segments on the terminal.

Capture. sounddevice (PortAudio) records at the device's own default rate, because asking a
device for 16 kHz makes PortAudio or the driver resample with whatever quality it has, or
fail. The PortAudio callback runs on PortAudio's thread and must never block: it only copies
the block and hands it to the event loop with call_soon_threadsafe (a lock-free append and a
wake-up byte). Everything else runs on the loop: level metering, downmix, soxr resampling to
16 kHz (so the network carries 32 kB/s of int16 instead of e.g. 192 kB/s of float32 at
48 kHz) and queueing.

Outages. ichigo_stream.client reconnects and resends what it already sent since the last
segment end, but does not read the audio iterator while disconnected. So the captured audio
waits here, in a queue bounded by --buffer-s (oldest audio dropped first, counted and shown),
and is handed over in larger chunks once the client reads again.

Ctrl-C: stop capturing, flush the resampler, end the audio iterator; the client then sends
stop, and the server finishes the open segment and sends done. A second Ctrl-C (or
--stop-timeout-s passing) exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from ichigo_stream.audio import StreamResampler, downmix, silence_non_finite, to_pcm16
from ichigo_stream.cli_common import (
    EXIT_ERROR,
    EXIT_FILES_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    error_line,
)
from ichigo_stream.client import (
    DEFAULT_URL,
    ClientOptions,
    Connected,
    Connecting,
    Done,
    ErrorMessage,
    GaveUp,
    Partial,
    Reconnecting,
    ReconnectPolicy,
    Segment,
    SpeechStart,
    StartOptions,
    StreamClient,
    StreamEvent,
    event_record,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.terminal import printable

from .common import add_connection_arguments, server_url
from .terminal_view import (
    LiveView,
    MicStatus,
    PlainView,
    View,
    reconnecting_line,
    segment_line,
)

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "MIC_COMMAND",
    "DeviceError",
    "InputDevice",
    "MicCapture",
    "MicOptions",
    "describe_devices",
    "find_device",
    "input_devices",
]

log = logging.getLogger("ichigo_stream.mic")

BLOCK_S = 0.02  # PortAudio block: a steady meter, and small enough to add no latency
CHUNK_S = 0.05  # audio handed to the client per message while live
CATCH_UP_CHUNK_S = 1.0  # after an outage the backlog goes out in bigger chunks
REFRESH_S = 0.1  # status redraws
CLOSE_TIMEOUT_S = 2.0  # a device that does not close by then is left to the exit
MARKS_KEPT = 4096  # timeline -> capture-time marks kept for latencies (~200 s of chunks)

MIC_EPILOG = f"""\
The live view (stdout a terminal): input level, speech or silence (from the server's VAD),
the open segment's partial tokens, and each final segment as a permanent line:
  [START - END] #INDEX  N tokens  TEXT  (latency L ms / endpoint E ms)
START/END are seconds since capture began; latency runs from the capture of the segment's
last sample to its arrival here (it includes the VAD's wait for silence); endpoint is the
server's own time after deciding the segment ended. Not a terminal (or --plain): the segment
lines only, notes on stderr.
--save FILE.jsonl: every event as one JSON object a line, as `send -o` writes them.
Ctrl-C: stop, wait for the last segment and done (--stop-timeout-s), exit 0; a second
Ctrl-C quits at once (130). A lost connection is retried and resumed without losing the
microphone's audio (up to --buffer-s captured while disconnected).
exit status: 0 done; 1 stopped but the last segment did not come within the timeout;
2 device, connection or usage errors; 130 interrupted.
environment: ICHIGO_URL, ICHIGO_TOKEN (flags win). Default URL: {DEFAULT_URL}
"""


class DeviceError(IchigoStreamError):
    """No usable input device: the message names the problem; the caller lists the devices."""


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MicOptions:
    url: str = DEFAULT_URL
    token: str | None = None
    insecure: bool = False
    device: str | None = None  # an index or a (sub)name; None: the system's default input
    text: bool = False
    language: str | None = None
    llm_format: str | None = None
    partials: bool = True
    save: str | None = None
    reconnect: bool = True
    buffer_s: float = 120.0
    stop_timeout_s: float = 15.0
    plain: bool = False

    def client_options(self) -> ClientOptions:
        return ClientOptions(
            url=self.url,
            token=self.token,
            ssl=False if self.insecure else None,
            start=StartOptions(
                partials=self.partials,
                text=self.text,
                language=self.language,
                llm_format=self.llm_format,
            ),
            # A live source cannot pause: retry quickly and for as long as the buffer lasts,
            # but fail at once if the server is not there to begin with (a typo in the URL).
            reconnect=ReconnectPolicy(
                max_delay_s=2.0, max_attempts=None, max_total_s=max(60.0, self.buffer_s)
            )
            if self.reconnect
            else None,
        )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:  # `not` so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_mic_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add_connection_arguments(parser)
    # Not --device: everywhere else that is the model's torch device (ICHIGO_DEVICE=cuda must
    # not pick a microphone); --device stays as an alias on the command line.
    add(
        "--input-device",
        "--device",
        metavar="N|NAME",
        help="input device: index or (part of) its name (env ICHIGO_INPUT_DEVICE)",
    )
    add("--list-devices", action="store_true", help="list the input devices and exit")
    add("--save", metavar="FILE.jsonl", help="write every event as JSON lines here")
    add("--no-partials", action="store_true", help="do not ask for partial results")
    add("--plain", action="store_true", help="plain lines even on a terminal")
    add(
        "--buffer-s",
        type=_positive,
        default=MicOptions.buffer_s,
        metavar="S",
        help="audio kept while disconnected; the oldest is dropped beyond it (default 120)",
    )
    add(
        "--stop-timeout-s",
        type=_positive,
        default=MicOptions.stop_timeout_s,
        metavar="S",
        help="after Ctrl-C, how long to wait for the last segment (default 15)",
    )


def mic_options(args: argparse.Namespace) -> MicOptions:
    return MicOptions(
        url=server_url(args),
        token=args.token or None,
        insecure=args.insecure,
        device=args.input_device,
        text=args.text,
        language=args.language,
        llm_format=args.llm_format,
        partials=not args.no_partials,
        save=args.save,
        reconnect=not args.no_reconnect,
        buffer_s=args.buffer_s,
        stop_timeout_s=args.stop_timeout_s,
        plain=args.plain,
    )


# -- devices --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int  # the most input channels it offers
    default_rate: float
    hostapi: str
    is_default: bool


def import_sounddevice() -> ModuleType:
    """sounddevice, or a DeviceError saying what to install (it loads PortAudio on import)."""
    try:
        import sounddevice
    except ImportError:
        raise DeviceError(
            "the microphone client needs sounddevice: pip install 'ichigo-stream[mic]'"
        ) from None
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        raise DeviceError(f"cannot load PortAudio ({e}): install libportaudio2") from None
    return sounddevice


def input_devices(sd: ModuleType) -> list[InputDevice]:
    try:
        default = sd.default.device[0]
        default = int(default) if default is not None else -1
    except (TypeError, ValueError, sd.PortAudioError):
        default = -1
    found = []
    for info in sd.query_devices():
        if info["max_input_channels"] < 1:
            continue
        try:
            hostapi = sd.query_hostapis(info["hostapi"])["name"]
        except Exception:  # a name is only decoration in the list
            hostapi = "?"
        found.append(
            InputDevice(
                index=info["index"],
                name=info["name"],
                channels=info["max_input_channels"],
                default_rate=float(info["default_samplerate"]),
                hostapi=hostapi,
                is_default=info["index"] == default,
            )
        )
    return found


def describe_devices(devices: Sequence[InputDevice]) -> str:
    if not devices:
        return (
            "input devices: none (is a microphone connected? On Linux: is PulseAudio or "
            "PipeWire running, and ALSA's pulse plugin installed?)"
        )
    width = max(len(d.name) for d in devices)
    lines = ["input devices (--device INDEX or NAME; * the default):"]
    for d in devices:
        mark = "*" if d.is_default else " "
        lines.append(
            f"{mark} {d.index:3d}  {d.name:<{width}}  {d.channels:2d} ch  "
            f"{d.default_rate:6.0f} Hz  {d.hostapi}"
        )
    return "\n".join(lines)


def find_device(devices: Sequence[InputDevice], spec: str | None) -> InputDevice:
    """--device -> one input device: an index, an exact name, or a unique part of a name."""
    if not devices:
        raise DeviceError("no input devices found")
    if spec is None:
        default = [d for d in devices if d.is_default]
        if not default:
            raise DeviceError("there is no default input device: choose one with --device")
        return default[0]
    if spec.strip().lstrip("-").isdigit():
        index = int(spec)
        for d in devices:
            if d.index == index:
                return d
        raise DeviceError(f"input device {index} not found (or it has no input channels)")
    wanted = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index} {d.name!r}" for d in partial)
        raise DeviceError(f"input device name {spec!r} is ambiguous: {names}; use the index")
    raise DeviceError(f"input device {spec!r} not found")


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
        buffer_s: float = MicOptions.buffer_s,
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


# -- the app --------------------------------------------------------------------------------------


class MicApp:
    def __init__(self, options: MicOptions, view: View) -> None:
        self.options = options
        self.view = view
        self.status = MicStatus(url=options.url)
        self.capture: MicCapture | None = None
        self._save: TextIO | None = None
        self._main: asyncio.Task[int] | None = None
        self._stopping = False
        self._timed_out = False
        self._timeout_reported = False
        self._done: Done | None = None
        self._reconnects = 0
        self._outage = False  # between a lost connection and the next one

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First Ctrl-C: stop capturing and let the last segment come back."""
        if self._stopping:
            self.quit_now()
            return
        self._stopping = True
        self.status.stopping = True
        self.view.note("stopping: waiting for the last segment (Ctrl-C again to quit now)")
        self._refresh()
        if self.capture is not None:
            self.capture.start_finishing()
        asyncio.get_running_loop().call_later(self.options.stop_timeout_s, self._give_up)

    def _give_up(self) -> None:
        if self._main is not None and not self._main.done():
            self._timed_out = True
            self._main.cancel()
            # Closing the connection waits for the server's close frame (up to websockets'
            # close_timeout): a server that stopped answering must not hold the exit.
            asyncio.get_running_loop().call_later(3.0, self.quit_now, EXIT_FILES_FAILED)

    def quit_now(self, status: int = EXIT_INTERRUPTED) -> None:
        """Second Ctrl-C: no clean-up that could wait on the network or the device."""
        with contextlib.suppress(Exception):
            if status == EXIT_INTERRUPTED:
                self.view.note("interrupted")
            self.view.close()
            if self._timed_out and not self._timeout_reported:
                error_line(self._timeout_message())
        with contextlib.suppress(Exception):
            if self._save is not None:
                self._save.flush()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)

    def _timeout_message(self) -> str:
        return (
            f"no final result within {self.options.stop_timeout_s:g} s of stopping; "
            "the last segment may be lost"
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self, sd: ModuleType, device: InputDevice) -> int:
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        capture = MicCapture(sd, device, loop, buffer_s=self.options.buffer_s)
        if self.options.save is not None:
            try:
                self._save = open(self.options.save, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise IchigoStreamError(f"cannot write {self.options.save}: {e.strerror}") from e
        try:
            capture.open()  # DeviceError goes up before anything is connected
        except BaseException:
            if self._save is not None:
                self._save.close()
            raise
        self.capture = capture
        self.view.note(
            f"listening on {device.index} {device.name!r} at {capture.rate} Hz "
            f"({capture.channels} ch) -> {SAMPLE_RATE} Hz; Ctrl-C to stop"
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        ticker = asyncio.ensure_future(self._tick())
        try:
            return await self._stream(capture)
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self.view.close()
            error_line(self._timeout_message())
            self._timeout_reported = True
            return EXIT_FILES_FAILED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            ticker.cancel()
            capture.abort()
            self._refresh()
            self.view.close()
            if self._save is not None:
                self._save.close()

    async def _stream(self, capture: MicCapture) -> int:
        client = StreamClient(self.options.client_options())
        async for event in client.events(capture.chunks()):
            self._on_event(event, capture)
        if capture.stopped_by_device and not self._stopping:
            self.view.note(self._summary())
            error_line(f"input device {capture.device.name!r} stopped delivering audio")
            return EXIT_FILES_FAILED
        self.view.note(self._summary())
        return EXIT_OK

    def _on_event(self, event: StreamEvent, capture: MicCapture) -> None:
        now = time.monotonic()
        if self._save is not None:
            self._save.write(json.dumps(event_record(event), ensure_ascii=False) + "\n")
            self._save.flush()  # a reader (or a crash) sees every event as it happened
        status = self.status
        if isinstance(event, Connecting | Reconnecting | Connected | GaveUp):
            self._on_connection_event(event)
        elif isinstance(event, SpeechStart):
            status.speaking = True
            status.segment = event.segment
            status.speech_start = event.start
            status.partial_tokens, status.partial_span = (), None
        elif isinstance(event, Partial):
            status.speaking = True
            status.segment = event.segment
            status.partial_tokens = event.tokens
            status.partial_span = (event.start, event.end)
        elif isinstance(event, Segment):
            captured = capture.captured_at(event.end)
            latency = None if captured is None else (now - captured) * 1000
            status.segments += 1
            if status.segment is None or status.segment <= event.segment:
                status.speaking = False
                status.segment = None
                status.partial_tokens, status.partial_span = (), None
            self.view.line(segment_line(event, latency))
        elif isinstance(event, ErrorMessage):
            where = f" (segment {event.segment})" if event.segment is not None else ""
            self.view.note(printable(f"server error {event.code}{where}: {event.message}"))
        elif isinstance(event, Done):
            self._done = event
        self._refresh()

    def _on_connection_event(self, event: Connecting | Reconnecting | Connected | GaveUp) -> None:
        status = self.status
        if isinstance(event, Connecting):
            status.connection = "reconnecting" if self._outage else "connecting"
            if event.attempt > 1:
                status.connection += f" (attempt {event.attempt})"
        elif isinstance(event, Reconnecting):
            # One note per outage: every retry's line would flood the scrollback.
            if not self._outage:
                self.view.note(reconnecting_line(event))
            self._outage = True
            status.connection = "reconnecting"
        elif isinstance(event, Connected):
            status.connection = "connected"
            self._outage = False
            if event.resumed:
                self._reconnects = event.connection
                self.view.note(f"reconnected: resuming at {event.offset:.2f} s")
        else:  # GaveUp: ConnectionLost follows, and the CLI prints it as its error line
            status.connection = "disconnected"

    async def _tick(self) -> None:
        while True:
            self._refresh()
            await asyncio.sleep(REFRESH_S)

    def _refresh(self) -> None:
        capture, status = self.capture, self.status
        if capture is not None:
            status.level_db = capture.take_level()
            status.heard_s = capture.heard_s
            status.buffered_s = capture.buffered_s
            status.overflows = capture.overflows
            status.dropped_s = capture.dropped / SAMPLE_RATE
            status.no_audio_s = 0.0 if status.stopping else capture.silent_for_s
        self.view.refresh(status)

    def _summary(self) -> str:
        done, capture = self._done, self.capture
        text = "done"
        if done is not None:
            text += (
                f": {done.segments} segment(s), {done.audio_seconds:.2f} s of audio, "
                f"{self._reconnects} reconnect(s)"
            )
        if capture is not None and (capture.overflows or capture.dropped):
            text += (
                f"; {capture.overflows} input overflow(s), "
                f"{capture.dropped / SAMPLE_RATE:.2f} s dropped while disconnected"
            )
        return text


def _make_view(options: MicOptions) -> View:
    if not options.plain and sys.stdout.isatty():
        return LiveView(sys.stdout, color=not os.environ.get("NO_COLOR"))
    return PlainView()


def _device_failure(message: str, sd: ModuleType | None) -> int:
    error_line(message)
    if sd is not None:
        with contextlib.suppress(Exception):
            print(describe_devices(input_devices(sd)), file=sys.stderr, flush=True)
    return EXIT_ERROR


def _run_mic(args: argparse.Namespace) -> int:
    options = mic_options(args)
    sd = None
    try:
        sd = import_sounddevice()
        devices = input_devices(sd)
        if args.list_devices:
            print(describe_devices(devices), flush=True)
            return EXIT_OK
        device = find_device(devices, options.device)
    except DeviceError as e:
        return _device_failure(str(e), sd)
    except Exception as e:
        if sd is not None and isinstance(e, sd.PortAudioError):  # listing the devices failed
            return _device_failure(f"PortAudio: {e}", sd)
        raise
    view = _make_view(options)
    app = MicApp(options, view)
    try:
        status = asyncio.run(app.run(sd, device))
        if app.capture is not None and app.capture.close_hung:
            # sounddevice's exit handler would wait on the hung stream forever.
            view.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status
    except DeviceError as e:
        view.close()
        return _device_failure(str(e), sd)
    finally:  # before the CLI prints a ClientError as its one error line (exit 2)
        view.close()


MIC_COMMAND = Command(
    "mic",
    "stream the microphone to a server and show segments live",
    add_mic_arguments,
    _run_mic,
    MIC_EPILOG,
)
