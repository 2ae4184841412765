"""The `ichigo-stream demo` subcommand: the live demo in one command.

Starts a real server (`ichigo-stream serve` as a child process, with text decoding on),
streams the bundled speech sample (or FILE) through the file streamer at real time, prints
each segment with its text, then stops the server with SIGTERM (it drains and exits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
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

from .common import speed_arg
from .send import SendOptions, send_file

SAMPLE = sample_path()
SERVING = re.compile(r"serving (wss?://\S+)")


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


def _server_command(options: DemoOptions) -> list[str]:
    command = [sys.executable, "-m", "ichigo_stream", "serve", "--host", "127.0.0.1", "--port", "0"]
    # A private server on a loopback port: no secret, whatever ICHIGO_AUTH_TOKEN says (the
    # demo's client sends none).
    command += ["--auth-token", ""]
    for flag in ("model", "whisper", "device", "dtype"):
        value = getattr(options, flag)
        if value:
            command += [f"--{flag}", value]
    return [*command, "--text"] if options.text else command


def _wait_until_serving(server: subprocess.Popen[str]) -> str | None:
    """The server's stream URL once it serves, or None if it exited first (it said why)."""
    assert server.stdout is not None
    for line in server.stdout:
        match = SERVING.search(line)
        if match:
            return match.group(1)
    return None


def _run_demo(args: argparse.Namespace) -> int:
    options = demo_options(args)
    print(f"{PROG}: starting the server (loading the model)...", file=sys.stderr, flush=True)
    server = subprocess.Popen(
        _server_command(options), stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        url = _wait_until_serving(server)
        if url is None:
            error_line(f"the server did not start (exit status {server.wait()}); see above")
            return EXIT_ERROR
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
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


DEMO_COMMAND = Command(
    "demo",
    "the live demo: start a server, stream the bundled speech sample, print segments and text",
    add_demo_arguments,
    _run_demo,
)
