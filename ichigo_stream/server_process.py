"""Start `ichigo-stream serve` as a child process and know, from its ready file, where it serves.

The server announces readiness in one documented, machine-readable way (docs/protocol.md,
"Server readiness"): with `--ready-file PATH` it writes a JSON object there, atomically, once
it listens and the model is warmed up, and removes it on exit; it also prints the same object,
with `"event": "ready"`, as one line on stdout. `ServerReady` is that object, typed, and
`ServerProcess` is the one launcher the demo, the benchmarks and the tests share: no caller
parses a log line.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from .errors import IchigoStreamError
from .protocol import PROTOCOL_VERSION, STREAM_PATH

__all__ = ["ServerProcess", "ServerReady"]

READY_EVENT = "ready"
_POLL_S = 0.02  # how often start() looks for the ready file: a file check costs nothing
_STDERR_TAIL_BYTES = 64 * 1024  # what a captured stderr keeps for error messages
_ERROR_TAIL_CHARS = 3000  # what an error message quotes of it
# Addresses that mean "every interface": a client reaches such a server on loopback.
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class ServerReady:
    """What a ready server announces: where to connect, who it is, which protocol it speaks."""

    url: str  # ws(s)://host:port/v1/stream
    host: str  # the address a client on this machine connects to (loopback for 0.0.0.0)
    port: int  # the real port, also when serving with --port 0
    pid: int
    page_url: str  # http(s)://host:port/
    healthz_url: str
    metrics_url: str
    protocol: int

    @classmethod
    def at(cls, host: str, port: int, *, tls: bool, pid: int) -> ServerReady:
        """The announcement of a server listening on host:port (host as given to --host)."""
        host = _WILDCARD_HOSTS.get(host, host)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        http = f"{'https' if tls else 'http'}://{netloc}"
        return cls(
            url=f"{'wss' if tls else 'ws'}://{netloc}{STREAM_PATH}",
            host=host,
            port=port,
            pid=pid,
            page_url=f"{http}/",
            healthz_url=f"{http}/healthz",
            metrics_url=f"{http}/metrics",
            protocol=PROTOCOL_VERSION,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def event_line(self) -> str:
        """The stdout form: the same object with "event": "ready" first."""
        return json.dumps({"event": READY_EVENT, **self.to_dict()}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerReady:
        """Parse a ready file or the stdout event line; strict about the fields it knows.

        Unknown fields are ignored (a newer server may add some); a missing field or one of
        the wrong type is an IchigoStreamError.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise IchigoStreamError(f"server ready announcement is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise IchigoStreamError("server ready announcement is not a JSON object")
        if data.get("event", READY_EVENT) != READY_EVENT:
            raise IchigoStreamError(f"not a ready announcement: event {data['event']!r}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            expected = int if f.type in ("int", int) else str
            # bool is an int in Python, never in this announcement.
            if type(value) is not expected:
                raise IchigoStreamError(
                    f"server ready announcement: {f.name!r} must be {expected.__name__}, "
                    f"got {value!r}"
                )
            values[f.name] = value
        return cls(**values)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the ready file atomically: a reader sees no file or the whole object."""
        path = Path(path)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(self.to_json() + "\n")
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


class ServerProcess:
    """`python -m ichigo_stream serve --ready-file F *serve_args` as a context manager.

    start() returns once F appears (the server listens and is warmed up) and raises an
    IchigoStreamError if the process exits first (with its exit status, and the tail of its
    stderr when that is captured: subprocess.PIPE, drained here so the server never blocks
    on a full pipe, or a file) or does not become ready within start_timeout_s (it is killed).
    stdout and stderr are passed to subprocess.Popen as given; the server writes only its
    ready event line to stdout, its log to stderr.
    """

    def __init__(
        self,
        serve_args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.serve_args = tuple(serve_args)
        self.env = dict(env) if env is not None else None
        self.python = python
        self.stdout = stdout
        self.stderr = stderr
        self.start_timeout_s = start_timeout_s
        self._ready: ServerReady | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_bytes = 0
        self._drain_thread: threading.Thread | None = None

    @property
    def ready(self) -> ServerReady:
        if self._ready is None:
            raise IchigoStreamError("the server is not ready: call start() first")
        return self._ready

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise IchigoStreamError("the server has not been started")
        return self._process

    @property
    def ready_file(self) -> Path | None:
        """Where the running (or last) server announces itself; None before start()."""
        return None if self._folder is None else self._folder / "ready.json"

    @property
    def command(self) -> list[str]:
        assert self.ready_file is not None, "start() chooses the ready file"
        return [self.python, "-m", "ichigo_stream", "serve", "--ready-file", str(self.ready_file),
                *self.serve_args]  # fmt: skip

    def start(self) -> ServerReady:
        if self._process is not None and self._process.poll() is None:
            raise IchigoStreamError(f"the server is already running (pid {self._process.pid})")
        self._cleanup()
        self._ready = None
        self._folder = Path(tempfile.mkdtemp(prefix="ichigo-serve-"))
        ready_file = self._folder / "ready.json"
        self._process = subprocess.Popen(
            self.command, stdout=self.stdout, stderr=self.stderr, env=self.env
        )
        if self.stderr == subprocess.PIPE:
            self._tail.clear()
            self._tail_bytes = 0
            self._drain_thread = threading.Thread(
                target=self._drain_stderr, name="ichigo-serve-stderr", daemon=True
            )
            self._drain_thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not ready_file.exists():
            status = self._process.poll()
            if status is not None:
                self._join_drain()
                self._cleanup()
                raise IchigoStreamError(
                    f"the server exited with status {status} before it was ready"
                    + self._tail_suffix()
                )
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                self._join_drain()
                self._cleanup()
                raise IchigoStreamError(
                    f"the server was not ready within {self.start_timeout_s:g} s (killed)"
                    + self._tail_suffix()
                )
            time.sleep(_POLL_S)
        ready = ServerReady.from_json(ready_file.read_text())
        if ready.pid != self._process.pid:
            self.stop()
            raise IchigoStreamError(
                f"the ready file names pid {ready.pid}, the server is pid {self._process.pid}"
            )
        self._ready = ready
        return ready

    def stop(self, timeout_s: float = 60.0, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM: drain), wait up to timeout_s, then SIGKILL; the exit status.

        Idempotent: a server that has already exited is not signalled again.
        """
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._join_drain()
        self._cleanup()
        assert process.returncode is not None
        return process.returncode

    def stderr_tail(self) -> str:
        """The last lines of the server's stderr, if it is captured (PIPE or a file)."""
        if self.stderr == subprocess.PIPE:
            return b"".join(self._tail).decode(errors="replace")[-_ERROR_TAIL_CHARS:]
        name = getattr(self.stderr, "name", None)
        if isinstance(name, str) and os.path.isfile(name):
            with contextlib.suppress(OSError, ValueError):
                self.stderr.flush()  # type: ignore[union-attr]
            with open(name, "rb") as log:
                log.seek(max(0, os.path.getsize(name) - _ERROR_TAIL_CHARS))
                return log.read().decode(errors="replace")
        return ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _tail_suffix(self) -> str:
        tail = self.stderr_tail().strip()
        return f"; its stderr ends:\n{tail}" if tail else ""

    def _drain_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read1(4096), b""):
            self._tail.append(chunk)
            self._tail_bytes += len(chunk)
            while self._tail_bytes - len(self._tail[0]) >= _STDERR_TAIL_BYTES:
                self._tail_bytes -= len(self._tail.popleft())

    def _join_drain(self) -> None:
        if self._drain_thread is not None:
            self._drain_thread.join(10)  # the pipe ends when the process does
            self._drain_thread = None
            if self._process is not None and self._process.stderr is not None:
                self._process.stderr.close()

    def _cleanup(self) -> None:
        """Remove the ready file's folder (the server removes the file itself, unless killed)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
