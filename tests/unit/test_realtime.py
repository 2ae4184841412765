"""RealtimeSession (OpenAI Realtime transcription over ServerSession), driven sans-I/O.

Real speech goes in (the bundled sample, resampled to OpenAI's 24 kHz); a stand-in worker
answers each job with tokens derived from its audio and text that follows the caption
contract (a segment's partial texts grow, its final text continues the last one), so every
event of the protocol can be checked without a model, a socket or a clock.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from captioning import text_result

from ichigo_stream.actions import Action, Cancel, Close, Count, Job, JobResult, Send, Submit
from ichigo_stream.assets import sample_path
from ichigo_stream.audio import resample
from ichigo_stream.errors import CloseCode, ProtocolError
from ichigo_stream.messages import Capabilities, Segment, ServerMessage
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.realtime import RealtimeSession
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.session import ServerSession, SessionLimits
from ichigo_stream.tokens import to_ichigo

MODEL = ModelInfo("fake.pth", "0" * 64, 2561, 2048, 25, "medium")
RATE = 24_000
UNLIMITED = SessionLimits(max_realtime=1e6, realtime_burst_s=1e6)
WORDS = [f"w{i}" for i in range(1000)]


def fake_tokens(job: Job) -> list[int]:
    digest = zlib.crc32(np.ascontiguousarray(job.audio, dtype=np.float32).tobytes())
    return [job.start % 2561, len(job.audio) % 2561, digest % 2561]


@pytest.fixture(scope="module")
def sample24() -> bytes:
    """The bundled sample (three sentences) as 24 kHz PCM16, as OpenAI clients send it."""
    pcm, rate = sf.read(sample_path(), dtype="float32")
    audio = resample(pcm, rate, RATE)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class Driver:
    """One RealtimeSession, a fake worker answering every job at once, an injected clock."""

    text: bool = True
    limits: SessionLimits = field(default_factory=lambda: UNLIMITED)
    vad: VadOptions | None = None
    now: float = 0.0
    sent: list[dict[str, Any]] = field(default_factory=list)
    counted: list[ServerMessage] = field(default_factory=list)  # Count actions' v1 messages
    submitted: list[Job] = field(default_factory=list)
    closed: Close | None = None
    partials_answered: Counter[int] = field(default_factory=Counter)
    fail_text: bool = False  # answer finals with tokens but no text, and an error
    fail_tokens: bool = False

    def __post_init__(self) -> None:
        capabilities = Capabilities(text=self.text, limits=self.limits)
        self.session = RealtimeSession("s1", MODEL, capabilities, 0.0, vad_defaults=self.vad)
        self.apply(self.session.opened(0.0))

    def result(self, job: Job) -> JobResult:
        if job.kind == "final" and self.fail_tokens:
            return JobResult(error="model failed")
        # The caption contract: partial texts of a segment grow, its final continues them.
        if job.kind == "partial":
            self.partials_answered[job.segment] += 1
        n = self.partials_answered[job.segment] + (job.kind == "final")
        # Partial jobs carry text once the captions branch marks them; the stand-in answers
        # them with text whenever the server has text, as the captioning worker will.
        wants_text = job.text or (job.kind == "partial" and self.text)
        text = " ".join(WORDS[job.segment : job.segment + n]) if wants_text else None
        if job.kind == "final" and self.fail_text:
            return JobResult(tokens=fake_tokens(job), error="text failed")
        if text is None:
            return JobResult(tokens=fake_tokens(job))
        return text_result(job, fake_tokens(job), text)

    def apply(self, actions: list[Action]) -> None:
        jobs = []
        for action in actions:
            assert self.closed is None, f"{action} after {self.closed}"
            if isinstance(action, Count):
                self.counted.append(action.message)  # the v1 message, for /metrics
            elif isinstance(action, Send):
                self.sent.append(json.loads(action.message.to_json()))
            elif isinstance(action, Submit):
                self.submitted.append(action.job)
                jobs.append(action.job)
            elif isinstance(action, Cancel):
                jobs = [j for j in jobs if j is not action.job]
            else:
                self.closed = action
        for job in jobs:
            self.apply(self.session.job_done(job, self.result(job), self.now))

    def send(self, event: dict[str, Any] | str | bytes) -> list[dict[str, Any]]:
        before = len(self.sent)
        data = event if isinstance(event, str | bytes) else json.dumps(event)
        self.apply(self.session.receive(data, self.now))
        return self.sent[before:]

    def update(self, **session: Any) -> list[dict[str, Any]]:
        return self.send(
            {"type": "session.update", "session": {"type": "transcription", **session}}
        )

    def append(self, pcm: bytes, chunk: int = 4800) -> None:
        rate = self.session.config.sample_rate
        for i in range(0, len(pcm), chunk):
            piece = pcm[i : i + chunk]
            self.now += len(piece) / 2 / rate
            self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
            )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.sent if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]


def turn_detection(**fields: Any) -> dict[str, Any]:
    return {"audio": {"input": {"turn_detection": fields}}}


def manual(rate: int = 16_000) -> dict[str, Any]:
    """Manual commits; at 16 kHz by default, where no resampler delays the commit's cut."""
    return {"audio": {"input": {"turn_detection": None, "format": {"rate": rate}}}}


def silence(seconds: float, rate: int = RATE) -> bytes:
    return bytes(2 * round(seconds * rate))


def assert_error(event: dict[str, Any], code: str, param: str | None = None) -> None:
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    error = event["error"]
    assert set(error) == {"type", "code", "message", "param", "event_id"}
    assert error["code"] == code and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"


# -- the session object ------------------------------------------------------------------------


def test_session_created_first_with_openai_defaults_and_the_servers_vad() -> None:
    d = Driver(vad=VadOptions(min_silence_ms=700, preroll_ms=100, aggressiveness=3))
    (created,) = d.sent
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["type"] == "transcription" and session["id"] == "sess_s1"
    audio_input = session["audio"]["input"]
    assert audio_input["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_input["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.75,
        "prefix_padding_ms": 100,
        "silence_duration_ms": 700,
    }
    assert session["ichigo"] == {"tokens": False, "partials": False, "llm_format": None}


def test_session_update_maps_turn_detection_onto_the_vad() -> None:
    d = Driver()
    (updated,) = d.update(
        audio={
            "input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.2,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 300,
                    "create_response": False,
                },
                "noise_reduction": {"type": "near_field"},
            }
        },
        ichigo={"tokens": True, "llm_format": "ichigo-rle"},
    )
    assert updated["type"] == "session.updated"
    vad = d.session.config.vad
    assert (vad.aggressiveness, vad.preroll_ms, vad.min_silence_ms) == (0, 300, 300)
    assert vad.tail_ms == 150  # halved: the tail must stay shorter than the silence
    audio_input = updated["session"]["audio"]["input"]
    assert audio_input["format"]["rate"] == 16000
    assert audio_input["transcription"]["language"] == "en"
    assert updated["session"]["ichigo"]["llm_format"] == "ichigo-rle"
    # A partial update keeps the rest.
    (again,) = d.update(ichigo={"partials": True})
    assert again["session"]["audio"]["input"]["format"]["rate"] == 16000
    assert again["session"]["ichigo"] == {
        "tokens": True,
        "partials": True,
        "llm_format": "ichigo-rle",
    }


def test_beta_transcription_session_update() -> None:
    d = Driver()
    (updated,) = d.send(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "de"},
                "turn_detection": None,
            },
        }
    )
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["turn_detection"] is None
    assert d.session.config.manual and d.session.config.language == "de"


# -- server VAD ------------------------------------------------------------------------------


def test_server_vad_items_in_order_with_deltas_and_completed(sample24: bytes) -> None:
    d = Driver()
    d.update(ichigo={"tokens": True})
    d.append(sample24 + silence(1.0))
    started = d.of_type("input_audio_buffer.speech_started")
    stopped = d.of_type("input_audio_buffer.speech_stopped")
    committed = d.of_type("input_audio_buffer.committed")
    completed = d.of_type("conversation.item.input_audio_transcription.completed")
    tokens = d.of_type("ichigo.tokens.completed")
    assert len(started) == len(stopped) == len(committed) == len(completed) == len(tokens) == 3
    ids = [e["item_id"] for e in started]
    assert len(set(ids)) == 3 and all(i.startswith("item_") for i in ids)
    for events in (stopped, committed, completed, tokens):
        assert [e["item_id"] for e in events] == ids
    assert [e["previous_item_id"] for e in committed] == [None, *ids[:2]]
    for s, p, t in zip(started, stopped, tokens, strict=True):
        # The session's timeline, in ms: what /v1/stream calls start and end.
        assert s["audio_start_ms"] == round(t["start"] * 1000)
        assert p["audio_end_ms"] == int(t["end"] * 1000)
        assert s["audio_start_ms"] < p["audio_end_ms"]
    event_ids = [e["event_id"] for e in d.sent]
    assert len(set(event_ids)) == len(event_ids)
    for item_id, done in zip(ids, completed, strict=True):
        deltas = [
            e for e in d.of_type("conversation.item.input_audio_transcription.delta")
            if e["item_id"] == item_id
        ]  # fmt: skip
        assert all(e["content_index"] == 0 for e in deltas) and done["content_index"] == 0
        assert "".join(e["delta"] for e in deltas) == done["transcript"]
        order = [i for i, e in enumerate(d.sent) if e.get("item_id") == item_id]
        kinds = [d.sent[i]["type"] for i in order]
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert kinds.index("input_audio_buffer.committed") < kinds.index(
            "conversation.item.input_audio_transcription.completed"
        )
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 0


def test_partial_text_arrives_as_deltas_while_the_item_is_open(sample24: bytes) -> None:
    """Needs ServerSession's partial text (branch captions): on main, partials carry none."""
    d = Driver()
    d.append(sample24 + silence(1.0))
    for committed in d.of_type("input_audio_buffer.committed"):
        item_id = committed["item_id"]
        deltas = [
            i for i, e in enumerate(d.sent)
            if e["type"] == "conversation.item.input_audio_transcription.delta"
            and e["item_id"] == item_id
        ]  # fmt: skip
        assert len(deltas) >= 2 and deltas[0] < d.sent.index(committed)


def test_tokens_equal_the_v1_sessions_segments(sample24: bytes) -> None:
    d = Driver()
    d.update(ichigo={"tokens": True, "llm_format": "ichigo"})
    d.append(sample24, chunk=7777 * 2)
    d.append(silence(1.0))
    v1 = ServerSession("s1", MODEL, Capabilities(text=True, limits=UNLIMITED), 0.0)
    sent = []
    actions = v1.receive(json.dumps({"type": "start", "sample_rate": RATE}), 0.0)
    actions += v1.receive(sample24 + silence(1.0), 0.0)
    for action in actions:
        if isinstance(action, Submit) and action.job.kind == "final":
            done = v1.job_done(action.job, JobResult(fake_tokens(action.job)), 0.0)
            sent += [json.loads(a.message.to_json()) for a in done if isinstance(a, Send)]
    segments = [(s["start"], s["end"], s["tokens"]) for s in sent if s["type"] == "segment"]
    events = d.of_type("ichigo.tokens.completed")
    assert [(e["start"], e["end"], e["tokens"]) for e in events] == segments
    assert all(e["llm"] == to_ichigo(e["tokens"]) for e in events)


def test_extension_events_only_when_asked(sample24: bytes) -> None:
    d = Driver()
    d.append(sample24)
    assert not [t for t in d.types() if t.startswith("ichigo.")]
    d = Driver()
    d.update(ichigo={"partials": True})
    d.append(sample24)
    partials = d.of_type("ichigo.tokens.partial")
    assert partials and all(len(e["tokens"]) == 3 and e["end"] > e["start"] for e in partials)
    assert not d.of_type("ichigo.tokens.completed")


def test_without_text_the_transcript_is_empty_and_no_deltas(sample24: bytes) -> None:
    d = Driver(text=False)
    d.append(sample24 + silence(1.0))
    completed = d.of_type("conversation.item.input_audio_transcription.completed")
    assert len(completed) == 3 and {e["transcript"] for e in completed} == {""}
    assert not d.of_type("conversation.item.input_audio_transcription.delta")
    assert not [j for j in d.submitted if j.kind == "partial"]  # nothing asked for them


def test_commit_in_vad_mode_ends_speech_without_speech_stopped(sample24: bytes) -> None:
    d = Driver()
    (error,) = d.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert_error(error, "input_audio_buffer_commit_empty")
    assert error["error"]["event_id"] == "c1"
    d.append(sample24[: 2 * RATE])  # one second: inside the first sentence
    (started,) = d.of_type("input_audio_buffer.speech_started")
    events = d.send({"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in events][:1] == ["input_audio_buffer.committed"]
    assert events[0]["item_id"] == started["item_id"]
    assert not d.of_type("input_audio_buffer.speech_stopped")


def test_clear_drops_the_open_item(sample24: bytes) -> None:
    d = Driver()
    d.append(sample24[: 2 * RATE])
    (dropped,) = d.of_type("input_audio_buffer.speech_started")
    assert [e["type"] for e in d.send({"type": "input_audio_buffer.clear"})] == [
        "input_audio_buffer.cleared"
    ]
    d.append(sample24[2 * RATE :] + silence(1.0))
    committed = d.of_type("input_audio_buffer.committed")
    assert committed and dropped["item_id"] not in {e["item_id"] for e in committed}
    completed = d.of_type("conversation.item.input_audio_transcription.completed")
    assert [e["item_id"] for e in completed] == [e["item_id"] for e in committed]


# -- manual commits ----------------------------------------------------------------------------


def test_manual_commits_one_item_per_commit(sample24: bytes) -> None:
    d = Driver()
    d.update(**manual(rate=RATE), ichigo={"tokens": True})
    d.append(sample24[: 2 * RATE])
    assert not d.of_type("input_audio_buffer.committed")
    d.send({"type": "input_audio_buffer.commit"})
    d.append(silence(0.5) + sample24[2 * RATE : 6 * RATE])
    d.send({"type": "input_audio_buffer.commit"})
    committed = d.of_type("input_audio_buffer.committed")
    tokens = d.of_type("ichigo.tokens.completed")
    assert len(committed) == 2 == len(tokens)
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    # Each item is the audio appended since the previous commit, less what the 24 -> 16 kHz
    # resampler still holds at the commit (it begins the next item).
    (s0, e0), (s1, e1) = [(e["start"], e["end"]) for e in tokens]
    assert s0 == 0.0 and 0.96 <= e0 <= 1.0 and s1 == e0 and 3.46 <= e1 <= 3.5
    assert not d.of_type("input_audio_buffer.speech_started")
    assert not d.of_type("input_audio_buffer.speech_stopped")
    assert len(d.of_type("conversation.item.input_audio_transcription.completed")) == 2


def test_manual_commit_needs_100_ms_and_clear_drops_audio() -> None:
    d = Driver()
    d.update(**manual(), ichigo={"tokens": True})
    (error,) = d.send({"type": "input_audio_buffer.commit"})
    assert_error(error, "input_audio_buffer_commit_empty")
    d.append(silence(0.05, 16_000))
    (error,) = d.send({"type": "input_audio_buffer.commit"})
    assert_error(error, "input_audio_buffer_commit_empty")
    d.send({"type": "input_audio_buffer.clear"})
    d.append(silence(0.5, 16_000))
    d.send({"type": "input_audio_buffer.commit"})
    (tokens,) = d.of_type("ichigo.tokens.completed")
    assert (tokens["start"], tokens["end"]) == (0.05, 0.55)  # the cleared 50 ms are not in it


def test_manual_item_longer_than_a_window_is_split() -> None:
    d = Driver()
    d.update(**manual(), ichigo={"tokens": True})
    d.append(silence(40.0, 16_000), chunk=96_000)
    assert len(d.of_type("input_audio_buffer.committed")) == 1  # at 30 s, by the server
    d.send({"type": "input_audio_buffer.commit"})
    tokens = d.of_type("ichigo.tokens.completed")
    assert [(e["start"], e["end"]) for e in tokens] == [(0.0, 30.0), (30.0, 40.0)]


# -- bad input: OpenAI's error shape, the session goes on --------------------------------------


BAD_EVENTS = {
    "malformed JSON": ('{"type": "input_audio_buffer.append", ', "invalid_json", None),
    "not an object": ("[1, 2]", "missing_required_parameter", "type"),
    "unknown type": ({"type": "response.create"}, "invalid_value", "type"),
    "not base64": (
        {"type": "input_audio_buffer.append", "audio": "%%%not base64%%%"},
        "invalid_value",
        "audio",
    ),
    "odd byte count": (
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
        "invalid_value",
        "audio",
    ),
    "audio not a string": (
        {"type": "input_audio_buffer.append", "audio": 5},
        "invalid_type",
        "audio",
    ),
    "binary frame": (b"\x00\x01", "invalid_json", None),
    "rate too low": (
        {"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 4000}}}}},
        "invalid_value",
        "session.audio.input.format.rate",
    ),
    "rate not a number": (
        {"type": "session.update", "session": {"audio": {"input": {"format": {"rate": "24k"}}}}},
        "invalid_type",
        "session.audio.input.format.rate",
    ),
    "g711": (
        {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        },
        "invalid_value",
        "session.audio.input.format.type",
    ),
    "realtime session": (
        {"type": "session.update", "session": {"type": "realtime"}},
        "invalid_value",
        "session.type",
    ),
    "threshold": (
        {"type": "session.update", "session": turn_detection(threshold=2)},
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
    ),
    "llm format": (
        {"type": "session.update", "session": {"ichigo": {"llm_format": "nope"}}},
        "invalid_value",
        "session.ichigo.llm_format",
    ),
}


@pytest.mark.parametrize("name", list(BAD_EVENTS))
def test_bad_events_get_an_error_and_the_session_goes_on(name: str, sample24: bytes) -> None:
    event, code, param = BAD_EVENTS[name]
    d = Driver()
    if isinstance(event, dict):
        event = {**event, "event_id": "client-7"}
    (error,) = d.send(event)
    assert_error(error, code, param)
    if isinstance(event, dict):
        assert error["error"]["event_id"] == "client-7"
    assert d.closed is None
    # The configuration is untouched and the session still transcribes.
    assert d.session.config.sample_rate == RATE
    d.append(sample24[: 4 * RATE] + silence(1.0))
    assert d.of_type("conversation.item.input_audio_transcription.completed")


def test_an_oversized_event_is_refused_before_parsing() -> None:
    d = Driver(
        limits=SessionLimits(max_message_bytes=10_000, max_realtime=1e6, realtime_burst_s=1e6)
    )
    audio = base64.b64encode(bytes(9000)).decode()
    (error,) = d.send({"type": "input_audio_buffer.append", "audio": audio})
    assert_error(error, "message_too_large")
    assert d.closed is None and d.session.audio_seconds == 0


def test_append_before_session_update_uses_the_defaults(sample24: bytes) -> None:
    d = Driver()
    d.append(sample24[: 4 * RATE] + silence(1.0))
    assert d.of_type("conversation.item.input_audio_transcription.completed")
    (error,) = d.update(audio={"input": {"format": {"type": "audio/pcm", "rate": 16000}}})
    assert_error(error, "session_update_after_audio", "session")
    (updated,) = d.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
    assert updated["type"] == "session.updated"  # only echoed fields: still allowed


# -- fatal: the v1 limits end the connection ---------------------------------------------------


def test_limits_end_the_session_with_an_error_and_a_close(sample24: bytes) -> None:
    d = Driver(limits=SessionLimits(max_realtime=1.0, realtime_burst_s=1.0))
    d.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(sample24).decode()})
    error = d.of_type("error")[-1]
    assert (
        error["error"]["code"] == "too_fast" and error["error"]["type"] == "invalid_request_error"
    )
    assert d.closed is not None and d.closed.code == CloseCode.POLICY_VIOLATION
    d = Driver(limits=SessionLimits(idle_timeout_s=5))
    d.apply(d.session.check_timeouts(6.0))
    assert d.of_type("error")[-1]["error"]["code"] == "limit" and d.closed is not None


def test_failed_transcriptions(sample24: bytes) -> None:
    for flag in ("fail_text", "fail_tokens"):
        d = Driver(**{flag: True})
        d.update(ichigo={"tokens": True})
        d.append(sample24 + silence(1.0))
        failed = d.of_type("conversation.item.input_audio_transcription.failed")
        committed = d.of_type("input_audio_buffer.committed")
        assert [e["item_id"] for e in failed] == [e["item_id"] for e in committed]
        assert all(e["error"]["type"] == "server_error" and e["error"]["message"] for e in failed)
        assert not d.of_type("conversation.item.input_audio_transcription.completed")
        # Tokens that did come still go out; the session goes on.
        assert len(d.of_type("ichigo.tokens.completed")) == (3 if flag == "fail_text" else 0)
        assert d.closed is None


def test_shutdown_finishes_the_open_item(sample24: bytes) -> None:
    d = Driver()
    d.append(sample24[: 2 * RATE])
    d.apply(d.session.shutdown(d.now))
    assert len(d.of_type("conversation.item.input_audio_transcription.completed")) == 1
    assert d.closed is not None and d.closed.code == CloseCode.NORMAL


def test_a_server_fault_is_a_server_error() -> None:
    d = Driver()
    d.apply(d.session.fail(ProtocolError("internal", "internal server error")))
    (error,) = d.of_type("error")
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "internal"
    assert d.closed is not None and d.closed.code == CloseCode.INTERNAL_ERROR
    assert d.session.receive('{"type": "input_audio_buffer.clear"}', 1.0) == []


def test_a_message_flood_is_too_fast_and_closes_as_on_v1_stream() -> None:
    # Every raw message passes the inner session's message-rate limit before it is parsed.
    d = Driver(limits=SessionLimits(max_realtime=1e6, realtime_burst_s=1e6, max_messages_per_s=20))
    for _ in range(20):  # the bucket starts with one second's worth
        d.send({"type": "input_audio_buffer.clear"})
    assert d.closed is None
    d.send("{}")
    assert d.closed is not None and d.closed.code == CloseCode.POLICY_VIOLATION
    assert d.sent[-1]["type"] == "error" and d.sent[-1]["error"]["code"] == "too_fast"


def test_v1_messages_behind_the_events_are_counted_for_metrics(sample24: bytes) -> None:
    # /metrics counts segments, partials and errors of every endpoint: the adapter hands the
    # I/O layer each v1 message it rendered as a Count.
    d = Driver()
    d.append(sample24[: 4 * RATE] + silence(1.0))
    completed = d.of_type("conversation.item.input_audio_transcription.completed")
    counted = [m for m in d.counted if isinstance(m, Segment)]
    assert completed and len(counted) == len(completed)
    assert [round(m.start * 1000) for m in counted] == [
        e["audio_start_ms"] for e in d.of_type("input_audio_buffer.speech_started")
    ]
