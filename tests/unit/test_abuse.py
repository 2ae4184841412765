"""Abuse within the protocol, sans-I/O: message floods, empty messages, and client input that
must not come back (an unknown or huge `language`, long values in errors).

The session alone, with an injected clock: a flood is cut off with too_fast and 1008 within a
second of session time, while 10 ms chunks in real time (and faster) pass.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ichigo_stream.actions import Action, Close, Send
from ichigo_stream.errors import CloseCode, ProtocolError
from ichigo_stream.languages import LANGUAGE_CODES, WHISPER_LANGUAGES
from ichigo_stream.message_rate import EMPTY_MESSAGE_COST
from ichigo_stream.messages import Capabilities, SessionLimits, parse_client_message
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.protocol import QUOTE_CHARS, parse_start
from ichigo_stream.session import ServerSession

MODEL = ModelInfo("test.pth", "0" * 64, 2561, 2048, 25, "tiny")
CHUNK_10MS = bytes(320)  # 10 ms of 16 kHz pcm_s16le


class Session:
    """A started session fed messages at given times; what it sent and how it closed."""

    def __init__(self, limits: SessionLimits | None = None, **start: Any) -> None:
        capabilities = Capabilities(limits=limits or SessionLimits())
        self.session = ServerSession("abuse", MODEL, capabilities, 0.0)
        self.sent: list[dict[str, Any]] = []
        self.closed: Close | None = None
        self.closed_at: float | None = None
        self.feed(json.dumps({"type": "start", **start}), 0.0)

    def feed(self, data: str | bytes, now: float) -> list[Action]:
        actions = self.session.receive(data, now)
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action.message.to_dict())
            elif isinstance(action, Close) and self.closed is None:
                self.closed, self.closed_at = action, now
        return actions

    def stream(self, messages: int, per_second: float, data: str | bytes = CHUNK_10MS) -> None:
        """`messages` messages, evenly spaced at per_second, until the session closes."""
        for i in range(messages):
            if self.closed is not None:
                return
            self.feed(data, i / per_second)

    def error(self) -> tuple[str, int]:
        errors = [m for m in self.sent if m["type"] == "error"]
        assert len(errors) == 1 and self.closed is not None, self.sent
        return errors[0]["code"], self.closed.code


# -- the message rate --------------------------------------------------------------------------


def test_10ms_chunks_with_control_messages_pass_in_real_time_and_at_4x() -> None:
    assert SessionLimits().max_messages_per_s == 500  # the default under test
    for speed in (1.0, 4.0):
        s = Session()
        for i in range(20 * 100):  # 20 s of audio, 10 ms a message
            t = i / (100 * speed)
            s.feed(CHUNK_10MS, t)
            if i % 25 == 0:  # and a flush four times a second of audio
                s.feed('{"type":"flush"}', t)
        assert s.closed is None, s.sent[-2:]


@pytest.mark.parametrize(
    ("what", "data"),
    [("empty", b""), ("one-sample", b"\0\0"), ("flush", '{"type":"flush"}')],
)
def test_a_flood_is_too_fast_and_closed_1008_within_a_second(what: str, data: str | bytes) -> None:
    s = Session()
    s.stream(20_000, per_second=10_000, data=data)  # the probe's ~10k messages a second
    assert s.error() == ("too_fast", CloseCode.POLICY_VIOLATION), what
    assert s.closed_at is not None and s.closed_at < 1.0, s.closed_at
    # After the close, the session ignores whatever still comes (no second error).
    assert s.feed(data, 2.0) == []


def test_empty_messages_cost_more_than_a_message() -> None:
    # 100 empty messages a second is 1,000 messages' worth: over the default 500 within
    # about a second and a half (the bucket starts full: 500), where 100 chunks pass forever.
    assert EMPTY_MESSAGE_COST == 10
    empty = Session()
    empty.stream(1000, per_second=100, data=b"")
    assert empty.error() == ("too_fast", CloseCode.POLICY_VIOLATION)
    assert empty.closed_at is not None and 0.5 < empty.closed_at < 2.0, empty.closed_at
    audio = Session()
    audio.stream(1000, per_second=100)
    assert audio.closed is None


def test_the_bucket_refills_at_the_rate() -> None:
    s = Session(SessionLimits(max_messages_per_s=50.0))
    for _ in range(49):  # the whole burst at one instant (the start message took one)
        s.feed(CHUNK_10MS, 0.0)
    assert s.closed is None
    s.feed(CHUNK_10MS, 0.0)  # one more at the same instant: over
    assert s.error() == ("too_fast", CloseCode.POLICY_VIOLATION)
    again = Session(SessionLimits(max_messages_per_s=50.0))
    for _ in range(49):
        again.feed(CHUNK_10MS, 0.0)
    again.feed(CHUNK_10MS, 0.1)  # 0.1 s later: five messages' worth refilled
    assert again.closed is None


def test_no_message_limit_with_inf() -> None:
    s = Session(SessionLimits(max_messages_per_s=math.inf, max_realtime=math.inf))
    s.stream(20_000, per_second=10_000)
    assert s.closed is None
    assert s.session.capabilities.limits.max_messages_per_s == math.inf


# -- no echoes ---------------------------------------------------------------------------------


def test_language_must_be_a_whisper_code() -> None:
    for code in ("en", "vi", "haw", "yue"):
        assert parse_start({"language": code}).language == code
    assert parse_start({}).language is None and parse_start({"language": None}).language is None
    for bad in ("EN", "english", "xx", "", "en "):
        with pytest.raises(ProtocolError) as refused:
            parse_start({"language": bad})
        assert refused.value.code == "unsupported", bad
    assert len(WHISPER_LANGUAGES) == len(LANGUAGE_CODES) == 100


def test_a_huge_language_is_refused_at_start_and_never_echoed() -> None:
    huge = "x" * 900_000
    s = Session(language=huge, text=False)
    code, close = s.error()
    assert (code, close) == ("unsupported", CloseCode.UNSUPPORTED_DATA)
    message = s.sent[-1]["message"]
    assert len(message) < 2 * QUOTE_CHARS + 60, message
    assert "xxxx" in message  # a short prefix, enough to recognise it


@pytest.mark.parametrize(
    "message",
    [
        {"type": "y" * 100_000},
        {"type": "start", "encoding": "e" * 100_000},
        {"type": "start", "llm_format": "l" * 100_000},
        {"type": "start", "sample_rate": "r" * 100_000},
        {"type": "start", "vad": {"tail_ms": "t" * 100_000}},
        {"type": "start", "channels": [[0] * 50_000]},
    ],
    ids=["type", "encoding", "llm_format", "wrong-type", "vad-wrong-type", "array"],
)
def test_errors_quote_a_short_prefix_of_client_input(message: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(json.dumps(message))
    assert len(str(refused.value.message)) < 2 * QUOTE_CHARS + 80, refused.value.message
