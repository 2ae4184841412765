"""ManualSegmenter (commit-driven segments) and VadSegmenter.discard (a client's clear)."""

from __future__ import annotations

import numpy as np

from ichigo_stream.manual_segmentation import ManualSegmenter
from ichigo_stream.segmentation import (
    CandidateCancelled,
    EndpointCandidate,
    SegmentClosed,
    Span,
    SpeechStarted,
    VadOptions,
    VadSegmenter,
)


def test_manual_segments_are_the_audio_between_commits() -> None:
    seg = ManualSegmenter()
    assert seg.flush() == []  # nothing to commit
    assert seg.push(np.zeros(100, np.float32)) == [SpeechStarted(0, 0)]
    assert seg.push(np.zeros(50, np.float32)) == []
    assert seg.flush() == [SegmentClosed(0, Span(0, 150, "flush"))]
    assert seg.push(np.zeros(10, np.float32)) == [SpeechStarted(1, 150)]
    assert seg.discard() == [] and seg.open_start is None
    assert seg.push(np.zeros(10, np.float32)) == [SpeechStarted(1, 160)]  # index reused
    assert seg.finish() == [SegmentClosed(1, Span(160, 170, "flush"))]
    assert seg.finished


def test_manual_segments_split_at_the_cap_in_any_chunking() -> None:
    options = VadOptions(max_segment_s=1.0)  # 16000 samples
    whole = ManualSegmenter(options).push(np.zeros(40_000, np.float32))
    chunked, seg = [], ManualSegmenter(options)
    for _ in range(40):
        chunked += seg.push(np.zeros(1000, np.float32))
    assert (
        whole
        == chunked
        == [
            SpeechStarted(0, 0),
            SegmentClosed(0, Span(0, 16_000, "max_length")),
            SpeechStarted(1, 16_000),
            SegmentClosed(1, Span(16_000, 32_000, "max_length")),
            SpeechStarted(2, 32_000),
        ]
    )


def test_vad_discard_withdraws_the_candidate_and_reuses_the_index() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16_000) * 0.3).astype(np.float32)  # voiced for webrtcvad
    vad = VadSegmenter(VadOptions(aggressiveness=0, min_silence_ms=2000))
    events = vad.push(noise) + vad.push(np.zeros(16_000, np.float32))  # 1 s: a candidate
    assert isinstance(events[0], SpeechStarted)
    assert any(isinstance(e, EndpointCandidate) for e in events) and vad.in_speech
    assert vad.discard() == [CandidateCancelled(0)]
    assert not vad.in_speech and vad.discard() == []
    events = vad.push(noise)
    assert isinstance(events[0], SpeechStarted) and events[0].index == 0
    assert events[0].start >= 32_000  # after everything pushed before the clear
