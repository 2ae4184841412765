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

from ichigo_stream.assets import sample_path
from ichigo_stream.cli_common import EXIT_ERROR, EXIT_OK, PROG, Command, error_line
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.server_process import ServerProcess

from .send import send_file

SAMPLE = sample_path()


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("file", nargs="?", default=str(SAMPLE), help="audio file (default: the bundled sample)")
    add("--model", help="quantizer REF (env ICHIGO_MODEL; default: Ichigo-Whisper v0.1)")
    add("--whisper", help="Whisper name or .pt (env ICHIGO_WHISPER)")
    add("--device", help="cpu or cuda (env ICHIGO_DEVICE)")
    add("--dtype", help="float32, float16 or bfloat16 (env ICHIGO_DTYPE)")
    add("--speed", type=float, default=1.0, help="pace at X times real time (default 1)")
    add("--no-text", action="store_true", help="tokens only: skip loading Whisper's decoder")


def _serve_args(args: argparse.Namespace) -> list[str]:
    serve_args = ["--host", "127.0.0.1", "--port", "0"]
    for flag in ("model", "whisper", "device", "dtype"):
        if getattr(args, flag):
            serve_args += [f"--{flag}", getattr(args, flag)]
    return serve_args if args.no_text else [*serve_args, "--text"]


def _run_demo(args: argparse.Namespace) -> int:
    print(f"{PROG}: starting the server (loading the model)...", file=sys.stderr, flush=True)
    # Its log (and why it failed, if it does) goes to our stderr; its stdout holds only the
    # ready line, which the launcher reads from the ready file instead.
    server = ServerProcess(_serve_args(args), stdout=subprocess.DEVNULL)
    try:
        url = server.start().url
    except IchigoStreamError as e:
        error_line(f"the server did not start ({e}); see above")
        return EXIT_ERROR
    try:
        print(f"{PROG}: streaming {args.file} to {url}", file=sys.stderr, flush=True)
        send_args = argparse.Namespace(
            file=args.file,
            url=url,
            speed=args.speed,
            text=not args.no_text,
            language=None,
            llm_format="ichigo-rle",
            partials=False,
            token=None,
            insecure=False,
            no_reconnect=True,
        )
        done = asyncio.run(send_file(send_args, None))
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
