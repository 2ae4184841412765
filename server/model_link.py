"""The messages between an ingest process and a model process (multi-process mode).

Each ingest process holds one link (a multiprocessing.connection over a Unix socket) to each
model process. Over it go, ingest -> model: Hello (once: the ingest process's audio ring),
JobMessage (a job with its audio's AudioSlot in the ring, never the samples, unless the ring
was full) and CancelMessage; model -> ingest: ResultMessage (to the link that sent the job),
EvictedMessage (that link's sessions dropped for the held-audio budget) and StatusMessage
(the worker's state, pushed every STATUS_EVERY_S, which the proxy answers the event loop's
synchronous questions from). Each ingest process also sends the first model process its own
/metrics counts (MetricsMessage), which that process adds up (MetricsBoard) and pushes back
with its status, so that every ingest process's /metrics reports the whole server. All small
and picklable; torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ichigo_stream.actions import Job, JobResult

from .admission import Admission
from .metrics import BATCH_BUCKETS, Histogram, ServerMetrics, WorkerStats
from .shared_audio import AudioRing, AudioSlot

# How often a model process tells every ingest process its worker's state: the staleness of
# admits_sessions, queue_depth and /metrics' worker figures in an ingest process.
STATUS_EVERY_S = 0.1
# How often an ingest process sends its own counts (MetricsMessage): the staleness of the
# sums every ingest process's /metrics reports.
METRICS_EVERY_S = 1.0
# A model process silent for this long is taken for dead or stalled (/livez 503).
STATUS_STALE_S = 5.0


@dataclass(frozen=True)
class Hello:
    ring: str  # the name of the ingest process's AudioRing
    pid: int


@dataclass(frozen=True)
class JobMessage:
    """A Job without its samples: they are in the sender's ring at `slot` (or inline in
    `audio` when the ring had no room)."""

    id: int
    session: str
    segment: int
    kind: Literal["final", "partial"]
    start: int
    end: int
    slot: AudioSlot | None
    audio: np.ndarray | None
    text: bool
    language: str | None
    text_prefix: tuple[int, ...]

    @classmethod
    def of(cls, job: Job, ring: AudioRing) -> JobMessage:
        slot = ring.write(job.audio)
        return cls(
            job.id, job.session, job.segment, job.kind, job.start, job.end, slot,
            job.audio if slot is None else None, job.text, job.language, job.text_prefix,
        )  # fmt: skip

    def to_job(self, ring: AudioRing, job_type: type[Job] = Job, **extra: object) -> Job:
        """The job in the model process, its audio copied out of the ring (which frees it)."""
        audio = ring.read(self.slot) if self.slot is not None else self.audio
        assert audio is not None
        return job_type(
            self.session, self.segment, self.kind, self.start, self.end, audio, self.text,
            self.language, self.text_prefix, id=self.id, **extra,
        )  # fmt: skip


@dataclass(frozen=True)
class CancelMessage:
    job_id: int


@dataclass(frozen=True)
class ResultMessage:
    job_id: int
    result: JobResult


@dataclass(frozen=True)
class AdmitMessage:
    """A session the ingest process admitted on its cached decision: the model process counts
    its demand from now (ModelWorker.admit)."""

    session: str


@dataclass(frozen=True)
class SessionClosedMessage:
    """A session is over: its demand stops counting (ModelWorker.session_closed)."""

    session: str


@dataclass(frozen=True)
class EvictedMessage:
    sessions: tuple[str, ...]


@dataclass(frozen=True)
class MetricsMessage:
    """An ingest process's own /metrics counts, every METRICS_EVERY_S, to the first model
    process, which adds up every ingest process's (ClusterMetrics)."""

    pid: int
    metrics: ServerMetrics
    open_sessions: int


@dataclass(frozen=True)
class ClusterMetrics:
    """Every ingest process's counts added up: what each one's /metrics reports."""

    metrics: ServerMetrics
    open_sessions: int
    processes: int


class MetricsBoard:
    """The first model process's sum of the ingest processes' counts (sans-I/O). A process
    that has gone keeps its last counts in the sum, so the counters never go back."""

    def __init__(self) -> None:
        self._latest: dict[int, MetricsMessage] = {}
        self._gone = ServerMetrics()

    def update(self, message: MetricsMessage) -> None:
        self._latest[message.pid] = message

    def retire(self, pid: int) -> None:
        last = self._latest.pop(pid, None)
        if last is not None:
            self._gone.merge(last.metrics)

    def total(self) -> ClusterMetrics:
        metrics = self._gone.copy()
        latest = list(self._latest.values())
        for message in latest:
            metrics.merge(message.metrics)
        return ClusterMetrics(metrics, sum(m.open_sessions for m in latest), len(latest))


@dataclass(frozen=True)
class WorkerStatus:
    """What the event loop asks a worker synchronously, as of the model process's last push."""

    healthy: bool = False
    alive: bool = False
    queue_depth: int = 0
    admits_sessions: bool = True
    stats: WorkerStats = field(default_factory=WorkerStats)
    cluster: ClusterMetrics | None = None  # from the first model process only
    # Admission control's answer for a new session (None: none yet, as before warm-up).
    admission: Admission | None = None


@dataclass(frozen=True)
class StatusMessage:
    status: WorkerStatus


def merged_status(statuses: list[WorkerStatus]) -> WorkerStatus:
    """Several model processes as one worker: healthy and admitting only if all are; queues
    and counts summed."""
    stats = WorkerStats()
    batch = Histogram(BATCH_BUCKETS)
    for status in statuses:
        s = status.stats
        for i, n in enumerate(s.batch_size.counts):
            batch.counts[i] += n
        batch.total += s.batch_size.total
        batch.count += s.batch_size.count
        stats.jobs_done += s.jobs_done
        stats.jobs_failed += s.jobs_failed
        stats.partials_shed += s.partials_shed
        stats.texts_decoded += s.texts_decoded
        stats.held_bytes += s.held_bytes
        stats.sessions_evicted += s.sessions_evicted
    stats.batch_size = batch
    return WorkerStatus(
        healthy=bool(statuses) and all(s.healthy for s in statuses),
        alive=bool(statuses) and all(s.alive for s in statuses),
        queue_depth=sum(s.queue_depth for s in statuses),
        admits_sessions=all(s.admits_sessions for s in statuses),
        admission=merged_admission([s.admission for s in statuses if s.admission is not None]),
        stats=stats,
        cluster=next((s.cluster for s in statuses if s.cluster is not None), None),
    )


def merged_admission(answers: list[Admission]) -> Admission | None:
    """Several model processes' answers as the server's, for /readyz and /metrics: capacity
    and demand summed; it admits while any of them does (a new session goes to the one its id
    hashes to, whose own answer WorkerProxy.admit uses)."""
    if len(answers) <= 1:
        return answers[0] if answers else None
    refusals = [a.retry_after_ms for a in answers if not a.admits and a.retry_after_ms]
    admits = any(a.admits for a in answers)
    return Admission(
        admits=admits,
        retry_after_ms=None if admits else min(refusals, default=None),
        capacity=sum(a.capacity for a in answers),
        demand_finals=sum(a.demand_finals for a in answers),
        demand_partials=sum(a.demand_partials for a in answers),
        newcomer=sum(a.newcomer for a in answers) / len(answers),
        headroom=answers[0].headroom,
    )
