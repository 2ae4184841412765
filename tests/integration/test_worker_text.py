"""The worker's text path on the real (tiny) model: text decoded in batches across sessions,
languages and prefixes, between token batches, never holding up token-only results."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from models import ModelFiles

import ichigo_stream_server.worker as worker_module
from ichigo_stream.actions import Job, JobResult
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.text_decoding import DecodedText, TextRequest, decode_texts
from ichigo_stream_server.worker import ModelWorker

# Random weights never say EOT: a short sample length keeps each decoding cheap.
SAMPLE_LEN = 6


@pytest.fixture(scope="module")
def tokenizer(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options, text=True)[0]


class Calls:
    """Records, in order, each token batch (its sizes) and each text batch (its requests)."""

    def __init__(self, tokenizer: IchigoTokenizer) -> None:
        self.tokenizer = tokenizer
        self.has_text_model = True
        self.log: list[tuple[str, list[object]]] = []
        self.lock = threading.Lock()

    def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with self.lock:
            self.log.append(("tokens", [len(c) for c in clips]))
        return self.tokenizer.quantize(clips)

    def decode(
        self, _: object, requests: Sequence[TextRequest], sample_len: int | None = None
    ) -> list[DecodedText]:
        # sample_len: the worker's max_text_tokens (None here: the worker's default), which
        # the recorder replaces by SAMPLE_LEN to keep the random decoder short.
        with self.lock:
            self.log.append(("text", list(requests)))
        return decode_texts(self.tokenizer, requests, sample_len=sample_len or SAMPLE_LEN)


@pytest.fixture
def calls(tokenizer: IchigoTokenizer, monkeypatch: pytest.MonkeyPatch) -> Calls:
    recorder = Calls(tokenizer)
    monkeypatch.setattr(worker_module, "decode_texts", recorder.decode)
    return recorder


def job(session: str, kind: str, n: int, text: bool, language: str | None = None,
        prefix: tuple[int, ...] = ()) -> Job:  # fmt: skip
    audio = np.sin(np.arange(n, dtype=np.float32) * (0.01 + len(session) * 0.003))
    return Job(session, 0, kind, 0, n, audio, text, language, prefix)  # type: ignore[arg-type]


def run(worker: ModelWorker, jobs: list[Job], expected: int) -> list[tuple[Job, JobResult]]:
    results: list[tuple[Job, JobResult]] = []
    done = threading.Event()

    def on_result(j: Job, r: JobResult) -> None:
        results.append((j, r))
        if len(results) == expected:
            done.set()

    worker.on_result = on_result
    for j in jobs:
        worker.submit(j)  # all queued before the thread starts: one scheduling decision
    worker.start()
    assert done.wait(120), f"only {len(results)} results"
    worker.stop(10)
    return results


def test_text_is_batched_across_sessions_languages_and_prefixes(
    tokenizer: IchigoTokenizer, calls: Calls
) -> None:
    first = decode_texts(tokenizer, [TextRequest([5, 6, 7], "en")], sample_len=SAMPLE_LEN)[0]
    prefix = first.text_tokens[:3]
    jobs = [
        job("c", "final", 8_000, False),
        job("a", "partial", 16_000, True, "vi"),
        job("b", "partial", 100, True, "en", prefix),  # under one token: its prefix is its text
        job("dd", "partial", 12_000, True, "en", prefix),
        job("eee", "partial", 9_000, True, None),  # language detected
    ]
    worker = ModelWorker(
        calls,  # type: ignore[arg-type]
        lambda j, r: None,
        max_batch=16,  # partial token batches of max_batch // 4 = 4
        partial_max_age_s=600,  # a loaded machine must not shed them: this is about batching
    )
    results = {j.session: r for j, r in run(worker, jobs, expected=5)}
    texts = [entry for entry in calls.log if entry[0] == "text"]
    # The final's token batch, the partials', then one text batch for all four sessions.
    assert [kind for kind, _ in calls.log] == ["tokens", "tokens", "text"]
    batch = texts[0][1]
    assert [(r.language, r.prefix) for r in batch] == [
        ("vi", ()), ("en", prefix), ("en", prefix), (None, ())
    ]  # fmt: skip
    # Each item equals its own decoding alone.
    for session, request in zip(("a", "b", "dd", "eee"), batch, strict=True):
        alone = decode_texts(tokenizer, [request], sample_len=SAMPLE_LEN)[0]
        result = results[session]
        assert result.text == alone.text and result.text_tokens == alone.text_tokens
        assert result.text_pieces == alone.pieces and result.tokens == list(request.tokens)
        assert result.text_tokens[: len(request.prefix)] == request.prefix
    assert results["b"].tokens == [] and results["b"].text_tokens == prefix
    assert results["c"].text is None and results["c"].tokens
    assert worker.stats.texts_decoded == 4


def test_a_failing_item_fails_alone(calls: Calls) -> None:
    jobs = [job("a", "final", 8_000, True, "en"), job("b", "final", 8_000, True, "klingon")]
    worker = ModelWorker(calls, lambda j, r: None, max_batch=8)  # type: ignore[arg-type]
    results = {j.session: r for j, r in run(worker, jobs, expected=2)}
    assert results["a"].text is not None and results["a"].error is None
    assert results["b"].text is None and "text decoding failed" in (results["b"].error or "")
    assert results["b"].tokens  # the segment's tokens still come back


def test_token_work_waits_for_at_most_one_text_batch(calls: Calls) -> None:
    # Six captioned finals and six token-only finals, max_batch 2: token and text batches
    # alternate, and the token-only results never wait behind a text batch of their own.
    jobs = [job(f"t{i}", "final", 8_000 + i, True, "en") for i in range(6)]
    jobs += [job(f"n{i}", "final", 8_000 + i, False) for i in range(6)]
    worker = ModelWorker(calls, lambda j, r: None, max_batch=2)  # type: ignore[arg-type]
    results = run(worker, jobs, expected=12)
    order = [("text" if r.text is not None else "tokens") for _, r in results]
    kinds = [kind for kind, _ in calls.log]
    assert kinds.count("tokens") == 6
    last_tokens = len(kinds) - 1 - kinds[::-1].index("tokens")
    for a, b in itertools.pairwise(kinds[: last_tokens + 1]):
        # While token work waits, never two text batches in a row.
        assert not (a == "text" and b == "text"), kinds
    # Captioned jobs come through text batches of up to max_batch.
    assert all(len(requests) <= 2 for kind, requests in calls.log if kind == "text")
    assert order.count("text") == 6
