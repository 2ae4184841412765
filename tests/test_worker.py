"""The model worker's scheduling, on the real (tiny) model: what shares a batch, what is shed."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from models import ModelFiles

from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.session import Job, JobResult
from ichigo_stream_server.worker import ModelWorker


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
def tokenizer(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options)[0]


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
    worker = ModelWorker(model, lambda j, r: None, max_batch=8)  # type: ignore[arg-type]
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
