"""The model process of multi-process mode: the weights and one ModelWorker, serving every
ingest process over its own link.

The supervisor starts one per device: it loads the model, warms it up, starts listening on
a Unix socket for the ingest processes' links, and tells the supervisor it is ready (with
the ModelInfo the ingest processes announce to clients). Each link has a reader thread that
turns JobMessages back into Jobs (audio copied out of that ingest process's ring) and
submits them to the one worker, so jobs of every ingest process share its batches; results
go back on the link of the process that sent the job. Evictions (held-audio budget) are sent
to every link: a process ignores session ids it does not hold. A link that ends (its ingest
process drained, or died) has its waiting jobs cancelled. SIGTERM stops the worker after its
current batch and ends the process; the supervisor sends it once every ingest process is done.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, Listener

from ichigo_stream.actions import Job, JobResult

from .config import ServerConfig
from .model_link import (
    STATUS_EVERY_S,
    AdmitMessage,
    CancelMessage,
    ClusterMetrics,
    EvictedMessage,
    Hello,
    JobMessage,
    MetricsBoard,
    MetricsMessage,
    ResultMessage,
    SessionClosedMessage,
    StatusMessage,
    WorkerStatus,
)
from .shared_audio import AudioRing

log = logging.getLogger("ichigo_stream.model_process")


@dataclass(frozen=True)
class ModelProcessSpec:
    """What the supervisor hands a model process (picklable: the 'spawn' start method)."""

    config: ServerConfig
    device: str
    address: str  # the Unix socket the ingest processes connect to
    authkey: bytes
    index: int = 0


@dataclass(frozen=True, eq=False)
class LinkedJob(Job):
    """A Job in the model process, with the link its result goes back on."""

    link: _IngestLink | None = field(default=None, repr=False)


class _IngestLink:
    """One ingest process's link: its reader thread, its ring and its waiting jobs."""

    def __init__(self, hub: _Hub, connection: Connection) -> None:
        self.hub = hub
        self.connection = connection
        self.send_lock = threading.Lock()
        self.jobs: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
        self.ring: AudioRing | None = None
        self.pid = 0

    def send(self, message: object) -> None:
        try:
            with self.send_lock:
                self.connection.send(message)
        except (OSError, ValueError):
            pass  # the ingest process has gone: its reader thread cleans up

    def serve(self) -> None:
        worker = self.hub.worker
        try:
            hello = self.connection.recv()
            assert isinstance(hello, Hello), hello
            self.ring, self.pid = AudioRing.attach(hello.ring), hello.pid
            self.hub.links.add(self)
            self.send(StatusMessage(self.hub.status()))
            while True:
                message = self.connection.recv()
                if isinstance(message, JobMessage):
                    job = message.to_job(self.ring, LinkedJob, link=self)
                    self.jobs[job.id] = job
                    evicted = worker.submit(job)
                    if evicted:
                        self.hub.broadcast(EvictedMessage(tuple(evicted)))
                elif isinstance(message, CancelMessage):
                    cancelled = self.jobs.pop(message.job_id, None)
                    if cancelled is not None:
                        worker.cancel(cancelled)
                elif isinstance(message, AdmitMessage):
                    worker.admit(message.session)  # admitted on the ingest side's cached answer
                elif isinstance(message, SessionClosedMessage):
                    worker.session_closed(message.session)
                elif isinstance(message, MetricsMessage):
                    with self.hub.board_lock:
                        self.hub.board.update(message)
        except (EOFError, OSError):
            pass
        finally:
            self.hub.links.discard(self)
            with self.hub.board_lock:
                self.hub.board.retire(self.pid)
            for job in list(self.jobs.values()):
                worker.cancel(job)
            log.info("ingest process %d disconnected", self.pid)
            with contextlib.suppress(OSError):
                self.connection.close()
            if self.ring is not None:
                self.ring.close()


class _Hub:
    """The worker and the links it serves."""

    def __init__(self, spec: ModelProcessSpec) -> None:
        from ichigo_stream.loading import load_tokenizer

        from .app import model_worker
        from .lifecycle import configure_torch

        config = replace(spec.config, load=replace(spec.config.load, device=spec.device))
        configure_torch(config)
        log.info("model process %d: loading %s on %s", spec.index, config.load.model, spec.device)
        self.tokenizer, self.info = load_tokenizer(config.load, text=config.text)
        self.worker = model_worker(config, self.tokenizer, self._result)
        self.links: set[_IngestLink] = set()
        self.config = config
        # The first model process adds up the ingest processes' /metrics counts.
        self.board = MetricsBoard()
        self.board_lock = threading.Lock()
        self.index = spec.index

    def _result(self, job: Job, result: JobResult) -> None:
        """On the worker thread: back to the ingest process that sent the job."""
        link = job.link if isinstance(job, LinkedJob) else None
        if link is not None:
            link.send(ResultMessage(job.id, result))

    def status(self) -> WorkerStatus:
        worker = self.worker
        return WorkerStatus(
            healthy=worker.healthy(),
            alive=worker.alive,
            queue_depth=worker.queue_depth,
            admits_sessions=worker.admits_sessions,
            admission=worker.admission(),
            stats=worker.stats_snapshot(),
            cluster=self._cluster(),
        )

    def _cluster(self) -> ClusterMetrics | None:
        if self.index != 0:
            return None
        with self.board_lock:
            return self.board.total()

    def broadcast(self, message: object) -> None:
        for link in list(self.links):
            link.send(message)

    def push_status(self) -> None:
        while True:
            time.sleep(STATUS_EVERY_S)
            self.broadcast(StatusMessage(self.status()))


def run_model_process(spec: ModelProcessSpec, ready: Connection) -> None:
    """The model process's main (the target the supervisor spawns): load, warm up, listen,
    say ready, serve until SIGTERM or the supervisor's death."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Ctrl-C reaches the whole process group: the supervisor decides what happens (a drain).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        hub = _Hub(spec)
        hub.worker.warm_up(text=spec.config.text)
        listener = Listener(spec.address, family="AF_UNIX", authkey=spec.authkey)
    except Exception as e:
        log.exception("model process %d failed to start", spec.index)
        ready.send(("failed", f"{type(e).__name__}: {e}"))
        os._exit(1)
    hub.worker.start()
    threading.Thread(target=_accept, args=(listener, hub), daemon=True).start()
    threading.Thread(target=hub.push_status, daemon=True).start()
    _exit_with_parent(stop)
    ready.send(("ready", hub.info))
    stop.wait()
    hub.worker.request_stop()
    hub.worker.stop(timeout=1.0)
    listener.close()
    logging.shutdown()
    os._exit(0)  # no interpreter teardown under torch threads (see lifecycle.run_server)


def _accept(listener: Listener, hub: _Hub) -> None:
    while True:
        try:
            connection = listener.accept()
        except OSError:
            return  # closed at exit
        except Exception:  # a peer that fails the authkey handshake, say
            log.exception("a link could not be accepted")
            continue
        link = _IngestLink(hub, connection)
        threading.Thread(target=link.serve, name="ichigo-ingest-link", daemon=True).start()


def _exit_with_parent(stop: threading.Event) -> None:
    """Stop when the supervisor has gone (killed with SIGKILL, say): no orphan holds a GPU."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        log.error("the supervisor has gone: stopping")
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
