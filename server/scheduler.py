"""The model worker's waiting work: per-session round-robin of finals, partials, held audio.

Thread-free and clock-free (the caller passes `now`): the worker owns one WorkQueue and
calls it under its lock; tests drive it directly.

Fairness. Every job costs one 30 s encoder window whatever its length (the encoder pads each
clip to a full window), so deficit round-robin with a quantum of one window is a plain
round-robin: each session with waiting finals has its own FIFO, and a batch takes one job
from each session in turn, continuing where the last batch stopped. A session's backlog of
N finals therefore delays another session's next final by at most one job of it, not N.

Memory. The audio of waiting jobs is counted in bytes against a global budget. As it fills:
- over PARTIALS_SHARE of it, no partial is accepted and the queued ones are shed first;
- over SESSIONS_SHARE of it, new sessions are refused (the server asks admits_sessions);
- a final that takes it over the budget evicts the session(s) holding the most bytes
  (their jobs are dropped here and the server fails those sessions with `limit`, 1013).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from ichigo_stream.actions import Job

# Shares of the held-audio budget at which partials, then new sessions, are turned away:
# partials are best effort and superseded within partial_interval_ms anyway; refusing a new
# session early leaves the sessions already open the last quarter before anyone is evicted.
PARTIALS_SHARE = 0.5
SESSIONS_SHARE = 0.75


@dataclass(frozen=True)
class QueueOptions:
    max_batch: int = 32  # finals per batch
    max_partial_batch: int = 8  # partials per batch: a partial batch holds up new finals
    partial_max_age_s: float = 2.0  # an older partial is stale: dropped, not run
    held_budget_bytes: float = float("inf")  # audio of waiting jobs, all sessions together


class WorkQueue:
    """Waiting jobs: finals by session in round-robin order, one partial per session."""

    def __init__(self, options: QueueOptions) -> None:
        if options.max_batch < 1 or options.max_partial_batch < 1:
            raise ValueError("batch sizes must be >= 1")  # else nothing would ever run
        self.options = options
        self._finals: OrderedDict[str, deque[Job]] = OrderedDict()  # rotation order
        self._partials: OrderedDict[str, tuple[Job, float]] = OrderedDict()  # oldest first
        self._held: Counter[str] = Counter()  # bytes of waiting audio, by session
        self.held_bytes = 0
        self.final_count = 0
        self.partials_shed = 0  # superseded, stale, or turned away for memory
        self.sessions_evicted = 0

    # -- in --------------------------------------------------------------------------------

    def add(self, job: Job, now: float) -> list[str]:
        """Queue a job; returns the sessions evicted to keep within the budget (maybe none)."""
        if job.kind == "partial":
            self._drop_partial(job.session, shed=True)  # superseded before it ran
            if self.held_bytes + job.audio.nbytes > self._partial_limit:
                self.partials_shed += 1
                return []
            self._partials[job.session] = (job, now)
            self._hold(job, +1)
            return []
        self._finals.setdefault(job.session, deque()).append(job)
        self.final_count += 1
        self._hold(job, +1)
        while self._partials and self.held_bytes > self._partial_limit:
            self._drop_partial(next(iter(self._partials)), shed=True)
        evicted: list[str] = []
        while self.held_bytes > self.options.held_budget_bytes:
            costliest = max(self._held, key=self._held.__getitem__)
            self.drop_session(costliest)
            self.sessions_evicted += 1
            evicted.append(costliest)
        return evicted

    def remove(self, job: Job) -> bool:
        """Drop a job that has not run; False if it is not waiting (running, done, unknown)."""
        if job.kind == "partial":
            queued = self._partials.get(job.session)
            if queued is None or queued[0] is not job:
                return False
            self._drop_partial(job.session, shed=False)
            return True
        fifo = self._finals.get(job.session)
        if fifo is None or not any(j is job for j in fifo):
            return False
        fifo.remove(job)
        if not fifo:
            del self._finals[job.session]
        self.final_count -= 1
        self._hold(job, -1)
        return True

    def drop_session(self, session: str) -> None:
        """Drop every waiting job of one session."""
        for job in self._finals.pop(session, ()):
            self.final_count -= 1
            self._hold(job, -1)
        if session in self._partials:
            self._drop_partial(session, shed=False)

    # -- out -------------------------------------------------------------------------------

    def take_batch(self, now: float) -> list[Job]:
        """The next batch: finals round-robin across sessions; partials only when none wait.

        Finals never share a batch with partials: on CPU a bigger batch costs more per clip,
        and a final must not wait for partials that the next ones will supersede anyway.
        """
        batch: list[Job] = []
        while self._finals and len(batch) < self.options.max_batch:
            session, fifo = next(iter(self._finals.items()))
            job = fifo.popleft()
            if fifo:
                self._finals.move_to_end(session)  # its next job waits for everyone's turn
            else:
                del self._finals[session]
            self.final_count -= 1
            self._hold(job, -1)
            batch.append(job)
        if batch:
            return batch
        while self._partials and len(batch) < self.options.max_partial_batch:
            session, (job, queued_at) = next(iter(self._partials.items()))
            self._drop_partial(session, shed=False)
            if now - queued_at > self.options.partial_max_age_s:
                self.partials_shed += 1
                continue
            batch.append(job)
        return batch

    # -- state -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.final_count + len(self._partials)

    @property
    def admits_sessions(self) -> bool:
        """False while the held audio is over SESSIONS_SHARE of the budget."""
        return self.held_bytes <= SESSIONS_SHARE * self.options.held_budget_bytes

    def held_by(self, session: str) -> int:
        return self._held.get(session, 0)

    @property
    def _partial_limit(self) -> float:
        return PARTIALS_SHARE * self.options.held_budget_bytes

    def _drop_partial(self, session: str, *, shed: bool) -> None:
        queued = self._partials.pop(session, None)
        if queued is not None:
            self._hold(queued[0], -1)
            self.partials_shed += shed

    def _hold(self, job: Job, sign: int) -> None:
        size = sign * job.audio.nbytes
        self.held_bytes += size
        self._held[job.session] += size
        if self._held[job.session] <= 0:
            del self._held[job.session]
