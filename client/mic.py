"""The `ichigo-stream mic` subcommand: live microphone -> server -> segments on the terminal.

Capture is capture.py, devices are devices.py, the terminal view is terminal_view.py; this
module is the command: its options, and the app that wires capture, client and view.

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
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

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
    StreamClient,
    StreamEvent,
    event_record,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.terminal import printable

from .capture import DEFAULT_BUFFER_S, MicCapture
from .common import (
    add_connection_arguments,
    client_options,
    connection_fields,
)
from .devices import (
    DeviceError,
    InputDevice,
    describe_devices,
    find_device,
    import_sounddevice,
    input_devices,
)
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
    "MicApp",
    "MicOptions",
    "add_mic_arguments",
    "mic_options",
]


log = logging.getLogger("ichigo_stream.mic")

REFRESH_S = 0.1  # status redraws

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
    buffer_s: float = DEFAULT_BUFFER_S
    stop_timeout_s: float = 15.0
    plain: bool = False
    vad: VadOptions = field(default_factory=VadOptions)  # the session's, sent in start

    def client_options(self) -> ClientOptions:
        # A live source cannot pause: retry quickly and for as long as the buffer lasts, but
        # fail at once if the server is not there to begin with (a typo in the URL).
        policy = ReconnectPolicy(
            max_delay_s=2.0, max_attempts=None, max_total_s=max(60.0, self.buffer_s)
        )
        return client_options(self, policy)


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
        metavar="DEVICE",
        help="input device: its index or (part of) its name, as --list-devices shows "
        "(default: the system's default input)",
    )
    add("--list-devices", action="store_true", help="list the input devices and exit")
    add(
        "--save",
        metavar="PATH",
        help="write every event as JSON lines here (default: none)",
    )
    add("--no-partials", action="store_true", help="do not ask for partial results")
    add("--plain", action="store_true", help="plain lines even on a terminal")
    add(
        "--buffer-s",
        type=_positive,
        default=MicOptions.buffer_s,
        metavar="S",
        help="audio kept while disconnected; the oldest is dropped beyond it "
        "(default: %(default)g)",
    )
    add(
        "--stop-timeout-s",
        type=_positive,
        default=MicOptions.stop_timeout_s,
        metavar="S",
        help="after Ctrl-C, how long to wait for the last segment (default: %(default)g)",
    )


def mic_options(args: argparse.Namespace) -> MicOptions:
    return MicOptions(
        **connection_fields(args),
        device=args.input_device,
        partials=not args.no_partials,
        save=args.save,
        buffer_s=args.buffer_s,
        stop_timeout_s=args.stop_timeout_s,
        plain=args.plain,
    )


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
