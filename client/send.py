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
    ErrorMessage,
    ReconnectPolicy,
    Segment,
    StartOptions,
    StreamDone,
    StreamReady,
    stream,
)
from ichigo_stream.constants import SAMPLE_RATE

from .common import add_connection_arguments, server_token, server_url

CHUNK_S = 0.1  # paced chunks: what a live source would send
FAST_CHUNK_S = 0.5  # unpaced: fewer, larger messages

SEND_EPILOG = f"""\
stdout: one line per segment as it arrives, "[START - END] #INDEX  N tokens  TEXT"
(seconds on the stream's timeline; TEXT with --text), then the --llm-format rendering.
-o OUT.jsonl: every event as one JSON object a line, as the server names them (ready,
speech_start, partial, segment, error, done); segment indices and done's totals are the
client's, continuous across reconnects.
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


async def send_file(args: argparse.Namespace, out: TextIO | None) -> StreamDone | None:
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
    done: StreamDone | None = None
    async for event in stream(paced(audio, args.speed), options):
        if out is not None:
            out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
            out.flush()
        if isinstance(event, Segment):
            print(segment_line(event), flush=True)
        elif isinstance(event, ErrorMessage):
            where = f" (segment {event.segment})" if event.segment is not None else ""
            print(f"{PROG}: server error {event.code}{where}: {event.message}", file=sys.stderr)
        elif isinstance(event, StreamReady) and event.connection:
            print(f"{PROG}: reconnected, resuming at {event.offset:.3f} s", file=sys.stderr)
        elif isinstance(event, StreamDone):
            done = event
    return done


def _run_send(args: argparse.Namespace) -> int:
    # Reconnect warnings from the client library, one line each, like the CLI's own.
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if args.output is None:
        done = asyncio.run(send_file(args, None))
    else:
        with open_output(args.output) as out:
            done = asyncio.run(send_file(args, out))
    if done is not None:
        print(
            f"{PROG}: done: {done.segments} segment(s), {done.audio_seconds:.2f} s of audio, "
            f"{done.reconnects} reconnect(s)",
            file=sys.stderr,
        )
    return EXIT_OK


SEND_COMMAND = Command(
    "send",
    "stream an audio file to a server, paced like live audio, printing segments",
    add_send_arguments,
    _run_send,
    SEND_EPILOG,
)
