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
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from ichigo_stream.cli_common import EXIT_OK, PROG, Command, open_output
from ichigo_stream.client import (
    DEFAULT_URL,
    ClientOptions,
    Connected,
    Done,
    ErrorMessage,
    Reconnecting,
    ReconnectPolicy,
    Segment,
    event_record,
    stream,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.terminal import printable

from .common import (
    add_connection_arguments,
    add_speed_argument,
    client_options,
    connection_fields,
)
from .terminal_view import reconnecting_line

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
URL (or --url, ICHIGO_URL) defaults to {DEFAULT_URL};
--token (ICHIGO_TOKEN) is the secret the server was started with (its --auth-token).
"""


@dataclass(frozen=True)
class SendOptions:
    """What `send` streams, where, and how: built once from the command line (or by the demo)."""

    file: str
    url: str = DEFAULT_URL
    token: str | None = None
    insecure: bool = False
    text: bool = False
    language: str | None = None
    llm_format: str | None = None
    partials: bool = False
    reconnect: bool = True
    speed: float = 1.0  # times real time; 0 or inf: as fast as allowed
    output: str | None = None  # every event as JSON lines here
    vad: VadOptions = field(default_factory=VadOptions)  # the session's, sent in start

    def client_options(self) -> ClientOptions:
        return client_options(self, ReconnectPolicy())


def send_options(args: argparse.Namespace) -> SendOptions:
    return SendOptions(
        file=args.file,
        **connection_fields(args),
        partials=args.partials,
        speed=args.speed,
        output=args.output,
    )


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("file", metavar="FILE", help="audio file (anything ffmpeg decodes)")
    add_connection_arguments(parser)
    add_speed_argument(parser)
    add("--partials", action="store_true", help="ask for partial results (written to -o only)")
    add(
        "-o",
        "--output",
        metavar="PATH",
        help="write every event as JSON lines here (default: none)",
    )


def segment_line(segment: Segment) -> str:
    """`[START - END] #I  N tokens  TEXT` (+ the LLM line); server text made printable."""
    line = (
        f"[{segment.start:8.3f} - {segment.end:8.3f}] #{segment.segment:<3d} "
        f"{len(segment.tokens):4d} tokens"
    )
    if segment.text:
        line += f"  {printable(segment.text.strip())}"
    if segment.llm:
        line += f"\n    {printable(segment.llm)}"
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


async def send_file(options: SendOptions, out: TextIO | None) -> Done | None:
    """Stream the file, print what arrives; the stream's done (None if it never came)."""
    done, _ = await stream_file(options, out)
    return done


async def stream_file(options: SendOptions, out: TextIO | None) -> tuple[Done | None, int]:
    """send_file, and how many times the connection was resumed."""
    from ichigo_stream.audio import load_audio

    audio = load_audio(options.file)
    done: Done | None = None
    reconnects = 0
    async for event in stream(paced(audio, options.speed), options.client_options()):
        if out is not None:
            out.write(json.dumps(event_record(event), ensure_ascii=False) + "\n")
            out.flush()
        if isinstance(event, Segment):
            print(segment_line(event), flush=True)
        elif isinstance(event, ErrorMessage):
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
    options = send_options(args)
    # The client library's warnings (e.g. a trailing partial frame), like the CLI's own lines.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if options.output is None:
        done, reconnects = asyncio.run(stream_file(options, None))
    else:
        with open_output(options.output) as out:
            done, reconnects = asyncio.run(stream_file(options, out))
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
