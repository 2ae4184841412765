"""The `ichigo-stream demo` subcommand: the live demo in one command.

Starts a real server (`ichigo-stream serve` as a child process, with text decoding on),
streams the bundled speech sample (or FILE) through the file streamer at real time, prints
each segment with its text, then stops the server with SIGTERM (it drains and exits).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from dataclasses import dataclass

from ichigo_stream.assets import sample_path
from ichigo_stream.cli_common import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    Command,
    add_device_arguments,
    error_line,
)
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.server_process import ServerProcess

from .common import speed_arg
from .send import SendOptions, send_file

SAMPLE = sample_path()


@dataclass(frozen=True)
class DemoOptions:
    """The demo's file and pace, and the model options handed to its server (None: serve's)."""

    file: str = str(SAMPLE)
    model: str | None = None
    whisper: str | None = None
    device: str | None = None
    dtype: str | None = None
    speed: float = 1.0
    text: bool = True


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("file", nargs="?", default=str(SAMPLE), help="audio file (default: the bundled sample)")
    add("--model", help="quantizer REF (default: Ichigo-Whisper v0.1)")
    add("--whisper", help="Whisper name or .pt (default: the one the model names)")
    add_device_arguments(parser, device=None, dtype=None)
    add(
        "--speed",
        type=speed_arg,
        default=1.0,
        metavar="X",
        help="pace at X times real time (default 1; 0 or inf: as fast as allowed)",
    )
    add("--no-text", action="store_true", help="tokens only: skip loading Whisper's decoder")


def demo_options(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        file=args.file,
        model=args.model,
        whisper=args.whisper,
        device=args.device,
        dtype=args.dtype,
        speed=args.speed,
        text=not args.no_text,
    )


def _serve_args(options: DemoOptions) -> list[str]:
    # A private server on a loopback port: no secret, whatever ICHIGO_AUTH_TOKEN says (the
    # demo's client sends none).
    serve_args = ["--host", "127.0.0.1", "--port", "0", "--auth-token", ""]
    for flag in ("model", "whisper", "device", "dtype"):
        value = getattr(options, flag)
        if value:
            serve_args += [f"--{flag}", value]
    return [*serve_args, "--text"] if options.text else serve_args


def _run_demo(args: argparse.Namespace) -> int:
    options = demo_options(args)
    print(f"{PROG}: starting the server (loading the model)...", file=sys.stderr, flush=True)
    # Its log (and why it failed, if it does) goes to our stderr; its stdout holds only the
    # ready line, which the launcher reads from the ready file instead.
    server = ServerProcess(_serve_args(options), stdout=subprocess.DEVNULL)
    try:
        url = server.start().url
    except IchigoStreamError as e:
        error_line(f"the server did not start ({e}); see above")
        return EXIT_ERROR
    try:
        print(f"{PROG}: streaming {options.file} to {url}", file=sys.stderr, flush=True)
        send = SendOptions(
            file=options.file,
            url=url,
            speed=options.speed,
            text=options.text,
            llm_format="ichigo-rle",
            reconnect=False,
        )
        done = asyncio.run(send_file(send, None))
        if done is not None:
            print(f"{PROG}: done: {done.segments} segment(s), {done.audio_seconds:.2f} s of audio")
        return EXIT_OK
    finally:
        server.stop(timeout_s=60)  # SIGTERM: it drains; SIGKILL if it has not exited by then


DEMO_COMMAND = Command(
    "demo",
    "the live demo: start a server, stream the bundled speech sample, print segments and text",
    add_demo_arguments,
    _run_demo,
)
