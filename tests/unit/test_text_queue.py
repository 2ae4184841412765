"""The worker's text queue: finals first, the newest partial per session, stale ones shed."""

from __future__ import annotations

import numpy as np

from ichigo_stream.actions import Job
from ichigo_stream_server.text_queue import TextQueue


def job(session: str, kind: str, segment: int = 0) -> Job:
    return Job(session, segment, kind, 0, 1, np.zeros(1, np.float32), True)  # type: ignore[arg-type]


def test_finals_first_then_partials_oldest_first_up_to_max_batch() -> None:
    queue = TextQueue()
    p1, p2 = job("p1", "partial"), job("p2", "partial")
    f1, f2 = job("a", "final"), job("b", "final")
    for j in (p1, p2, f1, f2):
        assert queue.add(j, [1], now=0.0) == 0
    assert len(queue) == 4
    batch, shed = queue.take(3, now=0.1, max_age_s=2.0)
    assert [t.job for t in batch] == [f1, f2, p1] and shed == 0
    batch, _ = queue.take(3, now=0.1, max_age_s=2.0)
    assert [t.job for t in batch] == [p2] and len(queue) == 0


def test_a_newer_partial_replaces_the_queued_one() -> None:
    queue = TextQueue()
    older, newer = job("s", "partial"), job("s", "partial")
    assert queue.add(older, [1], 0.0) == 0
    assert queue.add(newer, [1, 2], 0.5) == 1
    batch, _ = queue.take(8, 0.6, 2.0)
    assert [(t.job, t.tokens) for t in batch] == [(newer, [1, 2])]


def test_the_final_of_a_segment_sheds_its_sessions_queued_partial() -> None:
    queue = TextQueue()
    partial, later, final = job("s", "partial", 0), job("t", "partial", 3), job("t", "final", 2)
    queue.add(partial, [1], 0.0)
    queue.add(later, [1], 0.0)
    assert queue.add(final, [1], 0.0) == 0  # t's partial is of a later segment: kept
    assert queue.add(job("s", "final", 0), [1], 0.0) == 1
    batch, _ = queue.take(8, 0.0, 2.0)
    assert [t.job.session for t in batch] == ["t", "s", "t"]
    assert [t.job.kind for t in batch] == ["final", "final", "partial"]


def test_stale_partials_are_shed_finals_never() -> None:
    queue = TextQueue()
    stale, fresh, final = job("a", "partial"), job("b", "partial"), job("c", "final")
    queue.add(stale, [1], 0.0)
    queue.add(final, [1], 0.0)
    queue.add(fresh, [1], 2.5)
    batch, shed = queue.take(8, now=3.0, max_age_s=2.0)
    assert [t.job for t in batch] == [final, fresh] and shed == 1


def test_cancel() -> None:
    queue = TextQueue()
    partial, final = job("a", "partial"), job("b", "final")
    queue.add(partial, [1], 0.0)
    queue.add(final, [1], 0.0)
    assert queue.cancel(partial) and queue.cancel(final)
    assert not queue.cancel(final) and not queue.cancel(job("a", "partial"))
    assert len(queue) == 0
