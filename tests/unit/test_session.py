"""ServerSession, the protocol v1 state machine, driven sans-I/O: no sockets, no model.

Real speech goes in (the bundled sample: three sentences with pauses, and espeak-ng), time is
injected, and a stand-in "model" answers each Submit with tokens derived from the job: where
it starts, how long it is and a checksum of its audio. That stand-in is enough here because
these tests are about the protocol (what is sent, when, in which order, with which bounds and
which audio); the model's own tokens are covered by test_model.py and test_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ichigo_stream.actions import Action, Cancel, Close, Job, JobResult, Send, Submit
from ichigo_stream.assets import sample_path
from ichigo_stream.audio import float32_to_pcm16, pcm16_to_float32, resample
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import CloseCode, ProtocolError
from ichigo_stream.messages import Capabilities, ErrorMessage
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.segmentation import VadOptions, segment_vad
from ichigo_stream.session import ServerSession, SessionLimits
from ichigo_stream.tokens import format_tokens

SAMPLE_WAV = sample_path()
MODEL = ModelInfo(
    name="fake.pth",
    sha256="0" * 64,
    codebook_size=2561,
    mask_token=2048,
    token_rate=25,
    whisper="medium",
)
Speak = Callable[..., np.ndarray]  # the conftest fixture: speak(text) -> float32 16 kHz
TIME_KEYS = ("start", "end")


def fake_tokens(job: Job) -> list[int]:
    """Deterministic stand-in tokens: which samples the job covers, and a digest of its audio."""
    digest = zlib.crc32(np.ascontiguousarray(job.audio, dtype=np.float32).tobytes())
    return [job.start % 2561, len(job.audio) % 2561, digest % 2561]


def fake_result(job: Job) -> JobResult:
    text = f"text of {job.segment}" if job.text else None
    return JobResult(tokens=fake_tokens(job), text=text)


def ms(n: float) -> int:
    return round(n * SAMPLE_RATE / 1000)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """The bundled sample as int16 PCM at 16 kHz: 12.7 s, three sentences."""
    pcm, rate = sf.read(SAMPLE_WAV, dtype="int16")
    assert rate == SAMPLE_RATE and pcm.ndim == 1
    return pcm


@pytest.fixture(scope="module")
def sample_segments(sample: np.ndarray) -> list[tuple[int, int]]:
    """What offline `tokenize --segment vad` cuts the sample into."""
    segments = [(s.start, s.end) for s in segment_vad(pcm16_to_float32(sample))]
    assert len(segments) == 3  # the fixture itself: three sentences, two pauses
    return segments


@dataclass
class Driver:
    """One session plus a fake socket and a fake worker, with an injected clock.

    With auto=True the worker answers every job after the actions of the current call are
    carried out (as the real worker does: results arrive as later events, never in between).
    With auto=False jobs wait in `queue` until the test answers them.
    """

    limits: SessionLimits = field(default_factory=SessionLimits)
    text_available: bool = False
    auto: bool = True
    now: float = 0.0
    sent: list[dict[str, Any]] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    submitted: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)
    queue: list[Job] = field(default_factory=list)
    closed: Close | None = None

    def __post_init__(self) -> None:
        capabilities = Capabilities(text=self.text_available, limits=self.limits)
        self.session = ServerSession("sess1", MODEL, capabilities, self.now)

    # -- plumbing --------------------------------------------------------------------------

    def apply(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            assert self.closed is None, f"{action} after {self.closed}"
            self.actions.append(action)
            if isinstance(action, Send):
                # what the socket layer would send: must be valid (NaN-free) JSON
                self.sent.append(json.loads(action.message.to_json()))
            elif isinstance(action, Submit):
                job = action.job
                self.submitted.append(job)
                if job.kind == "partial":
                    # as the worker does: a newer partial replaces a queued older one
                    self.queue = [j for j in self.queue if j.kind != "partial"]
                self.queue.append(job)
            elif isinstance(action, Cancel):
                self.cancelled.append(action.job)
                # the worker drops a queued job; a running one would finish (see answer())
                self.queue = [job for job in self.queue if job is not action.job]
            else:
                self.closed = action
        if self.auto:
            self.run_worker()
        return actions

    def run_worker(self) -> None:
        while self.queue:
            self.answer(self.queue[0])

    def answer(self, job: Job, result: JobResult | None = None) -> list[Action]:
        """Deliver a job's result (even one cancelled or superseded: a late result)."""
        self.queue = [j for j in self.queue if j is not job]
        return self.apply(self.session.job_done(job, result or fake_result(job), self.now))

    # -- client side -----------------------------------------------------------------------

    def text(self, message: dict[str, Any] | str) -> list[Action]:
        data = message if isinstance(message, str) else json.dumps(message)
        return self.apply(self.session.receive(data, self.now))

    def start(self, **fields: Any) -> list[Action]:
        return self.text({"type": "start", **fields})

    def audio(
        self,
        pcm: bytes,
        chunk_bytes: int | Iterable[int] = 3200,
        speed: float = 1.0,
        bytes_per_second: int = 2 * SAMPLE_RATE,
    ) -> None:
        """Send pcm in chunks, the clock advancing by each chunk's duration / speed."""
        sizes: Iterator[int] = (
            iter(lambda: chunk_bytes, None) if isinstance(chunk_bytes, int) else iter(chunk_bytes)
        )
        pos = 0
        while pos < len(pcm) and self.closed is None:
            n = next(sizes, len(pcm) - pos)
            chunk = pcm[pos : pos + n]
            pos += len(chunk)
            self.now += len(chunk) / bytes_per_second / speed
            self.apply(self.session.receive(chunk, self.now))

    def stop(self) -> list[Action]:
        return self.text({"type": "stop"})

    # -- what came out ---------------------------------------------------------------------

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]

    @property
    def segments(self) -> list[tuple[float, float]]:
        return [(m["start"], m["end"]) for m in self.of_type("segment")]

    def finals(self, segment: int | None = None) -> list[Job]:
        return [
            j
            for j in self.submitted
            if j.kind == "final" and (segment is None or j.segment == segment)
        ]

    def error(self) -> tuple[str, int]:
        """The one fatal error: its code and the close code that followed it."""
        errors = self.of_type("error")
        assert len(errors) == 1, self.sent
        assert self.closed is not None and self.sent[-1] == errors[0]
        assert isinstance(self.actions[-1], Close)
        return errors[0]["code"], self.closed.code


def streamed(
    pcm: bytes, start: dict[str, Any] | None = None, chunk_bytes: int | Iterable[int] = 3200
) -> Driver:
    """A whole session: start, all the audio, stop; the worker answers everything at once.

    In real time, at any chunking: the message-rate limit is lifted (one sample a message
    is 16,000 messages a second)."""
    d = Driver(limits=SessionLimits(max_messages_per_s=math.inf))
    d.start(**(start or {}))
    d.audio(pcm, chunk_bytes)
    d.stop()
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL, d.sent[-3:]
    return d


def samples(seconds_: float) -> int:
    return round(seconds_ * SAMPLE_RATE)


def in_samples(message: dict[str, Any], key: str, offset: float = 0.0) -> int:
    """A time field back in whole samples of the session's timeline (checked to be whole)."""
    value = (message[key] - offset) * SAMPLE_RATE
    assert abs(value - round(value)) < 1e-6, (message, key)
    return round(value)


# -- start ------------------------------------------------------------------------------------


def test_ready_is_first_and_describes_the_model() -> None:
    d = Driver()
    d.start()
    assert d.sent == [
        {
            "type": "ready",
            "protocol": 1,
            "session": "sess1",
            "model": dataclasses.asdict(MODEL),
            "sample_rate": 16000,
            "capabilities": json.loads(json.dumps(dataclasses.asdict(Capabilities()))),
        }
    ]
    assert d.session.state == "streaming" and d.closed is None


@pytest.mark.parametrize("text", [False, True])
def test_ready_announces_the_capabilities_the_session_enforces(text: bool) -> None:
    limits = SessionLimits(max_message_bytes=4096, max_realtime=math.inf, idle_timeout_s=7.0)
    d = Driver(limits=limits, text_available=text)
    d.start()
    sent = d.sent[0]["capabilities"]
    assert sent["text"] is text and sent["partials"] is True
    assert (sent["min_sample_rate"], sent["max_sample_rate"]) == (8000, 48000)
    assert sent["encodings"] == ["pcm_s16le", "pcm_f32le"]
    assert sent["llm_formats"] == ["ichigo", "ichigo-rle"]
    assert sent["limits"] == {
        "max_message_bytes": 4096,
        "max_realtime": None,  # no limit (JSON has no infinity)
        "realtime_burst_s": 30.0,
        "max_session_s": 14400.0,
        "idle_timeout_s": 7.0,
        "max_pending_segments": 32,
        "max_windows_per_s": 3.0,
        "windows_burst": 30.0,
        "max_messages_per_s": 500.0,
    }
    # ... and they are the ones it applies: text as announced, the announced message size
    asks_text = Driver(limits=limits, text_available=text)
    asks_text.start(text=True)
    if text:
        assert asks_text.of_type("ready") and asks_text.closed is None
    else:
        assert asks_text.error() == ("unsupported", CloseCode.UNSUPPORTED_DATA)
    d.text('{"type": "flush", "pad": "%s"}' % ("x" * 4096))
    assert d.error() == ("too_large", CloseCode.MESSAGE_TOO_BIG)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"sample_rate": 4000}, "unsupported"),
        ({"sample_rate": "16k"}, "bad_message"),
        ({"encoding": "mulaw"}, "unsupported"),
        ({"channels": 6}, "unsupported"),
        ({"partials": "yes"}, "bad_message"),
        ({"partial_interval_ms": 50}, "unsupported"),
        ({"llm_format": "raw"}, "unsupported"),
        ({"vad": {"max_segment_s": 45}}, "unsupported"),
        ({"vad": {"tail_ms": None}}, "bad_message"),
        ({"offset": -1}, "bad_message"),
        ({"text": True}, "unsupported"),  # this server runs without --text
    ],
)
def test_bad_start_is_refused_with_an_error_then_1003(fields: dict[str, Any], code: str) -> None:
    d = Driver()
    d.start(**fields)
    assert d.error() == (code, CloseCode.UNSUPPORTED_DATA)
    assert len(d.sent) == 1  # no ready
    assert d.session.state == "closed"
    # once closed, nothing more comes out, whatever arrives
    assert d.session.receive(b"\0\0", 1.0) == []
    assert d.session.receive('{"type": "stop"}', 1.0) == []
    assert d.session.check_timeouts(10**6) == []
    assert d.session.shutdown(1.0) == []


def test_text_is_accepted_when_the_server_has_it(sample: np.ndarray) -> None:
    d = Driver(text_available=True)
    d.start(text=True, language="en", llm_format="ichigo")
    d.audio(sample.tobytes())
    d.stop()
    segments = d.of_type("segment")
    assert len(segments) == 3
    assert all(j.text and j.language == "en" for j in d.finals())
    for message in segments:
        assert message["text"] == f"text of {message['segment']}"
        assert message["llm"] == format_tokens(message["tokens"], "ichigo")
        # key order as documented: text and llm come before endpoint_ms
        assert list(message)[-3:] == ["text", "llm", "endpoint_ms"]


def test_without_text_or_llm_the_fields_are_absent(sample: np.ndarray) -> None:
    d = streamed(sample.tobytes(), {"llm_format": "ichigo-rle"})
    for message in d.of_type("segment"):
        assert "text" not in message
        assert message["llm"] == format_tokens(message["tokens"], "ichigo-rle")
    assert not any(j.text for j in d.finals())
    plain = streamed(sample.tobytes())
    assert not any({"text", "llm"} & set(m) for m in plain.of_type("segment"))


# -- protocol errors and their close codes ---------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [b"\0\0", '{"type": "flush"}', '{"type": "stop"}', "hello", '{"type": "audio"}'],
)
def test_anything_but_start_first_is_bad_message(first: str | bytes) -> None:
    d = Driver()
    d.apply(d.session.receive(first, 0.0))
    assert d.error() == ("bad_message", CloseCode.UNSUPPORTED_DATA)


def test_mid_stream_protocol_errors_cancel_outstanding_jobs(sample: np.ndarray) -> None:
    for bad in ('{"type": "start"}', "{not json", '{"type": "pause"}', '["stop"]'):
        d = Driver(auto=False)
        d.start(partials=True)
        d.audio(sample[: samples(8)].tobytes())  # two segments done, the third open
        pending = d.session.pending_jobs()
        assert len(pending) >= 2
        d.text(bad)
        assert d.error() == ("bad_message", CloseCode.UNSUPPORTED_DATA)
        assert d.session.state == "closed"
        assert {id(j) for j in d.cancelled[-len(pending) :]} == {id(j) for j in pending}
        # a result arriving after the close is ignored
        assert d.session.job_done(pending[0], fake_result(pending[0]), d.now) == []


@pytest.mark.parametrize(
    "late", [b"\0\0", '{"type": "stop"}', '{"type": "flush"}', '{"type": "start"}']
)
def test_messages_after_stop_are_bad_message(sample: np.ndarray, late: str | bytes) -> None:
    d = Driver(auto=False)
    d.start()
    d.audio(sample[: samples(6)].tobytes())
    d.stop()
    assert d.session.state == "stopping" and d.queue  # results still to come
    waiting = list(d.queue)
    d.apply(d.session.receive(late, d.now))
    assert d.error() == ("bad_message", CloseCode.UNSUPPORTED_DATA)
    assert all(any(j is c for c in d.cancelled) for j in waiting)
    assert not d.of_type("done")


@pytest.mark.parametrize(
    ("start", "data"),
    [
        ({}, b"\0\0\0"),  # s16 mono: 2-byte frames
        ({"channels": 2}, b"\0\0"),  # s16 stereo: 4-byte frames
        ({"channels": 2}, b"\0" * 6),
        ({"encoding": "pcm_f32le"}, b"\0\0"),  # f32 mono: 4-byte frames
        ({"encoding": "pcm_f32le", "channels": 2}, b"\0" * 12),  # f32 stereo: 8-byte frames
    ],
)
def test_partial_frames_are_bad_audio(start: dict[str, Any], data: bytes) -> None:
    d = Driver()
    d.start(**start)
    d.audio(b"\0" * 8 * 100, chunk_bytes=800)  # whole frames of every layout: fine
    assert d.closed is None
    d.apply(d.session.receive(data, d.now))
    assert d.error() == ("bad_audio", CloseCode.UNSUPPORTED_DATA)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples_are_bad_audio(bad: float) -> None:
    d = Driver()
    d.start(encoding="pcm_f32le")
    x = np.zeros(1600, dtype="<f4")
    d.audio(x.tobytes(), chunk_bytes=6400)
    x[777] = bad
    d.apply(d.session.receive(x.tobytes(), d.now))
    assert d.error() == ("bad_audio", CloseCode.UNSUPPORTED_DATA)


def test_oversized_messages_are_too_large() -> None:
    limit = 4000
    d = Driver(limits=SessionLimits(max_message_bytes=limit))
    d.start()
    d.apply(d.session.receive(b"\0" * limit, 0.5))  # exactly the limit is fine
    assert d.closed is None
    d.apply(d.session.receive(b"\0" * (limit + 2), 0.6))
    assert d.error() == ("too_large", CloseCode.MESSAGE_TOO_BIG)
    assert str(limit + 2) in d.sent[-1]["message"]


def test_oversized_text_is_measured_in_utf8_bytes() -> None:
    limit = 4000
    # 1500 characters, 4500 bytes: over the limit on the wire though short in characters
    wide = json.dumps({"type": "flush", "note": "€" * 1500}, ensure_ascii=False)
    assert len(wide) < limit < len(wide.encode())
    d = Driver(limits=SessionLimits(max_message_bytes=limit))
    d.start(pad="x" * (limit - 100))  # a start message may use the whole limit
    assert d.closed is None
    d.text(wide)
    assert d.error() == ("too_large", CloseCode.MESSAGE_TOO_BIG)
    # ... and before start too
    d = Driver(limits=SessionLimits(max_message_bytes=limit))
    d.start(pad="x" * limit)
    assert d.error() == ("too_large", CloseCode.MESSAGE_TOO_BIG)


def test_audio_faster_than_max_realtime_is_too_fast() -> None:
    limits = SessionLimits(max_realtime=2.0, realtime_burst_s=1.0)
    second = b"\0" * (2 * SAMPLE_RATE)
    d = Driver(limits=limits)
    d.start()
    d.apply(d.session.receive(second, 0.0))  # the burst allowance: 1 s at once
    d.apply(d.session.receive(second, 0.5))  # 2 s at t=0.5: 1 + 0.5 * 2, just allowed
    assert d.closed is None
    d.apply(d.session.receive(second[:320], 0.5))  # 10 ms more: too fast
    assert d.error() == ("too_fast", CloseCode.POLICY_VIOLATION)

    # the same audio paced at the allowed rate goes through, whatever the chunking
    d = Driver(limits=limits)
    d.start()
    d.audio(second * 10, chunk_bytes=1000, speed=2.0)
    d.stop()
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL


def test_unlimited_realtime() -> None:
    # serve --max-realtime inf: no limit, even for a first message beyond the burst allowance
    d = Driver(limits=SessionLimits(max_realtime=math.inf, realtime_burst_s=1.0))
    d.start()
    d.apply(d.session.receive(b"\0" * (2 * SAMPLE_RATE * 20), 0.0))
    d.apply(d.session.receive(b"\0" * (2 * SAMPLE_RATE * 20), 0.001))
    assert d.closed is None and d.session.audio_seconds == 40


def test_too_fast_counts_input_seconds_at_the_client_rate() -> None:
    # 48 kHz stereo f32: 384000 bytes a second; 3 s must count as 3 s, not as 16 kHz bytes
    limits = SessionLimits(max_realtime=1.0, realtime_burst_s=3.0)
    d = Driver(limits=limits)
    d.start(sample_rate=48000, channels=2, encoding="pcm_f32le")
    second = np.zeros(2 * 48000, dtype="<f4").tobytes()
    for _ in range(3):
        d.apply(d.session.receive(second, 0.0))
    assert d.closed is None
    d.apply(d.session.receive(second[:8], 0.0))
    assert d.error() == ("too_fast", CloseCode.POLICY_VIOLATION)


def test_idle_timeout() -> None:
    limits = SessionLimits(idle_timeout_s=5.0)
    d = Driver(limits=limits)
    assert d.session.check_timeouts(5.0) == []
    d.start()  # at t=0
    d.now = 4.0
    d.audio(b"\0" * 3200)  # a message at t=4.1 resets the idle clock
    assert d.session.check_timeouts(9.0) == []
    d.apply(d.session.check_timeouts(9.2))
    assert d.error() == ("limit", CloseCode.POLICY_VIOLATION)
    assert "5" in d.sent[-1]["message"]

    # no start at all: the same timeout
    d = Driver(limits=limits)
    d.apply(d.session.check_timeouts(5.1))
    assert d.error() == ("limit", CloseCode.POLICY_VIOLATION)


def test_max_session_length() -> None:
    d = Driver(limits=SessionLimits(max_session_s=20.0, idle_timeout_s=5.0))
    d.start()
    d.audio(b"\0" * (2 * SAMPLE_RATE * 20), chunk_bytes=32000)  # 20 s, sent in real time
    assert d.session.check_timeouts(20.0) == []
    d.apply(d.session.check_timeouts(20.01))
    assert d.error() == ("limit", CloseCode.POLICY_VIOLATION)
    assert "20" in d.sent[-1]["message"]


def test_timeouts_do_not_interrupt_a_stopping_session(sample: np.ndarray) -> None:
    d = Driver(auto=False, limits=SessionLimits(idle_timeout_s=1.0, max_session_s=2.0))
    d.start()
    d.apply(d.session.receive(sample[: samples(4)].tobytes(), 0.5))
    d.stop()
    assert d.session.check_timeouts(100.0) == []  # the client is waiting for results
    d.run_worker()
    assert d.sent[-1]["type"] == "done" and d.closed is not None


def test_too_many_segments_waiting_for_the_model(sample: np.ndarray) -> None:
    d = Driver(auto=False, limits=SessionLimits(max_pending_segments=1))
    d.start()
    d.audio(sample.tobytes())
    # the server is behind (no results at all): it closes with "try again later"
    assert d.error() == ("limit", CloseCode.TRY_AGAIN_LATER)
    assert d.cancelled and not d.queue


# -- cost in encoder windows -----------------------------------------------------------------


def test_tiny_segments_pay_a_window_each_and_are_too_fast(sample: np.ndarray) -> None:
    # The abuse of issue 12: 60 ms segments (preroll 0) cost a full window each, ~16 per
    # second of speech; over the budget the session is told too_fast, not the others slowed.
    limits = SessionLimits(max_windows_per_s=3.0, windows_burst=10.0)
    d = Driver(limits=limits)
    d.start(vad={"max_segment_s": 0.06, "preroll_ms": 0})
    d.audio(sample.tobytes())
    assert d.error() == ("too_fast", CloseCode.POLICY_VIOLATION)
    assert "windows" in d.sent[-1]["message"]
    assert d.session.over_window_budget
    # it got exactly its allowance: the burst plus 3 per second of audio, then the refusal
    used = len(d.finals())
    assert used == math.floor(10 + 3.0 * d.session.audio_seconds)
    assert d.session.windows_used == used + 1  # the one refused


def test_the_window_budget_is_burst_plus_rate_times_audio(sample: np.ndarray) -> None:
    # A flush closes the open segment: one final (one window) per flush in speech. With a
    # negligible rate exactly `burst` of them are allowed, and the next is refused.
    d = Driver(limits=SessionLimits(max_windows_per_s=1e-9, windows_burst=3.0))
    d.start()
    for chunk in np.array_split(sample, len(sample) // samples(0.3)):
        d.audio(chunk.tobytes())
        if d.closed is None:
            d.text({"type": "flush"})
    assert d.error() == ("too_fast", CloseCode.POLICY_VIOLATION)
    assert len(d.finals()) == 3


def test_speech_stays_far_within_the_default_window_budget(sample: np.ndarray) -> None:
    # Natural speech with the default VAD: a window per segment (speculative finals
    # included), far below the default 3 per second of audio, even without the burst.
    d = Driver(limits=SessionLimits(windows_burst=1.0))
    d.start()
    d.audio(np.tile(sample, 4).tobytes())
    d.stop()
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL
    assert d.session.windows_used == len(d.finals()) >= 4 * 3
    assert d.session.windows_used < 1.0 * d.session.audio_seconds
    assert not d.session.over_window_budget


def test_no_window_budget_with_inf(sample: np.ndarray) -> None:
    d = Driver(limits=SessionLimits(max_windows_per_s=math.inf))
    d.start(vad={"max_segment_s": 0.06, "preroll_ms": 0})
    d.audio(sample.tobytes())
    d.stop()
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL
    assert d.session.windows_used > 50


# -- message order ---------------------------------------------------------------------------


def check_order(sent: list[dict[str, Any]], closed: Close | None) -> None:
    """ready first; speech_start K before K's partials and segment; segments in order; done
    last and then a normal close."""
    assert sent[0]["type"] == "ready"
    assert sent[-1]["type"] == "done"
    assert closed is not None and closed.code == CloseCode.NORMAL
    started: set[int] = set()
    finished: set[int] = set()
    next_segment = 0
    for message in sent[1:-1]:
        kind = message["type"]
        assert kind in ("speech_start", "partial", "segment", "error"), message
        k = message.get("segment")
        if kind == "speech_start":
            assert k not in started and k == len(started)
            started.add(k)
        elif kind == "partial":
            assert k in started and k not in finished
        else:
            assert k == next_segment and k in started
            finished.add(k)
            next_segment += 1
    assert finished == started
    assert sent[-1]["segments"] == len([m for m in sent if m["type"] == "segment"])


def test_order_with_results_in_reverse(
    sample: np.ndarray, sample_segments: list[tuple[int, int]]
) -> None:
    d = Driver(auto=False)
    d.start(partials=True)
    d.audio(sample.tobytes())
    d.stop()
    assert d.session.state == "stopping" and not d.of_type("segment")
    finals = [j for j in d.queue if j.kind == "final"]
    assert [j.segment for j in finals] == [0, 1, 2]
    for job in reversed(finals):  # the last segment's result arrives first
        sent_before = len(d.sent)
        d.answer(job)
        if job.segment:
            assert len(d.sent) == sent_before  # held back until segment 0 is out
    segments = d.of_type("segment")
    assert [m["segment"] for m in segments] == [0, 1, 2]
    assert [(in_samples(m, "start"), in_samples(m, "end")) for m in segments] == sample_segments
    check_order(d.sent, d.closed)
    assert d.sent[-1] == {
        "type": "done",
        "segments": 3,
        "audio_seconds": round(len(sample) / SAMPLE_RATE, 6),
    }
    assert isinstance(d.actions[-1], Close) and d.actions[-1].code == 1000


def test_speech_start_of_the_next_segment_may_precede_a_segment(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start()
    d.audio(sample.tobytes())
    # segment 0's result is still outstanding while segment 1 has started (and ended)
    kinds = [(m["type"], m.get("segment")) for m in d.sent]
    assert ("speech_start", 1) in kinds and ("segment", 0) not in kinds
    d.stop()
    d.run_worker()
    check_order(d.sent, d.closed)


def test_order_holds_for_random_result_timing(sample: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        d = Driver(auto=False)
        d.start(partials=True, partial_interval_ms=300)
        pcm = sample.tobytes()
        pos = 0
        while pos < len(pcm):
            n = int(rng.integers(1, 4000)) * 2
            d.now += n / 32000
            d.apply(d.session.receive(pcm[pos : pos + n], d.now))
            pos += n
            # answer a random subset of the outstanding jobs, in random order
            for job in list(d.queue):
                if rng.random() < 0.3:
                    d.answer(job)
        d.stop()
        rest = list(d.queue)
        for i in rng.permutation(len(rest)):
            d.answer(rest[i])
        check_order(d.sent, d.closed)
        assert len(d.of_type("segment")) == 3


def test_stop_without_audio_is_done_at_once() -> None:
    d = Driver()
    d.start()
    d.stop()
    assert [m["type"] for m in d.sent] == ["ready", "done"]
    assert d.sent[-1] == {"type": "done", "segments": 0, "audio_seconds": 0.0}
    assert d.closed == Close(CloseCode.NORMAL, "")


# -- speculative finals ----------------------------------------------------------------------


def test_speculative_final_is_sent_at_the_endpoint(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start()
    pcm = sample.tobytes()
    frame = 320  # 10 ms messages: the endpoint is seen to the VAD frame
    pos = 0
    candidate: Job | None = None
    while not d.of_type("segment"):
        d.now += 0.01
        d.apply(d.session.receive(pcm[pos : pos + frame], d.now))
        pos += frame
        if candidate is None and d.queue:
            # submitted while the segment is still open: the speculative final
            candidate = d.queue[0]
            assert candidate.kind == "final" and candidate.segment == 0
            assert d.session._vad.in_speech
            submitted_at = pos // 2
            d.answer(candidate)  # done long before the endpoint
            assert not d.of_type("segment")
    assert candidate is not None
    (segment,) = d.of_type("segment")
    # sent the moment the endpoint was decided, with the candidate's tokens: endpoint_ms 0
    assert segment["endpoint_ms"] == 0
    assert segment["tokens"] == fake_tokens(candidate)
    assert (in_samples(segment, "start"), in_samples(segment, "end")) == (
        candidate.start,
        candidate.end,
    )
    assert len(d.finals(0)) == 1  # no second job for the same segment
    # the candidate went out min_silence - tail (300 ms) of audio before the endpoint
    assert ms(300) <= pos // 2 - submitted_at <= ms(300 + 30 + 10)


def test_endpoint_ms_is_the_wait_for_the_result(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start()
    d.apply(d.session.receive(sample[: samples(4)].tobytes(), 0.0))  # past the first endpoint
    assert not d.of_type("segment")
    (job,) = d.finals(0)
    d.now = 0.0421
    d.answer(job)
    assert d.of_type("segment")[0]["endpoint_ms"] == pytest.approx(42.1, abs=0.002)


def test_speech_resuming_cancels_the_candidate(speak: Speak) -> None:
    words = speak("Hello there my friend")
    loud = np.flatnonzero(np.abs(words) > 0.01)
    words = words[loud[0] : loud[-1] + 1]
    pause = np.zeros(ms(350), dtype=np.float32)  # > tail 200, < min_silence 500
    audio = np.concatenate([pause, words, pause, words, np.zeros(ms(1000), np.float32)])
    d = Driver(auto=False)
    d.start()
    d.audio(float32_to_pcm16(audio), chunk_bytes=640)
    finals = d.finals(0)
    assert len(finals) >= 2, "expected a candidate at the pause, then the real endpoint"
    candidate = finals[0]
    assert any(c is candidate for c in d.cancelled)
    assert not any(j is candidate for j in d.queue)
    # the cancelled job finished anyway (it was running): its result is ignored
    assert d.answer(candidate) == []
    d.stop()
    d.run_worker()
    (segment,) = d.of_type("segment")  # one segment across the short pause
    final = finals[-1]
    assert segment["tokens"] == fake_tokens(final) != fake_tokens(candidate)
    assert in_samples(segment, "start") < ms(350)
    assert in_samples(segment, "end") > candidate.end + len(words)


# -- flush and stop --------------------------------------------------------------------------


def test_flush_ends_the_segment_now(sample: np.ndarray) -> None:
    d = Driver()
    d.start()
    cut = samples(1.5)  # in the middle of the first sentence
    d.audio(sample[:cut].tobytes())
    assert d.session._vad.in_speech
    d.text({"type": "flush"})
    (segment,) = d.of_type("segment")
    assert (in_samples(segment, "start"), in_samples(segment, "end")) == (1600, cut)
    assert d.finals(0)[0].end == cut
    # the speech goes on: a new segment starts where the flushed one ended, or later
    d.audio(sample[cut:].tobytes())
    d.stop()
    starts = d.of_type("speech_start")
    assert in_samples(starts[1], "start") >= cut
    assert len(d.of_type("segment")) == 4
    check_order(d.sent, d.closed)


def test_flush_in_silence_does_nothing(sample: np.ndarray) -> None:
    d = Driver()
    d.start()
    d.audio(sample[: samples(4)].tobytes())  # the first sentence has ended
    before = len(d.sent)
    assert d.text({"type": "flush"}) == []
    assert len(d.sent) == before


def test_stop_mid_speech_closes_the_segment(sample: np.ndarray) -> None:
    d = Driver()
    d.start()
    cut = samples(2.0)
    d.audio(sample[:cut].tobytes())
    d.stop()
    (segment,) = d.of_type("segment")
    start, end = in_samples(segment, "start"), in_samples(segment, "end")
    assert start == 1600
    # up to the end of the audio (speech runs to the cut, so the tail is cut off by it)
    assert cut - ms(30) <= end <= cut
    assert d.sent[-1]["type"] == "done"
    assert d.sent[-1]["audio_seconds"] == cut / SAMPLE_RATE


# -- timeline --------------------------------------------------------------------------------


def test_offset_shifts_every_time(sample: np.ndarray) -> None:
    base = streamed(sample.tobytes(), {"partials": True})
    shifted = streamed(sample.tobytes(), {"partials": True, "offset": 3600.125})
    assert len(base.sent) == len(shifted.sent)
    n_times = 0
    for a, b in zip(base.sent, shifted.sent, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key in TIME_KEYS:
                assert in_samples(b, key, 3600.125) == in_samples(a, key)
                n_times += 1
            elif key not in ("session", "endpoint_ms"):
                assert a[key] == b[key], key
    assert n_times >= 3 * 3 + 2  # speech_starts, segments, partials
    # done counts the audio, not the timeline position
    assert shifted.sent[-1]["audio_seconds"] == base.sent[-1]["audio_seconds"]
    # jobs are on the session's own samples; only the messages add the offset
    assert [(j.start, j.end) for j in shifted.finals()] == [(j.start, j.end) for j in base.finals()]


def test_times_are_whole_samples_with_an_odd_offset(sample: np.ndarray) -> None:
    d = streamed(sample.tobytes(), {"partials": True, "offset": 1.23456789})
    offset = round(1.23456789 * SAMPLE_RATE) / SAMPLE_RATE  # 19753 samples
    for message in d.sent:
        for key in TIME_KEYS:
            if key in message:
                in_samples(message, key, offset)  # asserts wholeness


def test_segments_and_audio_match_offline_segmentation(
    sample: np.ndarray, sample_segments: list[tuple[int, int]]
) -> None:
    d = streamed(sample.tobytes())
    got = [(in_samples(m, "start"), in_samples(m, "end")) for m in d.of_type("segment")]
    assert got == sample_segments
    audio = pcm16_to_float32(sample)
    for job, (start, end) in zip(d.finals(), sample_segments, strict=True):
        assert np.array_equal(job.audio, audio[start:end])  # bit-exact: the offline samples
        assert job.audio.dtype == np.float32


def test_f32_equals_s16(sample: np.ndarray) -> None:
    s16 = streamed(sample.tobytes())
    f32 = streamed(
        pcm16_to_float32(sample).astype("<f4").tobytes(),
        {"encoding": "pcm_f32le"},
        chunk_bytes=6400,
    )
    assert f32.sent[1:] == s16.sent[1:]  # tokens embed an audio checksum


def test_stereo_is_downmixed(sample: np.ndarray) -> None:
    mono = streamed(sample.tobytes())
    stereo = np.stack([sample, sample], axis=1)  # identical channels: the mean is exact
    d = streamed(stereo.tobytes(), {"channels": 2}, chunk_bytes=4000)
    assert d.sent[1:] == mono.sent[1:]
    # one silent channel: half the amplitude, the same speech
    half = np.stack([sample, np.zeros_like(sample)], axis=1)
    d = streamed(half.tobytes(), {"channels": 2}, chunk_bytes=4000)
    assert len(d.segments) == 3
    for (a, b), (c, e) in zip(d.segments, mono.segments, strict=True):
        assert abs(a - c) <= 0.1 and abs(b - e) <= 0.1


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_other_rates_are_resampled(
    sample: np.ndarray, sample_segments: list[tuple[int, int]], rate: int
) -> None:
    native = float32_to_pcm16(resample(pcm16_to_float32(sample), SAMPLE_RATE, rate))
    d = Driver()
    d.start(sample_rate=rate)
    d.audio(native, chunk_bytes=2 * (rate // 10 + 3), bytes_per_second=2 * rate)
    d.stop()
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL
    # the session's timeline is the offline one: the whole file resampled to 16 kHz
    timeline = resample(pcm16_to_float32(native), rate)
    assert d.sent[-1]["audio_seconds"] == round(len(timeline) / SAMPLE_RATE, 6)
    expected = [(s.start, s.end) for s in segment_vad(timeline)]
    got = [(in_samples(m, "start"), in_samples(m, "end")) for m in d.of_type("segment")]
    assert got == expected
    for job, (start, end) in zip(d.finals(), expected, strict=True):
        np.testing.assert_array_equal(job.audio, timeline[start:end])
    # and sensible: the three sentences, within two VAD frames of the 16 kHz original
    assert len(got) == 3
    for (a, b), (c, e) in zip(got, sample_segments, strict=True):
        assert abs(a - c) <= ms(60) and abs(b - e) <= ms(60)


def test_chunking_does_not_change_the_messages(sample: np.ndarray) -> None:
    pcm = sample.tobytes()
    reference = streamed(pcm, chunk_bytes=len(pcm))  # one message
    rng = np.random.default_rng(3)
    chunkings: list[int | list[int]] = [
        [2] * samples(2),  # one sample a message through the first onset, then the rest
        322,
        960,
        32000,
        [int(n) * 2 for n in rng.integers(1, 5000, size=400)],
        [int(n) * 2 for n in rng.choice([1, 7, 479, 480, 481, 16000], size=400)],
    ]
    for chunks in chunkings:
        d = streamed(pcm, chunk_bytes=chunks)
        # Every message of each kind, tokens (which digest the audio) and endpoint_ms (0: the
        # worker here answers at once) included. Only the interleaving of kinds may differ:
        # a segment goes out after the message that ended it, so with bigger messages the
        # next speech_start can come first.
        for kind in ("speech_start", "segment", "done"):
            assert d.of_type(kind) == reference.of_type(kind), (kind, chunks)
        assert len(d.sent) == len(reference.sent)
        for a, b in zip(d.finals(), reference.finals(), strict=True):
            assert (a.segment, a.start, a.end) == (b.segment, b.start, b.end)
            assert np.array_equal(a.audio, b.audio)


def _strip(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "endpoint_ms"}


def test_max_segment_cuts_are_contiguous(sample: np.ndarray) -> None:
    d = streamed(sample.tobytes(), {"vad": {"max_segment_s": 2}})
    spans = [(in_samples(m, "start"), in_samples(m, "end")) for m in d.of_type("segment")]
    assert len(spans) > 3
    assert all(0 < end - start <= samples(2) for start, end in spans)
    # a cut in continuous speech: the next segment starts exactly where the last one ended
    assert any(b[0] == a[1] for a, b in itertools.pairwise(spans))
    for job in d.finals():
        assert len(job.audio) == job.end - job.start


# -- partials --------------------------------------------------------------------------------


def test_partial_cadence_is_audio_time(sample: np.ndarray) -> None:
    interval = ms(500)
    chunk = ms(20)
    runs = []
    for speed in (0.5, 1.0, 5.0):  # how fast the audio arrives must not matter
        d = Driver()
        d.start(partials=True, partial_interval_ms=500)
        d.audio(sample.tobytes(), chunk_bytes=2 * chunk, speed=speed)
        d.stop()
        check_order(d.sent, d.closed)
        runs.append([m for m in d.sent if m["type"] == "partial"])
    assert runs[0] == runs[1] == runs[2]
    partials = runs[0]
    starts = {m["segment"]: in_samples(m, "start") for m in runs[0]}
    assert set(starts) == {0, 1, 2}
    by_segment: dict[int, list[int]] = {}
    for m in partials:
        assert in_samples(m, "start") == starts[m["segment"]]  # always from the segment start
        by_segment.setdefault(m["segment"], []).append(in_samples(m, "end"))
    d_seg = {m["segment"]: m for m in streamed(sample.tobytes()).of_type("segment")}
    for k, ends in by_segment.items():
        # first one interval into the segment, then one every interval (to a message)
        assert interval <= ends[0] - starts[k] < interval + chunk
        gaps = np.diff(ends)
        assert np.all(gaps >= interval) and np.all(gaps < interval + chunk)
        # while the segment is open: at most min_silence - tail (and a frame) past its end
        assert ends[-1] < in_samples(d_seg[k], "end") + ms(300 + 30) + chunk


def test_partials_only_when_asked(sample: np.ndarray) -> None:
    d = streamed(sample.tobytes())
    assert not d.of_type("partial")
    assert all(j.kind == "final" for j in d.submitted)


def test_a_late_superseded_partial_is_still_sent(sample: np.ndarray) -> None:
    # A model slower than the interval: each partial is superseded before its result comes.
    d = Driver(auto=False)
    d.start(partials=True, partial_interval_ms=200)
    d.audio(sample[: samples(1.2)].tobytes(), chunk_bytes=ms(100) * 2)
    partials = [j for j in d.submitted if j.kind == "partial"]
    assert len(partials) >= 3
    first, second, third = partials[-3:]
    d.answer(second)
    d.answer(first)  # older than what was sent: dropped
    d.answer(third)
    sent = d.of_type("partial")
    assert [in_samples(m, "end") for m in sent] == [second.end, third.end]
    assert sent[0]["tokens"] == fake_tokens(second)


def test_partial_results_after_the_segment_ends_are_dropped(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start(partials=True)
    d.audio(sample[: samples(1.0)].tobytes())
    (partial,) = [j for j in d.queue if j.kind == "partial"]
    d.text({"type": "flush"})
    assert any(c is partial for c in d.cancelled)
    assert d.answer(partial) == []
    d.run_worker()
    assert not d.of_type("partial") and len(d.of_type("segment")) == 1


def test_a_failed_partial_is_silent(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start(partials=True)
    d.audio(sample[: samples(1.0)].tobytes())
    (partial,) = [j for j in d.queue if j.kind == "partial"]
    assert d.answer(partial, JobResult(error="boom")) == []
    assert d.closed is None and not d.of_type("error")


# -- model errors, shutdown, fail ------------------------------------------------------------


def test_a_model_error_is_reported_and_the_session_goes_on(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start()
    d.audio(sample.tobytes())
    d.stop()
    for job in list(d.queue):
        d.answer(job, JobResult(error="model failed") if job.segment == 1 else None)
    kinds = [(m["type"], m.get("segment")) for m in d.sent]
    assert [k for k in kinds if k[0] in ("segment", "error")] == [
        ("segment", 0),
        ("error", 1),
        ("segment", 2),
    ]
    error = d.of_type("error")[0]
    assert error == {"type": "error", "code": "internal", "message": "model failed", "segment": 1}
    assert d.sent[-1]["type"] == "done" and d.sent[-1]["segments"] == 2
    assert d.closed == Close(CloseCode.NORMAL, "")


def test_a_text_error_still_sends_the_tokens(sample: np.ndarray) -> None:
    d = Driver(auto=False, text_available=True)
    d.start(text=True)
    d.audio(sample[: samples(4)].tobytes())
    (job,) = d.queue
    d.answer(job, JobResult(tokens=[1, 2], error="text decoding failed"))
    segment, error = d.sent[-2:]
    assert segment["type"] == "segment" and segment["tokens"] == [1, 2]
    assert "text" not in segment
    assert error == {
        "type": "error",
        "code": "internal",
        "message": "text decoding failed",
        "segment": 0,
    }
    assert d.closed is None


def test_shutdown_mid_stream_drains_like_stop(sample: np.ndarray) -> None:
    cut = samples(6.0)  # inside the second sentence
    reference = Driver()
    reference.start()
    reference.audio(sample[:cut].tobytes())
    reference.stop()

    d = Driver(auto=False)
    d.start()
    d.audio(sample[:cut].tobytes())
    d.apply(d.session.shutdown(d.now))
    assert d.session.state == "stopping" and d.queue
    # the client, unaware, goes on sending: dropped, not a protocol error
    assert d.session.receive(sample[cut : cut + 3200].tobytes(), d.now) == []
    assert d.session.receive('{"type": "stop"}', d.now) == []
    assert d.session.shutdown(d.now) == []
    d.run_worker()
    assert not d.of_type("error")
    for kind in ("speech_start", "segment", "done"):  # the interleaving follows the results
        assert _strip_all(d.of_type(kind)) == _strip_all(reference.of_type(kind))
    assert len(d.of_type("segment")) == 2  # the second sentence was cut short, not dropped
    assert d.closed == Close(CloseCode.NORMAL, "server shutting down")


def _strip_all(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_strip(m) for m in messages]


def test_shutdown_before_start_goes_away() -> None:
    d = Driver()
    d.apply(d.session.shutdown(0.0))
    assert d.sent == [] and d.closed is not None and d.closed.code == CloseCode.GOING_AWAY


def test_fail_cancels_outstanding_jobs(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start(partials=True)
    d.audio(sample[: samples(8.5)].tobytes())  # segment 1 closed, segment 2 open
    (done_early,) = d.finals(0)
    d.answer(done_early)  # sent: nothing to cancel for it
    pending = d.session.pending_jobs()
    assert {j.kind for j in pending} == {"final", "partial"}
    actions = d.apply(d.session.fail(ProtocolError("internal", "worker died")))
    assert isinstance(actions[0], Send) and actions[0].message == ErrorMessage(
        "internal", "worker died"
    )
    assert [a.job for a in actions if isinstance(a, Cancel)] == pending
    assert actions[-1] == Close(CloseCode.INTERNAL_ERROR, "internal")
    assert d.session.pending_jobs() == []
    # closed for good: late results, messages and a second failure do nothing
    assert all(d.session.job_done(j, fake_result(j), d.now) == [] for j in pending)
    assert d.session.fail(ProtocolError("internal", "again")) == []
    assert d.session.receive(b"\0\0", d.now) == []


def test_connection_lost_cancels_outstanding_jobs_and_closes(sample: np.ndarray) -> None:
    d = Driver(auto=False)
    d.start(partials=True)
    d.audio(sample[: samples(8.5)].tobytes())  # segment 1 closed, segment 2 open
    pending = d.session.pending_jobs()
    assert {j.kind for j in pending} == {"final", "partial"}
    sent = len(d.sent)
    actions = d.session.connection_lost(d.now)
    # nothing to send (the socket is gone), no Close (the I/O layer knows): only cancels
    assert actions == [Cancel(job) for job in pending]
    assert d.session.state == "closed" and d.session.pending_jobs() == []
    assert all(d.session.job_done(j, fake_result(j), d.now) == [] for j in pending)
    assert d.session.connection_lost(d.now) == []  # once
    assert d.session.receive(b"\0\0", d.now) == [] and len(d.sent) == sent


def test_connection_lost_after_done_does_nothing(sample: np.ndarray) -> None:
    d = streamed(sample[: samples(4.0)].tobytes())
    assert d.session.state == "closed"
    assert d.session.connection_lost(d.now) == []


# -- bounded memory --------------------------------------------------------------------------


def test_memory_stays_bounded_over_long_silence() -> None:
    d = Driver()
    d.start()
    opts = VadOptions()
    most = 0
    noise = np.random.default_rng(0).normal(0, 3, SAMPLE_RATE).astype(np.int16).tobytes()
    for _ in range(600):  # ten minutes of faint noise, one second a message
        d.audio(noise, chunk_bytes=len(noise))
        most = max(most, len(d.session._buffer))
    assert not d.of_type("speech_start")
    assert most <= opts.preroll_samples + 2 * opts.frame_samples
    assert len(d.session._buffer._data) <= 1 << 16  # the storage never grew either


def test_memory_stays_bounded_over_long_speech(sample: np.ndarray) -> None:
    d = Driver()
    d.start(partials=True)
    longest = 0
    most = 0
    pcm = sample.tobytes()
    for _ in range(25):  # five minutes: 75 sentences
        for pos in range(0, len(pcm), 3200):
            d.audio(pcm[pos : pos + 3200])
            most = max(most, len(d.session._buffer))
    d.stop()
    segments = d.of_type("segment")
    assert len(segments) == 75
    longest = max(in_samples(m, "end") - in_samples(m, "start") for m in segments)
    # the open segment plus what arrived in one message, never the stream so far
    assert most <= longest + ms(300) + 1600
    assert len(d.session._buffer._data) <= 1 << 18
    assert d.session._finals == {}
