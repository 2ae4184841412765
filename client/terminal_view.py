"""The terminal side of `ichigo-stream mic`: permanent segment lines, a redrawn status area.

LiveView (stdout is a terminal): final segments and notes scroll up as ordinary lines, and a
few status lines below them are redrawn in place with plain ANSI cursor moves (no curses:
it would take over the whole screen, and a user wants the segments in the scrollback).
PlainView (stdout is a file or a pipe): one line per segment on stdout, notes on stderr,
nothing redrawn, so the output can be parsed.

Nothing here knows about sounddevice or the network: the app fills a MicStatus and calls
the view; the view only formats and writes.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass
from typing import Protocol, TextIO

from ichigo_stream.cli_common import PROG
from ichigo_stream.client import Reconnecting, Segment
from ichigo_stream.terminal import printable

__all__ = [
    "LiveView",
    "MicStatus",
    "PlainView",
    "View",
    "level_meter",
    "reconnecting_line",
    "segment_line",
    "status_lines",
]

METER_WIDTH = 20
METER_FLOOR_DB = -60.0  # the meter's left end: room noise and below read as empty
NO_AUDIO_S = 2.0  # a device silent this long (not quiet: no blocks at all) is flagged
PARTIAL_TOKENS = 24  # at most this many of the newest partial tokens are shown
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CLEAR_BELOW = "\x1b[J"
SPEECH_STYLE, SILENCE_STYLE, WARN_STYLE, RESET = "\x1b[1;32m", "\x1b[2m", "\x1b[1;33m", "\x1b[0m"


@dataclass
class MicStatus:
    """What the status area shows; mutable: the app updates it as audio and events arrive."""

    url: str = ""
    connection: str = "connecting"  # from the client's connection events, as shown
    speaking: bool = False
    segment: int | None = None  # the open segment's index while speaking
    speech_start: float | None = None  # its start on the stream's timeline (s)
    partial_tokens: tuple[int, ...] = ()
    partial_span: tuple[float, float] | None = None
    level_db: float = -math.inf
    heard_s: float = 0.0  # audio captured so far
    buffered_s: float = 0.0  # captured but not yet handed to the client (an outage)
    overflows: int = 0
    dropped_s: float = 0.0
    segments: int = 0
    stopping: bool = False
    no_audio_s: float = 0.0  # since the device last delivered audio


class View(Protocol):
    def line(self, text: str) -> None:
        """A permanent line: a segment."""

    def note(self, text: str) -> None:
        """A permanent message: connection changes, warnings, the final summary."""

    def refresh(self, status: MicStatus) -> None:
        """Redraw the status area (a no-op where nothing is redrawn)."""

    def close(self) -> None:
        """Leave the terminal as it was found (idempotent)."""


def segment_line(segment: Segment, latency_ms: float | None = None, *, llm: bool = True) -> str:
    """`[START - END] #I  N tokens  TEXT  (latency L ms / endpoint E ms)` (+ the LLM line).

    latency: from the capture of the segment's last audio sample to the segment's arrival,
    so it includes the VAD's wait for silence; endpoint: the server's own time from the
    endpoint decision to sending (the protocol's endpoint_ms).
    """
    text = f"[{segment.start:7.2f} - {segment.end:7.2f}] #{segment.segment:<3d} "
    text += f"{len(segment.tokens):4d} tokens"
    if segment.text and segment.text.strip():
        text += f"  {printable(segment.text.strip())}"
    timing = []
    if latency_ms is not None:
        timing.append(f"latency {latency_ms:.0f} ms")
    if segment.endpoint_ms is not None:
        timing.append(f"endpoint {segment.endpoint_ms:.0f} ms")
    if timing:
        text += f"  ({' / '.join(timing)})"
    if llm and segment.llm:
        text += f"\n    {printable(segment.llm)}"
    return text


def reconnecting_line(event: Reconnecting) -> str:
    """A Reconnecting event as a note (its reason may quote the server: made printable)."""
    if event.delay_s == 0:
        text = f"{event.reason}; reconnecting"
    else:
        text = f"{event.reason}; retrying in {event.delay_s:.2f} s (attempt {event.attempt})"
    return printable(text)


def level_meter(level_db: float, width: int = METER_WIDTH) -> str:
    filled = 0
    if level_db > METER_FLOOR_DB:
        filled = min(width, round((level_db - METER_FLOOR_DB) / -METER_FLOOR_DB * width))
    shown = f"{level_db:4.0f}" if math.isfinite(level_db) else "-inf"
    return f"[{'#' * filled}{'-' * (width - filled)}] {shown} dBFS"


def status_lines(status: MicStatus, width: int = 100) -> list[str]:
    """The status area, unstyled (LiveView styles the first word); `width` decides how many
    of the newest partial tokens fit."""
    if status.stopping:
        state = "STOPPING"
    elif status.speaking:
        state = "SPEECH  "
    else:
        state = "silence "
    first = f"{state} level {level_meter(status.level_db)}"
    if status.stopping:
        first += "  waiting for the last segment (Ctrl-C again: quit now)"
    elif status.no_audio_s >= NO_AUDIO_S:
        first += f"  NO AUDIO from the device for {status.no_audio_s:.0f} s"
    elif status.speaking and status.segment is not None and status.speech_start is not None:
        first += f"  segment #{status.segment} since {status.speech_start:.2f} s"
    second = (
        f"{status.connection}  {status.url}  heard {status.heard_s:.1f} s  "
        f"segments {status.segments}"
    )
    if status.buffered_s >= 0.5:  # routine chunking is ~0.05 s; more means an outage
        second += f"  buffered {status.buffered_s:.1f} s"
    if status.overflows or status.dropped_s:
        second += f"  overflows {status.overflows}  dropped {status.dropped_s:.2f} s"
    if status.partial_tokens and status.partial_span is not None:
        tokens = status.partial_tokens
        start, end = status.partial_span
        third = f"partial [{start:7.2f} - {end:7.2f}] {len(tokens)} tokens:"
        # The newest tokens are the news: drop the oldest until the row fits.
        room = width - 1 - len(third) - len(" ...")
        shown: list[str] = []
        for token in reversed(tokens[-PARTIAL_TOKENS:]):
            if room < len(str(token)) + 1:
                break
            shown.append(str(token))
            room -= len(str(token)) + 1
        more = " ..." if len(shown) < len(tokens) else ""
        third += more + "".join(f" {t}" for t in reversed(shown))
    else:
        third = "partial -"
    return [first, second, third]


def _fit(text: str, width: int) -> str:
    """One screen row: a status line that wrapped would throw off the cursor moves."""
    return text if len(text) < width else text[: max(0, width - 2)] + "~"


class LiveView:
    """Permanent lines scroll above a status area that is redrawn in place."""

    def __init__(self, out: TextIO | None = None, *, color: bool = True) -> None:
        self._out = out or sys.stdout
        self._color = color
        # Status rows on screen now. The cursor is parked at the start of the row below
        # them, not at the end of the last: what the terminal itself echoes there (the "^C"
        # of a Ctrl-C, typed keys) then cannot wrap a row and throw off the next redraw,
        # and the next redraw erases it.
        self._drawn = 0
        self._pending: list[str] = []
        self._status: list[str] = []
        self._closed = False
        self._write(HIDE_CURSOR)

    def line(self, text: str) -> None:
        self._pending.append(text)
        self._draw()

    def note(self, text: str) -> None:
        self.line(f"-- {text}")

    def refresh(self, status: MicStatus) -> None:
        self._status = status_lines(status, shutil.get_terminal_size((100, 24)).columns)
        self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._status = []
        self._draw()
        self._closed = True
        self._write(SHOW_CURSOR)

    def _draw(self) -> None:
        if self._closed:
            return
        width = shutil.get_terminal_size((100, 24)).columns
        parts = [self._erase()]
        parts += [f"{line}\n" for line in self._pending]
        self._pending.clear()
        rows = [self._styled(_fit(row, width)) for row in self._status]
        parts += [f"{row}\n" for row in rows]
        self._drawn = len(rows)
        self._write("".join(parts))  # one write: the terminal never shows half a frame

    def _erase(self) -> str:
        return f"\r\x1b[{self._drawn}A{CLEAR_BELOW}" if self._drawn else f"\r{CLEAR_BELOW}"

    def _styled(self, row: str) -> str:
        if not self._color:
            return row
        for word, style in (
            ("SPEECH", SPEECH_STYLE),
            ("silence", SILENCE_STYLE),
            ("STOPPING", WARN_STYLE),
        ):
            if row.startswith(word):
                return f"{style}{word}{RESET}{row[len(word) :]}"
        return row

    def _write(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._out.flush()


class PlainView:
    """Segments as lines on stdout, notes on stderr: for pipes, files and logs."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def note(self, text: str) -> None:
        print(f"{PROG}: {text}", file=self._err, flush=True)

    def refresh(self, status: MicStatus) -> None:
        pass

    def close(self) -> None:
        pass
