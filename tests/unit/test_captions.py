"""Live captions: LocalAgreement's properties, and the session's partial text and final prefix."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pytest
from test_session import Driver, fake_tokens, sample  # noqa: F401  # sample: a fixture

from ichigo_stream.actions import Job, JobResult
from ichigo_stream.captions import LocalAgreement, caption_text, common_prefix

# Text tokens of a toy vocabulary: each id stands for these bytes. Some pieces split
# multi-byte characters ("é" is C3 A9, "日" is E6 97 A5), as Whisper's byte-level BPE does.
VOCAB: dict[int, bytes] = {
    0: b" the",
    1: b" cat",
    2: b" sat",
    3: b"\xc3",
    4: b"\xa9",
    5: b"\xe6\x97",
    6: b"\xa5",
    7: b" ",
    8: b".",
    9: b"",  # a timestamp: no text
}


def pieces(tokens: tuple[int, ...]) -> tuple[bytes, ...]:
    return tuple(VOCAB[t] for t in tokens)


def full_text(tokens: tuple[int, ...]) -> str:
    """What the worker's final text is: Whisper's decode(...).strip()."""
    return b"".join(pieces(tokens)).decode("utf-8", errors="replace").strip()


def random_hypotheses(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """Decodings that mostly extend each other, sometimes change their mind."""
    out: list[tuple[int, ...]] = []
    current: list[int] = []
    for _ in range(n):
        if current and rng.random() < 0.3:
            del current[rng.randrange(len(current)) :]  # revise a tail
        current += [rng.randrange(len(VOCAB)) for _ in range(rng.randrange(4))]
        out.append(tuple(current))
    return out


def test_common_prefix() -> None:
    assert common_prefix((1, 2, 3), (1, 2, 4)) == (1, 2)
    assert common_prefix((), (1,)) == ()
    assert common_prefix((1, 2), (1, 2, 3)) == (1, 2)


def test_two_decodings_must_agree() -> None:
    agreement = LocalAgreement()
    assert agreement.update((0, 1), pieces((0, 1))) == ()  # one decoding: nothing agreed yet
    assert agreement.update((0, 1, 2), pieces((0, 1, 2))) == (0, 1)
    assert agreement.text == "the cat"
    assert agreement.update((0, 2), pieces((0, 2))) == (0, 1)  # never retracts
    assert agreement.update((0, 2, 8), pieces((0, 2, 8))) == (0, 1)  # incompatible: kept
    with pytest.raises(ValueError, match="pieces"):
        agreement.update((0,), ())


@pytest.mark.parametrize("seed", range(200))
def test_agreement_only_grows_and_each_caption_prefixes_the_next(seed: int) -> None:
    rng = random.Random(seed)
    agreement = LocalAgreement()
    agreed: list[tuple[int, ...]] = []
    texts: list[str] = []
    for hypothesis in random_hypotheses(rng, 12):
        agreed.append(agreement.update(hypothesis, pieces(hypothesis)))
        texts.append(agreement.text)
    for before, after in itertools.pairwise(agreed):
        assert after[: len(before)] == before
    for before, after in itertools.pairwise(texts):
        assert after.startswith(before)
    # The final decoding continues the agreed tokens: its text starts with every caption.
    final = agreed[-1] + tuple(rng.randrange(len(VOCAB)) for _ in range(rng.randrange(5)))
    for text in texts:
        assert full_text(final).startswith(text), (text, full_text(final))


def test_caption_text_holds_back_a_split_character() -> None:
    assert caption_text([b" caf", b"\xc3"]) == "caf"
    assert caption_text([b" caf", b"\xc3", b"\xa9"]) == "café"
    assert caption_text([b" \xe6\x97"]) == ""
    assert caption_text([b" ", b" "]) == ""


# -- the session -----------------------------------------------------------------------------


def decoding(job: Job, continuation: tuple[int, ...]) -> JobResult:
    """A worker's text result: the job's forced prefix, then the continuation."""
    tokens = job.text_prefix + continuation
    return JobResult(
        tokens=fake_tokens(job),
        text=full_text(tokens),
        text_tokens=tokens,
        text_pieces=pieces(tokens),
    )


def captioning(**start: Any) -> Driver:
    d = Driver(text_available=True, auto=False)
    d.start(text=True, partials=True, partial_interval_ms=300, **start)
    return d


def test_partials_carry_the_agreed_caption_and_the_final_continues_it(
    sample: np.ndarray,  # noqa: F811  # the fixture
) -> None:
    d = captioning()
    pcm = sample.tobytes()
    # Each decoding starts with its job's forced prefix (the agreement so far), as the
    # worker's do; the fifth ends right after it.
    script = [
        (0, 1),
        (0, 1, 2),
        (0, 1, 2, 3),
        (0, 1, 2, 3, 4, 8),
        (0, 1, 2, 3),
        (0, 1, 2, 3, 4, 8, 7),
        (0, 1, 2, 3, 4, 8, 7, 1),
    ]
    pos = 0
    while len(d.of_type("partial")) < len(script):
        d.audio(pcm[pos : pos + 3200])
        pos += 3200
        for job in [j for j in d.queue if j.kind == "partial"]:
            hypothesis = script[len(d.of_type("partial"))]
            assert hypothesis[: len(job.text_prefix)] == job.text_prefix
            d.answer(job, decoding(job, hypothesis[len(job.text_prefix) :]))
    texts = [m["text"] for m in d.of_type("partial")]
    # "\xc3" (token 3) waits for the token that completes "é".
    sat = "the cat sat"
    assert texts == ["", "the cat", sat, sat, sat, sat, "the cat saté."]
    jobs = [j for j in d.submitted if j.kind == "partial"]
    assert all(j.text and j.language is None for j in jobs)
    # The segment ends: its final decoding is forced to continue the last caption sent.
    d.audio(pcm[pos:])
    d.stop()
    assert d.finals(0)[-1].text_prefix == (0, 1, 2, 3, 4, 8, 7)
    for job in list(d.queue):
        d.answer(job, decoding(job, (1,) if job.kind == "final" else ()))
    segment = d.of_type("segment")[0]
    assert segment["text"] == "the cat saté.  cat" and segment["text"].startswith(texts[-1])


def test_the_caption_is_frozen_once_the_final_job_exists(sample: np.ndarray) -> None:  # noqa: F811
    # The k-th decoding is " the" k+1 times: each agreement is one " the" longer. The newest
    # partial is held back until the segment's (speculative) final job exists.
    d = captioning()
    pcm = sample.tobytes()
    pos = 0
    held: Job | None = None
    while not d.finals(0):
        d.audio(pcm[pos : pos + 3200])
        pos += 3200
        for job in [j for j in d.queue if j.kind == "partial"]:
            if held is not None:
                d.answer(held, decoding(held, (0, 0)))
            held = job
            d.queue.remove(job)
    assert held is not None
    before = d.of_type("partial")[-1]["text"]
    assert before.count("the") >= 2
    final = d.finals(0)[-1]
    assert caption_text(pieces(final.text_prefix)) == before
    # The held partial decoded far past the final's prefix: the caption does not grow.
    d.answer(held, decoding(held, (0, 0, 0, 0)))
    after = d.of_type("partial")[-1]
    assert after["end"] > d.of_type("partial")[-2]["end"]  # it was sent...
    assert after["text"] == before  # ...with the caption unchanged


def test_without_text_partials_have_no_text_field(sample: np.ndarray) -> None:  # noqa: F811
    d = Driver(auto=True)
    d.start(partials=True, partial_interval_ms=300)
    d.audio(sample.tobytes()[: 3200 * 20])
    partials = d.of_type("partial")
    assert partials and all("text" not in m for m in partials)
    assert all(not j.text and j.text_prefix == () for j in d.submitted)


def test_a_partial_whose_text_failed_repeats_the_caption(sample: np.ndarray) -> None:  # noqa: F811
    d = captioning()
    pcm = sample.tobytes()
    pos = 0
    results = [(0, 1), (0, 1, 2), None]
    while results:
        d.audio(pcm[pos : pos + 3200])
        pos += 3200
        for job in [j for j in d.queue if j.kind == "partial"]:
            hypothesis = results.pop(0)
            if hypothesis is None:
                d.answer(job, JobResult(tokens=fake_tokens(job), error="text decoding failed"))
            else:
                d.answer(job, decoding(job, hypothesis[len(job.text_prefix) :]))
    assert [m["text"] for m in d.of_type("partial")] == ["", "the cat", "the cat"]
