"""The server under test: a random-weight model in the real formats, and `serve` started on it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stream_report import log

from ichigo_stream.server_process import ServerProcess, ServerReady

# Random-weight models (make-random-model): (width, encoder layers). Cost is what matters:
# every clip runs a full 30 s Whisper window whatever its length.
RANDOM_SIZES = {"tiny": (384, 1), "small": (768, 2), "medium": (1024, 2)}


class ServerStartError(RuntimeError):
    """The server did not come up (its log's tail is in the message)."""


def random_size(name: str) -> tuple[int, int]:
    """tiny / small / medium, or WIDTHxLAYERS (e.g. 64x1: a near-free model, to take the model
    out of the picture and load only the server's I/O path)."""
    if name in RANDOM_SIZES:
        return RANDOM_SIZES[name]
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if not match or int(match.group(1)) % 64 or int(match.group(2)) < 1:
        raise ValueError(
            f"{name!r}: expected {', '.join(RANDOM_SIZES)} or WIDTHxLAYERS (width a multiple of 64)"
        )
    return int(match.group(1)), int(match.group(2))


def random_model(cache: Path, random: str, full: str | None = None) -> tuple[Path, Path]:
    """Write (once, into the cache) a random-weight model in the real formats:
    (quantizer, whisper). `full` names a released Whisper whose full size to use."""
    if full:
        tag, extra = f"full-{full}", ["--full", full]
    else:
        width, layers = random_size(random)
        tag, extra = f"w{width}-l{layers}", ["--width", str(width), "--layers", str(layers)]
    folder = cache / "models"
    quantizer, whisper = folder / f"quantizer-{tag}.pth", folder / f"whisper-{tag}.pt"
    if quantizer.exists() and whisper.exists():
        return quantizer, whisper
    folder.mkdir(parents=True, exist_ok=True)
    log(f"writing random model {tag} to {folder}")
    # Written aside and renamed: a run killed halfway never leaves half a model in the cache.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        q, w = Path(tmp) / quantizer.name, Path(tmp) / whisper.name
        cmd = [sys.executable, "-m", "ichigo_stream", "make-random-model", str(q)]
        subprocess.run([*cmd, "--whisper-out", str(w), *extra], check=True, stdout=sys.stderr)
        os.replace(w, whisper)
        os.replace(q, quantizer)
    return quantizer, whisper


@dataclass(frozen=True)
class ServerOptions:
    """How to start `ichigo-stream serve` for a run."""

    model: Path
    whisper: str | None
    device: str = "cpu"
    dtype: str = "float32"
    max_sessions: int = 64
    max_batch: int | None = None  # None: the server's default
    extra_args: tuple[str, ...] = ()  # --server-arg
    env: tuple[tuple[str, str], ...] = ()  # --server-env, on top of this process's environment
    start_timeout_s: float = 600.0

    def serve_args(self) -> list[str]:
        args = ["--port", "0", "--model", str(self.model)]
        if self.whisper is not None:
            args += ["--whisper", str(self.whisper)]
        args += ["--device", self.device, "--dtype", self.dtype]
        args += ["--max-sessions", str(self.max_sessions)]
        if self.max_batch:
            args += ["--max-batch", str(self.max_batch)]
        return [*args, *self.extra_args]


def start_server(
    options: ServerOptions, stack: contextlib.ExitStack
) -> tuple[ServerReady, list[str]]:
    """Start the server inside `stack` (which stops it: SIGTERM, so it drains) and return
    its ready record and command line. Its stdout and stderr go to a log file kept after the
    run; ServerStartError carries the log's tail when it does not come up."""
    fd, name = tempfile.mkstemp(prefix="bench-stream-server-", suffix=".log")
    log_file = stack.enter_context(os.fdopen(fd, "w"))
    env = {**os.environ, **dict(options.env)}
    server = ServerProcess(
        options.serve_args(),
        env=env,
        stdout=log_file,
        stderr=log_file,
        start_timeout_s=options.start_timeout_s,
    )
    command = " ".join([sys.executable, "-m", "ichigo_stream", "serve", *options.serve_args()])
    log(f"starting: {command}  (server log: {name})")
    try:
        stack.enter_context(server)
    except Exception as e:  # whatever the launcher raises, the run cannot be set up
        log_file.flush()
        tail = Path(name).read_text()[-3000:]
        raise ServerStartError(f"{e}\nthe end of the server log {name}:\n{tail}") from e
    return server.ready, [str(a) for a in server.process.args]
