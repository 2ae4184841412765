"""The worker's queue of text decodings: finals first, then the newest partial per session.

Not thread-safe: the worker holds its lock around every call. A text job waits here with
the sound tokens its token batch produced; the worker takes a batch of up to max_batch
(sessions, languages and prefixes mixed) between token batches. Partial text is shed like
partial tokens: a newer partial of a session replaces its queued one, a partial older than
max_age when taken is dropped, and the final of a segment drops that session's queued
partial of the same or an earlier segment (its result would be ignored).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ichigo_stream.actions import Job


@dataclass(frozen=True)
class TextJob:
    job: Job
    tokens: list[int]
    queued_at: float


class TextQueue:
    def __init__(self) -> None:
        self._finals: deque[TextJob] = deque()
        self._partials: OrderedDict[str, TextJob] = OrderedDict()  # by session, oldest first

    def __len__(self) -> int:
        return len(self._finals) + len(self._partials)

    def add(self, job: Job, tokens: list[int], now: float) -> int:
        """Queue a job; returns how many partials it sheds (0 or 1)."""
        item = TextJob(job, tokens, now)
        queued = self._partials.get(job.session)
        if job.kind == "final":
            self._finals.append(item)
            if queued is None or queued.job.segment > job.segment:
                return 0
        if queued is not None:
            del self._partials[job.session]
        if job.kind == "partial":
            self._partials[job.session] = item
        return 0 if queued is None else 1

    def cancel(self, job: Job) -> bool:
        """Drop a queued job; False when it is not queued here."""
        queued = self._partials.get(job.session)
        if queued is not None and queued.job is job:
            del self._partials[job.session]
            return True
        for item in self._finals:
            if item.job is job:
                self._finals.remove(item)
                return True
        return False

    def take(self, max_batch: int, now: float, max_age_s: float) -> tuple[list[TextJob], int]:
        """Up to max_batch jobs: the waiting finals first (they hold segment messages), then
        the oldest fresh partials; and how many stale partials were shed on the way."""
        batch: list[TextJob] = []
        shed = 0
        while self._finals and len(batch) < max_batch:
            batch.append(self._finals.popleft())
        while self._partials and len(batch) < max_batch:
            _, item = self._partials.popitem(last=False)
            if now - item.queued_at > max_age_s:
                shed += 1
                continue
            batch.append(item)
        return batch, shed
