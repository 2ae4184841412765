"""`serve --workers N` (N > 1, or several --devices): the supervisor of the multi-process server.

The `serve` process becomes a supervisor that serves nothing itself:
bind (before anything loads) -> one model process per device (load, warm up, listen for
links) -> N ingest processes (each binds the port with SO_REUSEPORT and runs a StreamServer
whose worker is a WorkerProxy) -> the ready file and line, once every process is ready ->
supervise -> drain on SIGTERM/SIGINT.

- SO_REUSEPORT rather than one inherited listening socket (uvicorn's and gunicorn's way):
  the kernel spreads connections evenly by a hash of their addresses, where with a shared
  socket every idle loop wakes and whichever wins accepts, so a few processes take most.
  Its known cost: connections queued but not yet accepted by a process that dies are reset,
  and their clients reconnect like those it had accepted.
- 'spawn' start method: torch and threads do not survive fork; ingest processes import no
  torch and start in about a second (model processes take the model's load time).
- An ingest process that dies is logged and replaced (a fresh ring, the same port): its
  clients reconnect and resume through the resume protocol, the other processes' sessions
  never notice. A model process that dies ends the server: the supervisor stops every ingest
  process and exits with EXIT_MODEL_DIED, for the orchestrator to restart it whole (the
  weights and the waiting jobs are gone; /livez answers 503 until then).
- SIGTERM/SIGINT: forwarded (as SIGTERM) to every ingest process, which drains within
  --drain-timeout-s; then the model processes stop; the whole exits within the timeout + 1 s,
  status 0. A second signal is forwarded too (each ingest process closes its sessions at
  once) and the exit status is 128 + its number.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import NoReturn

from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.server_process import ServerReady

from .config import ServerConfig
from .ingest_process import IngestSpec, run_ingest_process
from .listener import Listener
from .model_process import ModelProcessSpec, run_model_process
from .shared_audio import create_ring_memory
from .signals import announce

log = logging.getLogger("ichigo_stream.supervisor")

EXIT_MODEL_DIED = 70  # EX_SOFTWARE: a model process died; restart the server
EXIT_START_FAILED = 3  # a process failed before the server was ready
MODEL_STOP_S = 0.5  # after the drain, how long a model process gets to end its batch
INGEST_START_S = 60.0  # an ingest process not ready by then is a failed start


class _Stop(Exception):
    """A signal arrived while the supervisor waited for something else."""


@dataclass
class _Ingest:
    index: int
    process: BaseProcess
    rings: list[SharedMemory]  # one per model process


class Supervisor:
    def __init__(self, config: ServerConfig, listener: Listener) -> None:
        self.config = config
        self.listener = listener
        self.context = multiprocessing.get_context("spawn")
        self.folder = tempfile.mkdtemp(prefix="ichigo-serve-")
        self.authkey = os.urandom(32)
        self.models: list[BaseProcess] = []
        self.addresses: list[str] = []
        self.ingest: list[_Ingest] = []
        self.info: ModelInfo | None = None
        self.signals: list[int] = []
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    # -- signals ------------------------------------------------------------------------------

    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._received)

    def _received(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        with contextlib.suppress(BlockingIOError):  # already awake
            os.write(self._wake_write, b"!")

    def _wait(self, handles: list[object], timeout: float | None) -> list[object]:
        """multiprocessing's wait, also woken by a signal (then raises _Stop)."""
        ready = wait([*handles, self._wake_read], timeout)
        if self._wake_read in ready:
            os.read(self._wake_read, 64)
            raise _Stop
        return ready

    # -- start --------------------------------------------------------------------------------

    def start_models(self) -> None:
        pending: dict[Connection, BaseProcess] = {}
        for i, device in enumerate(self.config.model_devices):
            address = os.path.join(self.folder, f"model-{i}.sock")
            spec = ModelProcessSpec(self.config, device, address, self.authkey, i)
            receive, send = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=run_model_process, args=(spec, send), name=f"ichigo-model-{i}"
            )
            process.start()
            send.close()
            self.models.append(process)
            self.addresses.append(address)
            pending[receive] = process
        while pending:
            for handle in self._wait(list(pending), None):
                assert isinstance(handle, Connection)
                process = pending.pop(handle)
                try:
                    kind, value = handle.recv()
                except EOFError:
                    kind, value = "failed", f"exit status {process.exitcode}"
                if kind != "ready":
                    raise IchigoStreamError(f"{process.name} failed to start: {value}")
                self.info = value
                log.info("%s ready (pid %d)", process.name, process.pid)

    def start_ingest(self, indices: list[int]) -> list[_Ingest]:
        """Start ingest processes (at once: each takes about a second, mostly imports) and
        wait until every one listens and has its links to the model processes."""
        assert self.info is not None
        started = time.monotonic()
        pending: dict[Connection, _Ingest] = {}
        for index in indices:
            rings = [create_ring_memory() for _ in self.addresses]
            links = tuple(
                (address, self.authkey, ring.name)
                for address, ring in zip(self.addresses, rings, strict=True)
            )
            spec = IngestSpec(self.config, self.info, self.listener.port, links, index)
            receive, send = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=run_ingest_process, args=(spec, send), name=f"ichigo-ingest-{index}"
            )
            process.start()
            send.close()
            pending[receive] = _Ingest(index, process, rings)
        ready = list(pending.values())
        self.ingest += ready  # from now on, stop_all and cleanup know them
        deadline = started + INGEST_START_S
        while pending:
            left = deadline - time.monotonic()
            done = self._wait(list(pending), left) if left > 0 else []
            if not done:
                raise IchigoStreamError(f"ingest processes not ready in {INGEST_START_S:g} s")
            for handle in done:
                assert isinstance(handle, Connection)
                ingest = pending.pop(handle)
                try:
                    handle.recv()
                except EOFError:
                    ingest.process.join(1)
                    raise IchigoStreamError(
                        f"{ingest.process.name} failed to start "
                        f"(exit status {ingest.process.exitcode})"
                    ) from None
                finally:
                    handle.close()
        for ingest in ready:
            log.info("%s ready (pid %d)", ingest.process.name, ingest.process.pid)
        log.info("%d ingest process(es) ready in %.2f s", len(ready), time.monotonic() - started)
        return ready

    # -- serve --------------------------------------------------------------------------------

    def supervise(self) -> int:
        """Until a signal: replace dead ingest processes; a dead model process ends it all."""
        while True:
            by_sentinel: dict[int, object] = {p.sentinel: p for p in self.models}
            by_sentinel.update({i.process.sentinel: i for i in self.ingest})
            for sentinel in self._wait(list(by_sentinel), None):
                gone = by_sentinel[sentinel]  # type: ignore[index]
                if isinstance(gone, _Ingest):
                    gone.process.join()
                    log.error(
                        "%s (pid %d) died (exit status %s): starting another",
                        gone.process.name, gone.process.pid, gone.process.exitcode,
                    )  # fmt: skip
                    self.ingest.remove(gone)
                    _unlink(gone.rings)
                    self.start_ingest([gone.index])
                else:
                    assert isinstance(gone, BaseProcess)
                    gone.join()
                    log.error(
                        "%s (pid %d) died (exit status %s): stopping the server",
                        gone.name, gone.pid, gone.exitcode,
                    )  # fmt: skip
                    return EXIT_MODEL_DIED

    def drain(self) -> int:
        """Forward the drain to every ingest process, wait for them, stop the model processes."""
        first = self.signals[0] if self.signals else signal.SIGTERM
        log.info("draining: %s to %d ingest process(es)", signal.Signals(first).name,
                 len(self.ingest))  # fmt: skip
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout_s + 0.5
        forced: int | None = None
        while any(i.process.is_alive() for i in self.ingest):
            if forced is None and len(self.signals) > 1:
                forced = self.signals[1]
                log.warning("second %s: closing every session now", signal.Signals(forced).name)
                self._forward(signal.SIGTERM)
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("ingest processes still draining at the deadline: killing them")
                self._forward(signal.SIGKILL)
                break
            with contextlib.suppress(_Stop):  # a second signal: seen at the loop's top
                self._wait([i.process.sentinel for i in self.ingest], left)
        self.stop_models()
        return 0 if forced is None else 128 + forced

    def _forward(self, signum: int) -> None:
        for ingest in self.ingest:
            if ingest.process.is_alive() and ingest.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ingest.process.pid, signum)

    def stop_models(self) -> None:
        for process in self.models:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker ends its batch, the process exits
        deadline = time.monotonic() + MODEL_STOP_S
        for process in self.models:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()

    def stop_all(self) -> None:
        """Everything down at once (a failed start, a dead model process)."""
        for ingest in self.ingest:
            if ingest.process.is_alive():
                ingest.process.kill()
        for ingest in self.ingest:
            ingest.process.join(2)
        self.stop_models()

    def cleanup(self) -> None:
        for ingest in self.ingest:
            _unlink(ingest.rings)
        shutil.rmtree(self.folder, ignore_errors=True)


def _unlink(rings: list[SharedMemory]) -> None:
    for ring in rings:
        ring.close()
        with contextlib.suppress(FileNotFoundError):
            ring.unlink()


def run_supervisor(config: ServerConfig, listener: Listener) -> NoReturn:
    """The multi-process `serve`: start -> ready -> supervise -> drain -> exit the process."""
    supervisor = Supervisor(config, listener)
    supervisor.install_signals()
    status = EXIT_START_FAILED
    ready_written = False
    try:
        started = time.monotonic()
        supervisor.start_models()
        log.info("model process(es) ready in %.2f s", time.monotonic() - started)
        supervisor.start_ingest(list(range(config.workers)))
        log.info("every process ready in %.2f s", time.monotonic() - started)
        ready = ServerReady.at(
            config.host, listener.port, tls=bool(config.certfile), pid=os.getpid()
        )
        announce(ready, config.ready_file)
        ready_written = True
        status = supervisor.supervise()
        supervisor.stop_all()
    except _Stop:
        status = supervisor.drain() if ready_written else 128 + supervisor.signals[0]
        if not ready_written:
            supervisor.stop_all()
    except IchigoStreamError as e:
        log.error("%s", e)
        supervisor.stop_all()
    finally:
        if config.ready_file and ready_written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.ready_file)
        supervisor.cleanup()
        listener.close()
    logging.shutdown()
    os._exit(status)
