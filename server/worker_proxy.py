"""WorkerProxy: ModelWorker's interface in an ingest process, served by the model process(es).

StreamServer cannot tell it from a ModelWorker: submit(job) -> evicted ids, cancel(job),
healthy(), alive, queue_depth, stats_snapshot(), admits_sessions, admission(),
admit(session), session_closed(session), warm_up, start, stop, request_stop. The difference
is time: submit and cancel send a message and return at once
(submit returns no evictions; the model process's evictions arrive later, through
on_evicted), and the synchronous questions are answered from the state each model process
pushes every STATUS_EVERY_S (server.model_link). Jobs go over a link to a model process with
their audio in this process's AudioRing for that link; a session's jobs always go to the same
model process (by a hash of its id). One reader thread per link hands results to on_result,
which, as for ModelWorker, the caller makes loop-safe. Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Client, Connection

from ichigo_stream.actions import Job, JobResult

from .admission import Admission
from .metrics import ServerMetrics, WorkerStats
from .model_link import (
    STATUS_STALE_S,
    AdmitMessage,
    CancelMessage,
    ClusterMetrics,
    EvictedMessage,
    Hello,
    JobMessage,
    MetricsMessage,
    ResultMessage,
    SessionClosedMessage,
    StatusMessage,
    WorkerStatus,
    merged_status,
)
from .shared_audio import AudioRing

log = logging.getLogger("ichigo_stream.worker_proxy")

ResultCallback = Callable[[Job, JobResult], None]
EvictionCallback = Callable[[Sequence[str]], None]


# The answer before any model process has pushed one: admit (nothing is measured yet, as an
# in-process worker's Capacity reads inf before warm-up).
NO_ANSWER_YET = Admission(
    admits=True,
    retry_after_ms=None,
    capacity=float("inf"),
    demand_finals=0.0,
    demand_partials=0.0,
    newcomer=0.0,
    headroom=1.0,
)


class _Link:
    """One model process, as this ingest process sees it."""

    def __init__(self, address: str, authkey: bytes, ring: AudioRing) -> None:
        self.address = address
        self.authkey = authkey
        # Its own ring: the model process reads it in the order it was written (one ring
        # per link, as model processes read their jobs independently).
        self.ring = ring
        self.connection: Connection | None = None
        self.connected = False
        self.status = WorkerStatus()
        self.status_at = 0.0
        self.send_lock = threading.Lock()

    def send(self, message: object) -> bool:
        """False when the link is down (the model process has gone)."""
        if self.connection is None or not self.connected:
            return False
        try:
            with self.send_lock:
                self.connection.send(message)
            return True
        except (OSError, ValueError):
            self.connected = False
            return False


class WorkerProxy:
    def __init__(
        self,
        links: Sequence[tuple[str, bytes, AudioRing]],
        on_result: ResultCallback,
        on_evicted: EvictionCallback,
    ) -> None:
        if not links:
            raise ValueError("a WorkerProxy needs at least one model process")
        self.on_result = on_result
        self.on_evicted = on_evicted
        self._links = [_Link(address, key, ring) for address, key, ring in links]
        # The jobs waiting for a result, by id: weak, so that a job its session has let go
        # (a superseded partial the model process shed) is forgotten without a message.
        self._jobs: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()
        self._jobs_lock = threading.Lock()
        self._merged = WorkerStatus()
        self._stopping = False
        self._readers: list[threading.Thread] = []
        self.inline_jobs = 0  # jobs whose audio went inline: the ring was full

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every model process (each is listening once the supervisor starts us)."""
        for i, link in enumerate(self._links):
            link.connection = Client(link.address, family="AF_UNIX", authkey=link.authkey)
            link.connected = True
            link.send(Hello(link.ring.name, os.getpid()))
            reader = threading.Thread(
                target=self._read, args=(link,), name=f"ichigo-model-link-{i}", daemon=True
            )
            reader.start()
            self._readers.append(reader)

    def warm_up(self, text: bool = False) -> None:
        """Nothing to do: each model process warmed up before the supervisor started us."""

    def request_stop(self) -> None:
        """Close the links (the model processes drop this process's waiting jobs); at once."""
        self._stopping = True
        for link in self._links:
            link.connected = False
            if link.connection is not None:
                # Shut the socket down: wakes the reader blocked in recv (close would not).
                with contextlib.suppress(OSError):
                    fd = link.connection.fileno()
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)

    def stop(self, timeout: float | None = None) -> None:
        self.request_stop()
        for reader in self._readers:
            reader.join(timeout)

    @property
    def alive(self) -> bool:
        """Every link is up (a model process that has gone takes its link down)."""
        return not self._stopping and all(link.connected for link in self._links)

    def healthy(self) -> bool:
        """Alive, every model process reports itself healthy, and recently."""
        now = time.monotonic()
        fresh = all(now - link.status_at < STATUS_STALE_S for link in self._links)
        return self.alive and fresh and self._merged.healthy

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, job: Job) -> list[str]:
        """Send the job to its session's model process. Evictions come later (on_evicted)."""
        with self._jobs_lock:
            self._jobs[job.id] = job
        link = self._link_of(job)
        message = JobMessage.of(job, link.ring)
        self.inline_jobs += message.slot is None
        if not link.send(message):
            log.warning("job %s/%s not sent: the model process has gone", job.session, job.segment)
        return []

    def cancel(self, job: Job) -> None:
        with self._jobs_lock:
            self._jobs.pop(job.id, None)
        self._link_of(job).send(CancelMessage(job.id))

    def _link_of(self, job: Job) -> _Link:
        return self._link_of_session(job.session)

    def _link_of_session(self, session_id: str) -> _Link:
        # A stable hash (not Python's salted hash()): a session's jobs keep one model process.
        return self._links[zlib.crc32(session_id.encode()) % len(self._links)]

    # -- admission: decided on the model processes' last answer -----------------------------

    def admission(self) -> Admission:
        """The server's answer for a new session, as of the model processes' last push
        (admits until one has answered: nothing is measured before warm-up)."""
        return self._merged.admission or NO_ANSWER_YET

    def admit(self, session_id: str) -> Admission:
        """Decide on the answer of the model process this session's jobs will go to; if it
        admits, count the newcomer against the cached answer at once (a burst of handshakes
        between two pushes must not all pass) and tell the model process, which counts its
        demand from now."""
        link = self._link_of_session(session_id)
        answer = link.status.admission or NO_ANSWER_YET
        if answer.admits:
            link.status = replace(link.status, admission=answer.with_newcomer())
            self._merged = merged_status([each.status for each in self._links])
            link.send(AdmitMessage(session_id))
        return answer

    def session_closed(self, session_id: str) -> None:
        self._link_of_session(session_id).send(SessionClosedMessage(session_id))

    # -- state, as last pushed by the model processes --------------------------------------

    @property
    def admits_sessions(self) -> bool:
        return self._merged.admits_sessions

    @property
    def queue_depth(self) -> int:
        return self._merged.queue_depth

    def stats_snapshot(self) -> WorkerStats:
        return self._merged.stats

    # -- /metrics of the whole server --------------------------------------------------------

    def publish_metrics(self, metrics: ServerMetrics, open_sessions: int) -> None:
        """Send this process's own counts to the first model process (on the event loop,
        which owns them: StreamServer's ticker calls it every second)."""
        self._links[0].send(MetricsMessage(os.getpid(), metrics.copy(), open_sessions))

    @property
    def cluster_metrics(self) -> ClusterMetrics | None:
        """Every ingest process's counts added up, as of the first model process's last push
        (None until it has one)."""
        return self._merged.cluster

    # -- reader threads ---------------------------------------------------------------------

    def _read(self, link: _Link) -> None:
        assert link.connection is not None
        try:
            while True:
                message = link.connection.recv()
                if isinstance(message, ResultMessage):
                    with self._jobs_lock:
                        job = self._jobs.pop(message.job_id, None)
                    if job is not None:
                        self.on_result(job, message.result)
                elif isinstance(message, StatusMessage):
                    link.status, link.status_at = message.status, time.monotonic()
                    self._merged = merged_status([each.status for each in self._links])
                elif isinstance(message, EvictedMessage):
                    self.on_evicted(message.sessions)
        except (EOFError, OSError):
            if not self._stopping:
                log.error("the link to the model process at %s is down", link.address)
        finally:
            link.connected = False
            with contextlib.suppress(OSError):
                link.connection.close()
