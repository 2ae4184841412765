"""ListenSession, the Deepgram-style adapter over v1, driven sans-I/O: no sockets, no model.

Real speech goes in (espeak-ng phrases with pauses of chosen lengths), time is injected, and a
stand-in model answers each job at once: tokens from the job's audio, and text that follows
the caption contract (a partial's text is a prefix of its segment's final text). The same
audio through a plain v1 ServerSession is the reference the adapter must agree with.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from captioning import text_result

from ichigo_stream.actions import Action, Cancel, Close, Count, Job, JobResult, Send, Submit
from ichigo_stream.audio import to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import CloseCode
from ichigo_stream.listen_protocol import ListenOptions, parse_listen_query
from ichigo_stream.listen_session import ListenSession, model_fields
from ichigo_stream.messages import Capabilities, ErrorMessage, Segment, ServerMessage, SessionLimits
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.segmentation import VadOptions

MODEL = ModelInfo("fake.pth", "0" * 64, 2561, 2048, 25, "medium")
Speak = Callable[..., np.ndarray]


def fake_tokens(job: Job) -> list[int]:
    digest = zlib.crc32(np.ascontiguousarray(job.audio, dtype=np.float32).tobytes())
    return [job.start % 2561, len(job.audio) % 2561, digest % 2561]


def fake_text(job: Job) -> str:
    """One word per 0.25 s from the segment's start: a partial's text is always a prefix of
    its segment's final text, as the caption contract promises."""
    n = (job.end - job.start) // (SAMPLE_RATE // 4) + 1
    return " ".join(f"w{job.segment}x{i}" for i in range(n))


def fake_result(job: Job) -> JobResult:
    """As the worker answers: text only for a job that asks for it."""
    if not job.text:
        return JobResult(tokens=fake_tokens(job))
    return text_result(job, fake_tokens(job), fake_text(job))


@dataclass
class Driver:
    """One ListenSession, a fake socket and a fake worker answering every job at once."""

    query: str = ""
    text_available: bool = True
    limits: SessionLimits = field(default_factory=SessionLimits)
    vad: VadOptions | None = None
    now: float = 0.0
    sent: list[dict[str, Any]] = field(default_factory=list)
    counted: list[ServerMessage] = field(default_factory=list)  # Count actions' v1 messages
    cancelled: list[Job] = field(default_factory=list)
    closed: Close | None = None
    fail_segment: int | None = None  # the model fails this segment's final job
    hold: bool = False  # jobs wait in `held` until release(): a slow model
    held: list[Job] = field(default_factory=list)

    def __post_init__(self) -> None:
        options = parse_listen_query(self.query, text_available=self.text_available)
        capabilities = Capabilities(text=self.text_available, limits=self.limits)
        self.session = ListenSession(
            "sess1", MODEL, capabilities, self.now, options,
            request_id="rid", created="2026-11-27T00:00:00.000Z", vad_defaults=self.vad,
        )  # fmt: skip

    def apply(self, actions: list[Action]) -> None:
        jobs: list[Job] = []
        for action in actions:
            assert self.closed is None, f"{action} after {self.closed}"
            if isinstance(action, Count):
                self.counted.append(action.message)  # the v1 message, for /metrics
            elif isinstance(action, Send):
                self.sent.append(json.loads(action.message.to_json()))
            elif isinstance(action, Submit):
                jobs.append(action.job)
            elif isinstance(action, Cancel):
                self.cancelled.append(action.job)
                jobs = [j for j in jobs if j is not action.job]
            else:
                assert isinstance(action, Close)
                self.closed = action
        if self.hold:
            self.held += jobs
            return
        for job in jobs:  # results arrive as later events, as from the real worker
            if self.closed is not None:
                break
            result = fake_result(job)
            if job.kind == "final" and job.segment == self.fail_segment:
                result = JobResult(error="the model failed")
            self.apply(self.session.job_done(job, result, self.now))

    def release(self) -> None:
        """The slow model catches up: every held job's result, in order."""
        self.hold, jobs, self.held = False, self.held, []
        for job in jobs:
            if job not in self.cancelled and self.closed is None:
                self.apply(self.session.job_done(job, fake_result(job), self.now))

    def audio(self, pcm: bytes, chunk: int = 3200) -> None:
        for at in range(0, len(pcm), chunk):
            if self.closed is not None:
                return
            piece = pcm[at : at + chunk]
            self.now += len(piece) / (2 * SAMPLE_RATE)
            self.apply(self.session.receive(piece, self.now))

    def control(self, kind: str) -> None:
        self.apply(self.session.receive(json.dumps({"type": kind}), self.now))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == kind]

    def results(self, *, final: bool) -> list[dict[str, Any]]:
        return [m for m in self.of_type("Results") if m["is_final"] == final]


def transcript(message: dict[str, Any]) -> str:
    return message["channel"]["alternatives"][0]["transcript"]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)


@pytest.fixture(scope="module")
def phrases(speak: Speak) -> list[np.ndarray]:
    return [
        to_pcm16(speak("Tokens arrive while you speak.")),
        to_pcm16(speak("A short pause follows.")),
        to_pcm16(speak("And then a long one.")),
    ]


@pytest.fixture(scope="module")
def pcm(phrases: list[np.ndarray]) -> bytes:
    """Three utterances: 1.6 s of silence after the first, 0.6 s after the second, then 1.6 s."""
    a, b, c = phrases
    return np.concatenate([a, silence(1.6), b, silence(0.6), c, silence(1.6)]).tobytes()


def v1_reference(pcm: bytes, **start: Any) -> list[dict[str, Any]]:
    """The same audio through a plain v1 session: its speech_start and segment messages."""
    from ichigo_stream.messages import Start
    from ichigo_stream.protocol import StartOptions
    from ichigo_stream.session import ServerSession

    session = ServerSession("ref", MODEL, Capabilities(text=True), 0.0)
    out: list[dict[str, Any]] = []

    def run(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                out.append(json.loads(action.message.to_json()))
            elif isinstance(action, Submit):
                run(session.job_done(action.job, fake_result(action.job), 0.0))

    run(session.handle(Start(StartOptions(**start)), 0.0))
    run(session.receive(pcm, 0.0))
    run(session.receive(json.dumps({"type": "stop"}), 0.0))
    return [m for m in out if m["type"] in ("speech_start", "segment")]


def test_a_full_stream_gets_deepgrams_messages_in_order(pcm: bytes) -> None:
    query = "interim_results=true&vad_events=true&utterance_end_ms=1000&ichigo_tokens=true"
    d = Driver(query)
    d.audio(pcm)
    d.control("CloseStream")
    reference = v1_reference(pcm, text=True)
    starts = [m for m in reference if m["type"] == "speech_start"]
    segments = [m for m in reference if m["type"] == "segment"]
    assert len(segments) == 3

    # SpeechStarted at each v1 speech_start; final Results carry the v1 segments' tokens
    assert [m["timestamp"] for m in d.of_type("SpeechStarted")] == [m["start"] for m in starts]
    finals = d.results(final=True)
    assert [(m["start"], m["start"] + m["duration"]) for m in finals] == [
        (s["start"], s["end"]) for s in segments
    ]
    assert [m["ichigo"]["tokens"] for m in finals] == [s["tokens"] for s in segments]
    assert [transcript(m) for m in finals] == [s["text"] for s in segments]
    for m in finals:
        assert m["speech_final"] and not m["from_finalize"] and m["channel_index"] == [0, 1]
        assert m["metadata"]["request_id"] == "rid"
        assert m["metadata"]["model_uuid"] == model_fields(MODEL).uuid
        assert m["channel"]["alternatives"][0]["words"]

    # interim Results before each final, their transcripts prefixes of the final's
    interims = d.results(final=False)
    assert interims
    for m in interims:
        final = next(f for f in finals if f["start"] == m["start"])
        assert d.sent.index(m) < d.sent.index(final)
        assert not m["speech_final"]
        assert transcript(final).startswith(transcript(m))
        assert m["ichigo"]["segment"] == final["ichigo"]["segment"]

    # UtteranceEnd after the 1.6 s pauses only (the 0.6 s one is shorter than 1000 ms)
    utterance_ends = d.of_type("UtteranceEnd")
    assert [m["last_word_end"] for m in utterance_ends] == [segments[0]["end"], segments[2]["end"]]
    for m in utterance_ends:
        final = next(f for f in finals if f["start"] + f["duration"] == m["last_word_end"])
        assert d.sent.index(final) < d.sent.index(m)

    # CloseStream: Metadata last, then a normal close
    metadata = d.sent[-1]
    assert metadata["type"] == "Metadata"
    assert metadata["request_id"] == "rid" and metadata["channels"] == 1
    assert metadata["sha256"] == hashlib.sha256(pcm).hexdigest()
    assert metadata["duration"] == round(len(pcm) / 2 / SAMPLE_RATE, 6)
    assert metadata["created"] == "2026-11-27T00:00:00.000Z"
    assert d.closed == Close(CloseCode.NORMAL, "")
    assert not d.of_type("Error")


def test_interim_results_carry_the_growing_caption(pcm: bytes) -> None:
    """Needs partial text from the v1 session (the captions branch): each interim transcript
    is the segment's caption so far, growing, and a prefix of the final transcript."""
    d = Driver("interim_results=true")
    d.audio(pcm)
    d.control("CloseStream")
    finals = d.results(final=True)
    for final in finals:
        interims = [m for m in d.results(final=False) if m["start"] == final["start"]]
        texts = [transcript(m) for m in interims]
        assert texts and texts[-1], f"no interim text for the segment at {final['start']}"
        for shorter, longer in zip(texts, [*texts[1:], transcript(final)], strict=True):
            assert longer.startswith(shorter)


def test_utterance_end_follows_the_audio_however_late_the_results(pcm: bytes) -> None:
    prompt = Driver("utterance_end_ms=1000")
    prompt.audio(pcm)
    prompt.control("CloseStream")
    late = Driver("utterance_end_ms=1000", hold=True)
    late.audio(pcm)
    held = late.session.receive(json.dumps({"type": "CloseStream"}), late.now)
    late.apply(held)
    assert not late.sent  # every result still to come
    late.release()
    assert (
        [m["type"] for m in late.sent]
        == [m["type"] for m in prompt.sent]
        == ["Results", "UtteranceEnd", "Results", "Results", "UtteranceEnd", "Metadata"]
    )
    assert late.sent == prompt.sent


def test_events_only_when_asked(pcm: bytes) -> None:
    d = Driver("")
    d.audio(pcm)
    d.control("CloseStream")
    assert [m["type"] for m in d.sent] == ["Results"] * 3 + ["Metadata"]
    assert all("ichigo" not in m for m in d.sent)


def test_finalize_flushes_the_open_segment(phrases: list[np.ndarray]) -> None:
    speech = phrases[0]
    d = Driver("endpointing=false")
    half = speech[: len(speech) // 2].tobytes()
    d.audio(half)
    d.control("Finalize")
    (flushed,) = d.results(final=True)
    assert flushed["from_finalize"] and not flushed["speech_final"]
    assert flushed["start"] + flushed["duration"] == len(half) / 2 / SAMPLE_RATE
    # nothing open: Finalize sends nothing, and the stream goes on
    d.control("Finalize")
    assert len(d.results(final=True)) == 1 and d.closed is None
    # the next segment is an ordinary one again
    d.audio(np.concatenate([phrases[1], silence(1.0)]).tobytes())
    d.control("CloseStream")
    finals = d.results(final=True)
    assert len(finals) == 2 and not finals[1]["from_finalize"]


def test_endpointing_false_never_ends_a_segment_by_silence(phrases: list[np.ndarray]) -> None:
    a, b, _ = phrases
    d = Driver("endpointing=false")
    d.audio(np.concatenate([a, silence(3.0), b]).tobytes())
    assert not d.results(final=True)
    d.control("CloseStream")
    (final,) = d.results(final=True)
    assert not final["speech_final"]  # cut by CloseStream, not ended by silence


def test_close_stream_mid_speech_and_what_follows_it(phrases: list[np.ndarray]) -> None:
    speech = phrases[0].tobytes()
    d = Driver("")
    d.audio(speech[: len(speech) // 2])
    d.apply(d.session.receive(b"", d.now))  # Deepgram's legacy close: an empty binary message
    assert [m["type"] for m in d.sent] == ["Results", "Metadata"]
    assert d.closed == Close(CloseCode.NORMAL, "")
    assert d.session.receive(b"\x00\x00", d.now) == []


def test_messages_after_close_stream_are_ignored_until_it_closes(
    phrases: list[np.ndarray],
) -> None:
    d = Driver("")
    d.audio(phrases[0].tobytes())
    stop = d.session.receive(json.dumps({"type": "CloseStream"}), d.now)
    assert d.session.receive(b"\x00", d.now) == []  # odd bytes, yet no error: ignored
    assert d.session.receive("not json", d.now) == []
    d.apply(stop)
    assert d.sent[-1]["type"] == "Metadata" and d.closed == Close(CloseCode.NORMAL, "")


def test_keep_alive_keeps_an_idle_session_open() -> None:
    limits = SessionLimits(idle_timeout_s=10.0)
    d = Driver("", limits=limits)
    for t in range(5, 60, 5):
        d.now = float(t)
        d.control("KeepAlive")
        d.apply(d.session.check_timeouts(d.now))
    assert d.closed is None and not d.sent
    # without it: Deepgram's NET-0001 close
    d.now += 10.5
    d.apply(d.session.check_timeouts(d.now))
    (error,) = d.of_type("Error")
    assert (error["code"], error["variant"]) == ("limit", "LimitError")
    assert d.closed == Close(CloseCode.INTERNAL_ERROR, "NET-0001")


def test_configure_is_answered_and_the_stream_goes_on(phrases: list[np.ndarray]) -> None:
    d = Driver("")
    d.control("Configure")
    assert d.sent == [
        {
            "type": "ConfigureFailure",
            "request_id": "rid",
            "code": "CONFIGURE_NOT_SUPPORTED",
            "description": "this server has no keyterms or formatting features to configure",
        }
    ]
    d.audio(np.concatenate([phrases[0], silence(1.0)]).tobytes())
    assert len(d.results(final=True)) == 1


@dataclass(frozen=True)
class BadInput:
    data: str | bytes
    code: str
    close: tuple[int, str]


BAD_INPUTS = {
    "malformed JSON": BadInput('{"type": "KeepAlive"', "bad_message", (1008, "DATA-0000")),
    "unknown control": BadInput('{"type": "Flush"}', "bad_message", (1008, "DATA-0000")),
    "odd byte count": BadInput(b"\x00" * 3201, "bad_audio", (1008, "DATA-0000")),
    "oversized audio": BadInput(b"\x00" * 4098, "too_large", (1009, "DATA-0000")),
    "oversized text": BadInput(json.dumps({"type": "KeepAlive", "x": "é" * 1500}), "too_large",
                               (1009, "DATA-0000")),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=list(BAD_INPUTS))
def test_bad_input_gets_an_error_and_deepgrams_close(
    bad: BadInput, phrases: list[np.ndarray]
) -> None:
    d = Driver("interim_results=true", limits=SessionLimits(max_message_bytes=4096))
    speech = phrases[0].tobytes()
    d.audio(speech[: len(speech) // 2])  # mid-speech: a partial may be in flight
    d.apply(d.session.receive(bad.data, d.now))
    error = d.sent[-1]
    assert error["type"] == "Error" and error["code"] == bad.code
    assert error["variant"] == {"bad_message": "SchemaError"}.get(bad.code, "DataError")
    if bad.code == "bad_message":
        assert error["message"] == bad.data[:200]
    assert d.closed == Close(*bad.close)
    assert d.session.receive(b"\x00\x00", d.now) == []
    assert d.session.check_timeouts(d.now + 1e6) == []


def test_a_failed_segment_is_an_error_and_the_stream_goes_on(pcm: bytes) -> None:
    d = Driver("", fail_segment=1)
    d.audio(pcm)
    d.control("CloseStream")
    assert [m["type"] for m in d.sent] == ["Results", "Error", "Results", "Metadata"]
    assert d.sent[1]["segment"] == 1 and d.sent[1]["variant"] == "InternalError"
    assert d.closed == Close(CloseCode.NORMAL, "")


def test_a_segment_cut_at_the_length_cap_is_not_speech_final(speak: Speak) -> None:
    speech = to_pcm16(speak("one two three four five six seven eight nine ten", wpm=260))
    vad = VadOptions(max_segment_s=1.0)
    d = Driver("", vad=vad)
    d.audio(np.concatenate([speech, silence(1.0)]).tobytes())
    finals = d.results(final=True)
    assert len(finals) >= 2
    ends = [m["start"] + m["duration"] for m in finals]
    cut = [m for m, end in zip(finals, ends, strict=True) if end in [f["start"] for f in finals]]
    assert cut, "no segment was cut in continuous speech"
    assert not any(m["speech_final"] for m in cut)
    assert finals[-1]["speech_final"]


def test_a_drain_finishes_like_close_stream(phrases: list[np.ndarray]) -> None:
    d = Driver("")
    speech = phrases[0].tobytes()
    d.audio(speech[: len(speech) // 2])
    d.apply(d.session.shutdown(d.now))
    assert [m["type"] for m in d.sent] == ["Results", "Metadata"]
    assert d.closed == Close(CloseCode.NORMAL, "server shutting down")


def test_a_tokens_only_server_sends_empty_transcripts_with_tokens(pcm: bytes) -> None:
    d = Driver("ichigo_tokens=true", text_available=False)
    d.audio(pcm)
    d.control("CloseStream")
    finals = d.results(final=True)
    assert len(finals) == 3
    assert all(transcript(m) == "" and m["ichigo"]["tokens"] for m in finals)


def test_a_stereo_8_khz_stream(phrases: list[np.ndarray]) -> None:
    from ichigo_stream.audio import resample

    mono = resample(phrases[0].astype(np.float32) / 32768, SAMPLE_RATE, 8000)
    stereo = np.repeat(to_pcm16(np.concatenate([mono, np.zeros(8000, np.float32)])), 2)
    d = Driver("sample_rate=8000&channels=2")
    d.audio(stereo.tobytes(), chunk=1600)
    d.control("CloseStream")
    assert len(d.results(final=True)) == 1
    assert d.sent[-1]["channels"] == 2


def test_options_default_to_no_extras() -> None:
    assert not ListenOptions().ichigo_tokens and ListenOptions().endpointing


def test_a_message_flood_is_too_fast_as_on_v1_stream() -> None:
    # The adapter passes every raw message through the inner session's admit(): the same
    # message-rate limit as /v1/stream, before anything is parsed.
    d = Driver("", limits=SessionLimits(max_messages_per_s=50.0))
    for _ in range(50):  # the bucket starts with one second's worth
        d.apply(d.session.receive(b"\x00\x00", d.now))
    assert d.closed is None
    d.apply(d.session.receive(b"\x00\x00", d.now))
    assert d.sent[-1]["type"] == "Error" and d.sent[-1]["code"] == "too_fast"
    assert d.closed is not None and d.closed.code == CloseCode.POLICY_VIOLATION


def test_v1_messages_behind_the_results_are_counted_for_metrics(pcm: bytes) -> None:
    # /metrics counts segments and errors of every endpoint: the adapter hands the I/O layer
    # each v1 message it rendered as a Count.
    d = Driver("", fail_segment=1)
    d.audio(pcm)
    d.control("CloseStream")
    finals = [m for m in d.sent if m["type"] == "Results" and m["is_final"]]
    assert len([m for m in d.counted if isinstance(m, Segment)]) == len(finals) == 2
    errors = [m for m in d.counted if isinstance(m, ErrorMessage)]
    assert [e.segment for e in errors] == [1]
