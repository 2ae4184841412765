"""The `ichigo-stream send` subcommand: stream an audio file to a server as if it were live.

The file is decoded to 16 kHz mono, sent as 16-bit PCM paced at --speed times real time, and
each segment is printed as it comes back. It uses ichigo_stream.client, so a lost connection
or a restarted server is survived the same way (reconnect, resend from the last segment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

import numpy as np

from ichigo_stream.cli_common import EXIT_OK, PROG, Command, open_output
from ichigo_stream.client import (
    DEFAULT_URL,
    ClientOptions,
    Connected,
    Done,
    ErrorEvent,
    Reconnecting,
    ReconnectPolicy,
    Segment,
    StartOptions,
    event_record,
    stream,
)
from ichigo_stream.constants import SAMPLE_RATE

from .common import add_connection_arguments, server_token, server_url
from .terminal_view import printable, reconnecting_line

CHUNK_S = 0.1  # paced chunks: what a live source would send
FAST_CHUNK_S = 0.5  # unpaced: fewer, larger messages

SEND_EPILOG = f"""\
stdout: one line per segment as it arrives, "[START - END] #INDEX  N tokens  TEXT"
(seconds on the stream's timeline; TEXT with --text), then the --llm-format rendering.
-o OUT.jsonl: every event as one JSON object a line: the server's messages as it names them
(speech_start, partial, segment, error, done) and the client's connection events
(connecting, connected with the server's ready inside, reconnecting, gave_up); segment
indices and done's totals are the client's, continuous across reconnects.
--speed 0 (or inf) sends as fast as the server accepts (the client keeps under the server's
default real-time limit). A lost connection is retried with backoff and resumed from the end
of the last segment received; --no-reconnect fails instead.
environment: ICHIGO_URL, ICHIGO_TOKEN (flags win). Default URL: {DEFAULT_URL}
"""


def _speed(text: str) -> float:
    value = float(text)
    if not value >= 0:  # `not` so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("file", metavar="FILE", help="audio file (anything ffmpeg decodes)")
    add_connection_arguments(parser)
    add(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X",
        help="pace at X times real time (default 1; 0 or inf: as fast as allowed)",
    )
    add("--partials", action="store_true", help="ask for partial results (written to -o only)")
    add("-o", "--output", metavar="OUT", help="write every event as JSON lines here")


def segment_line(segment: Segment) -> str:
    line = (
        f"[{segment.start:8.3f} - {segment.end:8.3f}] #{segment.segment:<3d} "
        f"{len(segment.tokens):4d} tokens"
    )
    if segment.text:
        line += f"  {segment.text.strip()}"
    if segment.llm:
        line += f"\n    {segment.llm}"
    return line


async def paced(audio: np.ndarray, speed: float) -> AsyncIterator[np.ndarray]:
    """The file in chunks, each released when it would have been spoken at `speed`.

    The schedule is absolute (from the first chunk), not a sleep per chunk: after a stall
    (a reconnect) the source catches up, as a live recording would have gone on meanwhile.
    """
    unpaced = speed == 0 or math.isinf(speed)
    step = round((FAST_CHUNK_S if unpaced else CHUNK_S) * SAMPLE_RATE)
    started = time.monotonic()
    for at in range(0, len(audio), step):
        if not unpaced:
            delay = started + at / SAMPLE_RATE / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield audio[at : at + step]


async def send_file(args: argparse.Namespace, out: TextIO | None) -> Done | None:
    """Stream the file, print what arrives; the stream's done (None if it never came)."""
    done, _ = await stream_file(args, out)
    return done


async def stream_file(args: argparse.Namespace, out: TextIO | None) -> tuple[Done | None, int]:
    """send_file, and how many times the connection was resumed."""
    from ichigo_stream.audio import load_audio

    audio = load_audio(args.file)
    options = ClientOptions(
        url=server_url(args),
        token=server_token(args),
        ssl=False if args.insecure else None,
        start=StartOptions(
            partials=args.partials,
            text=args.text,
            language=args.language,
            llm_format=args.llm_format,
        ),
        reconnect=None if args.no_reconnect else ReconnectPolicy(),
    )
    done: Done | None = None
    reconnects = 0
    async for event in stream(paced(audio, args.speed), options):
        if out is not None:
            out.write(json.dumps(event_record(event), ensure_ascii=False) + "\n")
            out.flush()
        if isinstance(event, Segment):
            print(segment_line(event), flush=True)
        elif isinstance(event, ErrorEvent):
            where = f" (segment {event.segment})" if event.segment is not None else ""
            note(f"server error {event.code}{where}: {event.message}")
        elif isinstance(event, Reconnecting):
            note(reconnecting_line(event))
        elif isinstance(event, Connected) and event.resumed:
            reconnects = event.connection
            note(f"reconnected, resuming at {event.offset:.3f} s")
        elif isinstance(event, Done):
            done = event
        # GaveUp: ConnectionLost follows, and the CLI prints it as its error line.
    return done, reconnects


def note(text: str) -> None:
    """A line on stderr; server text in it cannot reach the terminal as control codes."""
    print(f"{PROG}: {printable(text)}", file=sys.stderr, flush=True)


def _run_send(args: argparse.Namespace) -> int:
    # The client library's warnings (e.g. a trailing partial frame), like the CLI's own lines.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if args.output is None:
        done, reconnects = asyncio.run(stream_file(args, None))
    else:
        with open_output(args.output) as out:
            done, reconnects = asyncio.run(stream_file(args, out))
    if done is not None:
        note(
            f"done: {done.segments} segment(s), {done.audio_seconds:.2f} s of audio, "
            f"{reconnects} reconnect(s)"
        )
    return EXIT_OK


SEND_COMMAND = Command(
    "send",
    "stream an audio file to a server, paced like live audio, printing segments",
    add_send_arguments,
    _run_send,
    SEND_EPILOG,
)
