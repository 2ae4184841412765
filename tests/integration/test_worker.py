"""The model worker's scheduling, on the real (tiny) model: what shares a batch, what is shed;
and its stats, which stay the same size however many batches run."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import pytest
import torch
from models import ModelFiles
from streaming import http_get

from ichigo_stream.actions import Job, JobResult
from ichigo_stream.geometry import TokenGeometry
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.model_info import ModelInfo
from ichigo_stream_server.app import StreamServer, running_server
from ichigo_stream_server.config import ServerConfig
from ichigo_stream_server.lifecycle import configure_torch
from ichigo_stream_server.metrics import BATCH_BUCKETS, Histogram
from ichigo_stream_server.worker import ModelWorker, WorkerStats


class Recording:
    """The real tokenizer, recording the clip lengths of every batch it runs."""

    def __init__(self, tokenizer: IchigoTokenizer) -> None:
        self.tokenizer = tokenizer
        self.batches: list[list[int]] = []
        self.has_text_model = False

    def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.batches.append([len(c) for c in clips])
        return self.tokenizer.quantize(clips)


@pytest.fixture(scope="module")
def loaded(tiny_model_files: ModelFiles) -> tuple[IchigoTokenizer, ModelInfo]:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options)


@pytest.fixture(scope="module")
def tokenizer(loaded: tuple[IchigoTokenizer, ModelInfo]) -> IchigoTokenizer:
    return loaded[0]


def job(session: str, kind: str, n: int) -> Job:
    return Job(session, 0, kind, 0, n, np.zeros(n, dtype=np.float32))  # type: ignore[arg-type]


def run(worker: ModelWorker, jobs: list[Job], expected_results: int) -> list[tuple[Job, JobResult]]:
    results: list[tuple[Job, JobResult]] = []
    done = threading.Event()

    def on_result(j: Job, r: JobResult) -> None:
        results.append((j, r))
        if len(results) == expected_results:
            done.set()

    worker.on_result = on_result
    for j in jobs:
        worker.submit(j)  # all queued before the thread starts: one scheduling decision
    worker.start()
    assert done.wait(60), f"only {len(results)} results"
    worker.stop(10)
    return results


def test_finals_never_share_a_batch_with_partials(tokenizer: IchigoTokenizer) -> None:
    model = Recording(tokenizer)
    # Partials wait behind the finals' batch; on a loaded machine that can take longer than
    # the default 2 s age limit, which would shed them: this test is about batching, not age.
    worker = ModelWorker(
        model,  # type: ignore[arg-type]
        lambda j, r: None,
        max_batch=8,
        partial_max_age_s=600,
    )
    finals = [job(f"s{i}", "final", 16_000 + i) for i in range(3)]
    partials = [job(f"p{i}", "partial", 8_000 + i) for i in range(5)]
    results = run(worker, partials + finals, expected_results=8)
    assert model.batches[0] == [16_000, 16_001, 16_002]  # the finals first, alone
    # Then partials, at most max_batch // 4 = 2 at a time.
    assert sorted(n for b in model.batches[1:] for n in b) == [8_000 + i for i in range(5)]
    assert all(len(b) <= 2 for b in model.batches[1:])
    assert all(
        r.tokens is not None and len(r.tokens) == 25 for j, r in results if j.kind == "final"
    )


def test_a_newer_partial_replaces_the_queued_one_and_is_counted_shed(
    tokenizer: IchigoTokenizer,
) -> None:
    model = Recording(tokenizer)
    worker = ModelWorker(model, lambda j, r: None, max_batch=4)  # type: ignore[arg-type]
    older, newer = job("s", "partial", 8_000), job("s", "partial", 9_600)
    results = run(worker, [older, newer], expected_results=1)
    assert [j for j, _ in results] == [newer]
    assert model.batches == [[9_600]]
    assert worker.stats.partials_shed == 1


# -- stats: a fixed size, however many batches ---------------------------------------------------


class Instant:
    """The real tokenizer's interface with the model call replaced by zeros of the right count.

    Thousands of batches take a second with it; the real model (0.25 s a clip here) would take
    many minutes, and the stats under test do not depend on what the model computes.
    """

    def __init__(self, inner: IchigoTokenizer) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.has_text_model = False

    def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.batches.append(len(clips))
        return [
            torch.zeros(TokenGeometry().n_tokens(len(clip)), dtype=torch.long) for clip in clips
        ]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def shape(stats: WorkerStats) -> list[tuple[str, object]]:
    """What the stats hold, without the values: equal shapes, equal memory."""
    out: list[tuple[str, object]] = []
    for f in fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, Histogram):
            out.append((f.name, (value.buckets, len(value.counts))))
        else:
            assert type(value) is int, (f.name, value)  # no container that could grow
            out.append((f.name, int))
    return out


def histogram(metrics: str, name: str) -> tuple[dict[str, int], float, int]:
    """The buckets (le -> cumulative count), sum and count of a histogram in /metrics."""
    buckets = {
        le: int(n) for le, n in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\d+)$', metrics, re.M)
    }
    [total] = re.findall(rf"^{name}_sum (\S+)$", metrics, re.M)
    [count] = re.findall(rf"^{name}_count (\d+)$", metrics, re.M)
    return buckets, float(total), int(count)


@pytest.mark.timeout(120)
def test_stats_stay_one_size_over_thousands_of_batches_and_metrics_count_every_one(
    loaded: tuple[IchigoTokenizer, ModelInfo],
) -> None:
    tokenizer, info = loaded
    model = Instant(tokenizer)
    n_jobs = 3_000
    rng = random.Random(7)

    async def main() -> tuple[list[WorkerStats], WorkerStats, str, list[int]]:
        config = ServerConfig(port=0, max_batch=8, max_wait_ms=0.0)
        async with running_server(config, model, info) as server:  # type: ignore[arg-type]
            worker = server.worker
            model.batches.clear()  # the warm-up's batch is not a served batch
            before = worker.stats_snapshot()
            snapshots: list[WorkerStats] = []
            submitted = 0
            while submitted < n_jobs:  # in waves of random size: batches of every size
                for _ in range(min(rng.randint(1, 20), n_jobs - submitted)):
                    worker.submit(job(f"s{submitted}", "final", 1600))
                    submitted += 1
                snapshots.append(worker.stats_snapshot())  # read while the worker writes
                while worker.queue_depth:  # taken: the next wave makes batches of its own
                    await asyncio.sleep(0.001)
            deadline = time.monotonic() + 60
            while worker.stats_snapshot().jobs_done < n_jobs:
                assert time.monotonic() < deadline, worker.stats_snapshot()
                await asyncio.sleep(0.01)
            _, _, metrics = await http_get(server.port, "/metrics")
            assert shape(worker.stats) == shape(before)
            return snapshots, worker.stats_snapshot(), metrics, list(model.batches)

    snapshots, after, metrics, batches = asyncio.run(main())
    assert len(batches) >= n_jobs / 8 and len(set(batches)) > 3, batches  # many, of many sizes
    # Every snapshot is whole: its histogram never counts a batch in one place only.
    for snapshot in snapshots:
        assert sum(snapshot.batch_size.counts) == snapshot.batch_size.count == snapshot.batches
    assert after.batches == len(batches) and after.jobs_done == n_jobs
    buckets, total, count = histogram(metrics, "ichigo_batch_size")
    assert count == len(batches) and total == n_jobs == sum(batches)
    expected = {str(b): sum(1 for n in batches if n <= b) for b in BATCH_BUCKETS}
    assert buckets == {**expected, "+Inf": len(batches)}


# -- start-up: warm-up off the event loop, torch threads from the config -----------------------


@pytest.mark.timeout(60)
def test_warm_up_runs_off_the_event_loop(loaded: tuple[IchigoTokenizer, ModelInfo]) -> None:
    """The warm-up batch waits for a task on the event loop: run on the loop, it would wait
    for itself (and time out); run on a worker thread, the loop is free to set the gate."""
    tokenizer, info = loaded
    gate = threading.Event()
    threads: list[threading.Thread] = []

    class Gated(Instant):
        def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            threads.append(threading.current_thread())
            assert gate.wait(20), "the event loop was blocked during the warm-up"
            return super().quantize(clips)

    async def main() -> threading.Thread:
        loop_thread = threading.current_thread()
        asyncio.get_running_loop().call_later(0.1, gate.set)
        config = ServerConfig(port=0, max_batch=2)
        async with running_server(config, Gated(tokenizer), info):  # type: ignore[arg-type]
            pass
        return loop_thread

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads


def test_torch_threads_are_set_at_start_up_not_by_the_server(
    loaded: tuple[IchigoTokenizer, ModelInfo],
) -> None:
    tokenizer, info = loaded
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        StreamServer(ServerConfig(threads=other), tokenizer, info)  # constructs, sets nothing
        assert torch.get_num_threads() == before
        configure_torch(ServerConfig(threads=None))  # None: torch's default stays
        assert torch.get_num_threads() == before
        configure_torch(ServerConfig(threads=other))
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
