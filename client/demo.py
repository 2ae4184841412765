"""The `ichigo-stream demo` subcommand: the live demo in one command.

Starts a real server (`ichigo-stream serve` as a child process, with text decoding on),
streams the bundled speech sample (or FILE) through the file streamer at real time, prints
each segment with its text, then stops the server with SIGTERM (it drains and exits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO

from ichigo_stream.assets import sample_path
from ichigo_stream.cli_common import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    Command,
    add_device_arguments,
    error_line,
    require_model_extra,
)
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.server_process import ServerProcess

from .common import add_speed_argument
from .send import SendOptions, send_file

SAMPLE = sample_path()
LOG_TAIL_LINES = 20  # of the server's log, shown when it fails


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
    server_log: str | None = None  # None: a temporary file, removed after a clean run


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "file",
        nargs="?",
        default=str(SAMPLE),
        metavar="FILE",
        help="audio file (default: the bundled sample)",
    )
    add(
        "--model",
        metavar="REF",
        help="quantizer checkpoint, as serve --model (default: as serve: the released "
        "Ichigo-Whisper medium checkpoint)",
    )
    add(
        "--whisper",
        metavar="REF",
        help="Whisper name or .pt, as serve --whisper (default: the one the checkpoint names)",
    )
    add_device_arguments(parser, device=None, dtype=None)
    add_speed_argument(parser)
    add("--no-text", action="store_true", help="tokens only: skip loading Whisper's decoder")
    add(
        "--server-log",
        metavar="PATH",
        help="write the server's log here and keep it (default: a temporary file, removed "
        "after a clean run; its tail is shown if the server fails)",
    )


def demo_options(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        file=args.file,
        model=args.model,
        whisper=args.whisper,
        device=args.device,
        dtype=args.dtype,
        speed=args.speed,
        text=not args.no_text,
        server_log=args.server_log,
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


def _open_log(path: str | None) -> tuple[IO[bytes], bool]:
    """The server's log file, and whether it is ours to remove after a clean run."""
    if path is not None:
        try:
            return open(path, "wb"), False
        except OSError as e:
            raise IchigoStreamError(f"cannot write {path}: {e.strerror or e}") from None
    fd, name = tempfile.mkstemp(prefix="ichigo-demo-server-", suffix=".log")
    os.close(fd)
    return open(name, "wb"), True  # by name: its .name is the path stderr_tail reads


def _show_log_tail(server: ServerProcess, path: str) -> None:
    tail = server.stderr_tail().strip().splitlines()[-LOG_TAIL_LINES:]
    if tail:
        print(f"{PROG}: the server's log ends with:", file=sys.stderr)
        for line in tail:
            print(f"  server| {line}", file=sys.stderr)
    print(f"{PROG}: the server's full log: {path}", file=sys.stderr, flush=True)


def _run_demo(args: argparse.Namespace) -> int:
    options = demo_options(args)
    require_model_extra("demo")  # its server loads the model: say so before starting it
    log, temporary = _open_log(options.server_log)
    clean = False
    try:
        print(
            f"{PROG}: starting the server (loading the model; its log: {log.name})...",
            file=sys.stderr,
            flush=True,
        )
        # Its log goes to the file, so the demo's own lines stay readable; its stdout holds
        # only the ready line, which the launcher reads from the ready file instead.
        server = ServerProcess(_serve_args(options), stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = server.start().url
        except IchigoStreamError as e:
            error_line(f"the server did not start: {str(e).splitlines()[0]}")
            _show_log_tail(server, log.name)
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
                print(
                    f"{PROG}: done: {done.segments} segment(s), {done.audio_seconds:.2f} s of audio"
                )
        finally:
            # SIGTERM: it drains; SIGKILL if it has not exited by then.
            status = server.stop(timeout_s=60)
            if status != 0:
                error_line(f"the server exited with status {status}")
                _show_log_tail(server, log.name)
            else:
                clean = True
        return EXIT_OK
    finally:
        log.close()
        if temporary and clean:
            with contextlib.suppress(OSError):
                os.unlink(log.name)


DEMO_COMMAND = Command(
    "demo",
    "the live demo: start a server, stream the bundled speech sample, print segments and text",
    add_demo_arguments,
    _run_demo,
)
