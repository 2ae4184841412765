"""The model worker's queue policy (server.scheduler.WorkQueue), without threads or a model:
round-robin of finals across sessions, partials shed first, and the held-audio budget."""

from __future__ import annotations

import numpy as np
import pytest

from ichigo_stream.actions import Job
from ichigo_stream_server.scheduler import QueueOptions, WorkQueue

SECOND = 16_000 * 4  # bytes of one second of float32 audio at 16 kHz


def job(session: str, kind: str = "final", seconds: float = 1.0, segment: int = 0) -> Job:
    n = round(seconds * 16_000)
    return Job(session, segment, kind, 0, n, np.zeros(n, dtype=np.float32))  # type: ignore[arg-type]


def names(batch: list[Job]) -> list[str]:
    return [f"{j.session}{j.segment}" for j in batch]


def queue(max_batch: int = 4, budget: float = float("inf"), **kw: float) -> WorkQueue:
    return WorkQueue(QueueOptions(max_batch=max_batch, held_budget_bytes=budget, **kw))


def drain(q: WorkQueue, now: float = 0.0) -> list[list[str]]:
    batches = []
    while batch := q.take_batch(now):
        batches.append(names(batch))
    return batches


# -- fairness ----------------------------------------------------------------------------------


def test_a_backlog_delays_another_sessions_final_by_one_job_not_all_of_it() -> None:
    q = queue(max_batch=1)  # the CPU default: one clip per batch
    for i in range(20):
        q.add(job("abuser", segment=i), 0.0)
    q.add(job("good"), 0.0)
    batches = drain(q)
    # FIFO would run it 21st; round-robin runs it second
    assert batches[:3] == [["abuser0"], ["good0"], ["abuser1"]]
    assert len(batches) == 21


def test_batches_take_one_job_per_session_in_turn_and_continue_where_they_stopped() -> None:
    q = queue(max_batch=2)
    for i in range(3):
        q.add(job("a", segment=i), 0.0)
        q.add(job("b", segment=i), 0.0)
    q.add(job("c"), 0.0)
    assert drain(q) == [["a0", "b0"], ["c0", "a1"], ["b1", "a2"], ["b2"]]


def test_a_session_joining_later_waits_for_one_round_at_most() -> None:
    q = queue(max_batch=2)
    for i in range(10):
        q.add(job("a", segment=i), 0.0)
        q.add(job("b", segment=i), 0.0)
    assert names(q.take_batch(0.0)) == ["a0", "b0"]
    q.add(job("c"), 0.0)
    assert names(q.take_batch(0.0)) == ["a1", "b1"]
    assert names(q.take_batch(0.0)) == ["c0", "a2"]


def test_finals_come_before_partials_and_never_share_a_batch() -> None:
    q = queue(max_batch=8, max_partial_batch=2)
    q.add(job("a", "partial"), 0.0)
    q.add(job("b", "partial"), 0.0)
    q.add(job("c", "partial"), 0.0)
    q.add(job("a", segment=1), 0.0)
    assert drain(q) == [["a1"], ["a0", "b0"], ["c0"]]


def test_a_newer_partial_replaces_the_older_and_stale_ones_are_shed() -> None:
    q = queue(partial_max_age_s=2.0)
    old, new = job("a", "partial"), job("a", "partial")
    q.add(old, 0.0)
    q.add(new, 0.0)
    assert q.partials_shed == 1 and len(q) == 1
    assert q.take_batch(0.0) == [new]
    q = queue(partial_max_age_s=2.0)
    q.add(job("a", "partial"), 0.0)
    q.add(job("b", "partial"), 5.0)
    assert names(q.take_batch(6.0)) == ["b0"]  # a's waited 6 s: stale
    assert q.partials_shed == 1 and len(q) == 0 and q.held_bytes == 0


def test_remove_drops_a_waiting_job_only() -> None:
    q = queue()
    a, b, p = job("a"), job("a", segment=1), job("a", "partial")
    for j in (a, b, p):
        q.add(j, 0.0)
    assert q.held_bytes == 3 * SECOND and q.held_by("a") == 3 * SECOND
    assert q.remove(a) and not q.remove(a)
    assert q.remove(p) and not q.remove(job("a", "partial"))
    assert q.take_batch(0.0) == [b]
    assert not q.remove(b)  # running: it finishes
    assert q.held_bytes == 0 and q.held_by("a") == 0 and len(q) == 0
    assert q.partials_shed == 0  # cancelled, not shed


# -- the held-audio budget ---------------------------------------------------------------------


def test_partials_go_first_when_waiting_audio_passes_half_the_budget() -> None:
    q = queue(budget=10 * SECOND)
    q.add(job("a", "partial", seconds=2), 0.0)
    q.add(job("b", segment=0, seconds=3), 0.0)  # 5 s held: at half, still accepted
    assert len(q) == 2
    q.add(job("c", "partial", seconds=1), 0.0)  # would pass half: turned away
    assert q.partials_shed == 1 and q.held_bytes == 5 * SECOND
    q.add(job("b", segment=1, seconds=1), 0.0)  # a final passes half: queued partials go
    assert q.partials_shed == 2 and q.held_bytes == 4 * SECOND
    assert drain(q) == [["b0", "b1"]]


def test_new_sessions_are_refused_over_three_quarters_of_the_budget() -> None:
    q = queue(budget=8 * SECOND)
    q.add(job("a", seconds=6), 0.0)
    assert q.admits_sessions  # 6 of 8: at 3/4
    q.add(job("b", seconds=0.5), 0.0)
    assert not q.admits_sessions
    q.take_batch(0.0)
    assert q.admits_sessions


def test_over_the_budget_the_session_holding_most_is_evicted() -> None:
    q = queue(max_batch=8, budget=10 * SECOND)
    for i in range(4):
        q.add(job("hog", segment=i, seconds=2), 0.0)  # 8 s
    assert q.add(job("good", seconds=1), 0.0) == []  # 9 s
    evicted = q.add(job("other", seconds=2), 0.0)  # 11 s: over
    assert evicted == ["hog"] and q.sessions_evicted == 1
    assert q.held_bytes == 3 * SECOND and q.held_by("hog") == 0
    assert drain(q) == [["good0", "other0"]]


def test_the_submitter_itself_is_evicted_when_it_holds_most() -> None:
    q = queue(budget=4 * SECOND)
    q.add(job("good", seconds=1), 0.0)
    assert q.add(job("hog", seconds=2), 0.0) == []
    assert q.add(job("hog", segment=1, seconds=2), 0.0) == ["hog"]
    assert drain(q) == [["good0"]]


@pytest.mark.parametrize("budget", [float("inf"), 1e12])
def test_no_budget_pressure_keeps_everything(budget: float) -> None:
    q = queue(max_batch=64, budget=budget)
    for i in range(40):
        assert q.add(job(f"s{i % 4}", segment=i, seconds=30), 0.0) == []
    assert q.admits_sessions and q.held_bytes == 40 * 30 * SECOND and q.final_count == 40
