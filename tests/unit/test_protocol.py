"""ichigo_stream.protocol and .messages: every message of protocol v1, both directions."""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import pytest

from ichigo_stream.errors import CLOSE_FOR_ERROR, ClientError, CloseCode, ErrorCode, ProtocolError
from ichigo_stream.messages import (
    Audio,
    Capabilities,
    Done,
    ErrorMessage,
    Flush,
    Partial,
    Ready,
    Segment,
    SessionLimits,
    SpeechStart,
    Start,
    Stop,
    parse_client_message,
    parse_server_message,
)
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.protocol import MAX_OFFSET_S, StartOptions, parse_start, seconds
from ichigo_stream.segmentation import VadOptions

parse_message = parse_client_message  # the server's reading of a client message


def start(**fields: Any) -> str:
    return json.dumps({"type": "start", **fields})


def options(**fields: Any) -> StartOptions:
    message = parse_message(start(**fields))
    assert isinstance(message, Start)
    return message.options


def refused(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_message(text)
    return info.value


# -- message framing -------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02")])
def test_binary_messages_are_audio_bytes(data: bytes | bytearray | memoryview) -> None:
    message = parse_message(data)
    assert message == Audio(b"\x01\x02")
    assert type(message.data) is bytes  # a copy: the socket layer may reuse its buffer


def test_empty_binary_message_is_empty_audio() -> None:
    assert parse_message(b"") == Audio(b"")


def test_control_messages() -> None:
    assert parse_message('{"type": "flush"}') == Flush()
    assert parse_message('{"type": "stop"}') == Stop()
    # unknown fields are ignored on every message type, for forward compatibility
    assert parse_message('{"type": "stop", "reason": "bye", "n": [1]}') == Stop()
    assert parse_message(start(future_field={"x": 1})) == Start(StartOptions())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{'type': 'start'}",  # Python, not JSON
        '{"type": "start"',
        "[]",
        '"start"',
        "42",
        "null",
        "{}",
        '{"type": null}',
        '{"type": 1}',
        '{"type": ["start"]}',
        '{"kind": "start"}',
    ],
)
def test_malformed_text_is_bad_message(text: str) -> None:
    error = refused(text)
    assert error.code == "bad_message"
    assert error.close_code == CloseCode.UNSUPPORTED_DATA


@pytest.mark.parametrize("kind", ["begin", "Start", "STOP", "audio", "ping", ""])
def test_unknown_type_is_bad_message(kind: str) -> None:
    error = refused(json.dumps({"type": kind}))
    assert error.code == "bad_message"
    assert repr(kind) in error.message


def test_deeply_nested_json_is_bad_message_not_a_crash() -> None:
    # 200k brackets fit in the default 1 MiB message limit and exhaust the JSON parser's stack
    error = refused("[" * 200_000)
    assert error.code == "bad_message"
    assert refused('{"type": "start", "vad": ' + "[" * 100_000 + "}").code == "bad_message"


# -- start: defaults and every field ---------------------------------------------------------


def test_start_defaults() -> None:
    opts = options()
    assert opts == StartOptions()
    assert (opts.sample_rate, opts.encoding, opts.channels) == (16000, "pcm_s16le", 1)
    assert (opts.partials, opts.partial_interval_ms, opts.text) == (False, 500, False)
    assert (opts.language, opts.llm_format, opts.offset) == (None, None, 0.0)
    assert opts.vad == VadOptions()
    assert opts.bytes_per_frame == 2 and opts.offset_samples == 0


def test_start_accepts_every_field() -> None:
    opts = options(
        sample_rate=48000,
        encoding="pcm_f32le",
        channels=2,
        partials=True,
        partial_interval_ms=250,
        text=True,
        language="vi",
        llm_format="ichigo-rle",
        vad={
            "aggressiveness": 3,
            "min_silence_ms": 800,
            "tail_ms": 300,
            "preroll_ms": 100,
            "max_segment_s": 12.5,
            "frame_ms": 20,
        },
        offset=61.25,
    )
    assert opts == StartOptions(
        sample_rate=48000,
        encoding="pcm_f32le",
        channels=2,
        partials=True,
        partial_interval_ms=250,
        text=True,
        language="vi",
        llm_format="ichigo-rle",
        vad=VadOptions(
            aggressiveness=3,
            min_silence_ms=800,
            tail_ms=300,
            preroll_ms=100,
            max_segment_s=12.5,
            frame_ms=20,
        ),
        offset=61.25,
    )
    assert opts.bytes_per_frame == 8  # 4-byte floats x 2 channels
    assert opts.offset_samples == 980_000


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_sample_rate_range_is_inclusive(rate: int) -> None:
    assert options(sample_rate=rate).sample_rate == rate


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        # wrong JSON types: bad_message
        ({"sample_rate": "16000"}, "bad_message"),
        ({"sample_rate": 16000.0}, "bad_message"),
        ({"sample_rate": True}, "bad_message"),
        ({"sample_rate": None}, "bad_message"),
        ({"encoding": 2}, "bad_message"),
        ({"encoding": None}, "bad_message"),
        ({"channels": 1.0}, "bad_message"),
        ({"channels": True}, "bad_message"),
        ({"partials": 1}, "bad_message"),
        ({"partials": "true"}, "bad_message"),
        ({"partials": None}, "bad_message"),
        ({"partial_interval_ms": 500.5}, "bad_message"),
        ({"text": 0}, "bad_message"),
        ({"language": 7}, "bad_message"),
        ({"language": ["en"]}, "bad_message"),
        ({"llm_format": True}, "bad_message"),
        ({"offset": "1.5"}, "bad_message"),
        ({"offset": False}, "bad_message"),
        ({"offset": None}, "bad_message"),
        ({"vad": 2}, "bad_message"),
        ({"vad": [2]}, "bad_message"),
        ({"vad": "aggressive"}, "bad_message"),
        ({"vad": {"aggressiveness": 2.0}}, "bad_message"),
        ({"vad": {"aggressiveness": True}}, "bad_message"),
        ({"vad": {"min_silence_ms": "500"}}, "bad_message"),
        ({"vad": {"tail_ms": None}}, "bad_message"),  # was a TypeError inside VadOptions
        ({"vad": {"preroll_ms": 200.0}}, "bad_message"),
        ({"vad": {"max_segment_s": "30"}}, "bad_message"),
        ({"vad": {"max_segment_s": None}}, "bad_message"),
        ({"vad": {"frame_ms": None}}, "bad_message"),
        # out of range: bad_message for the offset, unsupported for the rest
        ({"offset": -0.001}, "bad_message"),
        ({"offset": MAX_OFFSET_S * 2}, "bad_message"),
        ({"offset": 10**400}, "bad_message"),  # would overflow a float: was an OverflowError
        ({"sample_rate": 7999}, "unsupported"),
        ({"sample_rate": 48001}, "unsupported"),
        ({"sample_rate": 0}, "unsupported"),
        ({"sample_rate": 10**400}, "unsupported"),
        ({"encoding": "pcm_s24le"}, "unsupported"),
        ({"encoding": "PCM_S16LE"}, "unsupported"),
        ({"encoding": "opus"}, "unsupported"),
        ({"channels": 0}, "unsupported"),
        ({"channels": 3}, "unsupported"),
        ({"partial_interval_ms": 99}, "unsupported"),
        ({"partial_interval_ms": 10_001}, "unsupported"),
        ({"partial_interval_ms": -500}, "unsupported"),
        ({"llm_format": "ids"}, "unsupported"),
        ({"llm_format": "ichigo_rle"}, "unsupported"),
        ({"vad": {"aggressiveness": 4}}, "unsupported"),
        ({"vad": {"aggressiveness": -1}}, "unsupported"),
        ({"vad": {"tail_ms": -10}}, "unsupported"),
        ({"vad": {"preroll_ms": -10}}, "unsupported"),
        ({"vad": {"min_silence_ms": 200}}, "unsupported"),  # must exceed tail_ms (200)
        ({"vad": {"tail_ms": 600}}, "unsupported"),  # ... which must stay below min_silence
        ({"vad": {"max_segment_s": 0}}, "unsupported"),
        ({"vad": {"max_segment_s": -1}}, "unsupported"),
        ({"vad": {"max_segment_s": 30.001}}, "unsupported"),
        ({"vad": {"max_segment_s": 31}}, "unsupported"),
        ({"vad": {"max_segment_s": 0.2}}, "unsupported"),  # < preroll + 2 frames
        ({"vad": {"frame_ms": 25}}, "unsupported"),
        ({"vad": {"min_silence_ms": 10**400}}, "unsupported"),  # was an OverflowError
        ({"vad": {"preroll_ms": 10**30}}, "unsupported"),
    ],
)
def test_invalid_start_fields(fields: dict[str, Any], code: str) -> None:
    error = refused(start(**fields))
    assert error.code == code, error.message
    assert error.close_code == CloseCode.UNSUPPORTED_DATA
    assert next(iter(fields)) in error.message  # the message names the field


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    # Python's json accepts these non-standard literals, so they must be checked explicitly
    assert refused(f'{{"type": "start", "offset": {literal}}}').code == "bad_message"
    vad = f'{{"type": "start", "vad": {{"max_segment_s": {literal}}}}}'
    assert refused(vad).code in ("bad_message", "unsupported")


def test_nullable_fields_take_null() -> None:
    opts = options(language=None, llm_format=None, vad=None)
    assert (opts.language, opts.llm_format, opts.vad) == (None, None, VadOptions())


def test_unknown_fields_are_ignored_at_both_levels() -> None:
    opts = options(sample_rate=8000, codec="opus", version=2, vad={"tail_ms": 100, "mode": "fast"})
    assert opts == StartOptions(sample_rate=8000, vad=VadOptions(tail_ms=100))


def test_vad_partial_object_keeps_other_defaults() -> None:
    vad = options(vad={"min_silence_ms": 1000}).vad
    assert vad == VadOptions(min_silence_ms=1000)
    assert (vad.tail_ms, vad.preroll_ms, vad.aggressiveness) == (200, 200, 2)
    assert options(vad={"max_segment_s": 30}).vad.max_segment_s == 30


def test_offset_is_whole_samples() -> None:
    assert options(offset=1).offset == 1.0 and isinstance(options(offset=1).offset, float)
    assert options(offset=1.2345).offset_samples == 19_752
    assert options(offset=0.00003).offset_samples == 0  # 0.48 samples rounds to 0
    assert options(offset=MAX_OFFSET_S).offset_samples == 16 * 10**12


def test_parse_start_reads_a_decoded_object() -> None:
    assert parse_start({"channels": 2}) == StartOptions(channels=2)


# -- errors and close codes ------------------------------------------------------------------


def test_every_error_code_has_its_close_code() -> None:
    assert set(CLOSE_FOR_ERROR) == set(get_args(ErrorCode))
    expected = {
        "bad_message": 1003,
        "bad_audio": 1003,
        "unsupported": 1003,
        "too_large": 1009,
        "too_fast": 1008,
        "limit": 1008,
        "unauthorized": 1008,
        "internal": 1011,
    }
    assert {code: int(close) for code, close in CLOSE_FOR_ERROR.items()} == expected
    for code, close in expected.items():
        assert ProtocolError(code, "x").close_code == close
    assert ProtocolError("limit", "full", CloseCode.TRY_AGAIN_LATER).close_code == 1013


# -- server messages -------------------------------------------------------------------------


def test_times_are_whole_samples_in_seconds() -> None:
    assert seconds(16_000) == 1.0
    assert seconds(1600) == 0.1
    for samples in (1, 3, 12345, 10**12 + 7):
        assert round(seconds(samples) * 16_000) == samples


MODEL = ModelInfo("m", "ab", 2561, 2048, 25, "medium")


def wire(message: Ready | SpeechStart | Partial | Segment | ErrorMessage | Done) -> Any:
    return json.loads(message.to_json())


def test_server_message_shapes() -> None:
    capabilities = Capabilities()
    assert wire(Ready(1, "s1", MODEL, 16000, capabilities)) == {
        "type": "ready",
        "protocol": 1,
        "session": "s1",
        "model": {
            "name": "m",
            "sha256": "ab",
            "codebook_size": 2561,
            "mask_token": 2048,
            "token_rate": 25,
            "whisper": "medium",
        },
        "sample_rate": 16000,
        "capabilities": {
            "text": False,
            "partials": True,
            "min_sample_rate": 8000,
            "max_sample_rate": 48000,
            "channels": [1, 2],
            "encodings": ["pcm_s16le", "pcm_f32le"],
            "llm_formats": ["ichigo", "ichigo-rle"],
            "limits": {
                "max_message_bytes": 1 << 20,
                "max_realtime": 10.0,
                "realtime_burst_s": 30.0,
                "max_session_s": 14400.0,
                "idle_timeout_s": 60.0,
                "max_pending_segments": 32,
                "max_windows_per_s": 3.0,
                "windows_burst": 30.0,
                "max_messages_per_s": 500.0,
            },
        },
    }
    assert wire(SpeechStart(2, seconds(8000))) == {
        "type": "speech_start",
        "segment": 2,
        "start": 0.5,
    }
    assert wire(Partial(0, seconds(1600), seconds(9600), (5, 6))) == {
        "type": "partial",
        "segment": 0,
        "start": 0.1,
        "end": 0.6,
        "tokens": [5, 6],
    }
    plain = Segment(1, 0.0, 1.0, (7,), endpoint_ms=12.346)
    assert wire(plain) == {
        "type": "segment",
        "segment": 1,
        "start": 0.0,
        "end": 1.0,
        "tokens": [7],
        "endpoint_ms": 12.346,
    }
    full = wire(Segment(1, 0.0, 1.0, (7,), text="hi", llm="<|sound_start|>", endpoint_ms=0.0))
    assert (full["text"], full["llm"], full["endpoint_ms"]) == ("hi", "<|sound_start|>", 0.0)
    # documented order: text and llm come before endpoint_ms
    assert list(full) == ["type", "segment", "start", "end", "tokens", "text", "llm", "endpoint_ms"]
    # empty text is still text: only None leaves the field out
    assert wire(Segment(1, 0.0, 1.0, (), text="", endpoint_ms=0.0))["text"] == ""
    assert wire(ErrorMessage("bad_audio", "odd")) == {
        "type": "error",
        "code": "bad_audio",
        "message": "odd",
    }
    assert wire(ErrorMessage("internal", "boom", segment=3))["segment"] == 3
    assert wire(Done(4, 12.345679)) == {"type": "done", "segments": 4, "audio_seconds": 12.345679}


def test_to_json_is_compact_and_refuses_nan() -> None:
    assert Done(0, 1.5).to_json() == '{"type":"done","segments":0,"audio_seconds":1.5}'
    assert Flush().to_json() == '{"type":"flush"}' and Stop().to_json() == '{"type":"stop"}'
    with pytest.raises(ValueError):
        Done(0, math.nan).to_json()


def test_unlimited_limits_go_out_as_null_and_come_back() -> None:
    limits = SessionLimits(max_realtime=math.inf, max_session_s=math.inf, idle_timeout_s=5.0)
    ready = Ready(1, "s", MODEL, 16000, Capabilities(text=True, limits=limits))
    sent = wire(ready)["capabilities"]["limits"]
    assert (sent["max_realtime"], sent["max_session_s"], sent["idle_timeout_s"]) == (
        None,
        None,
        5.0,
    )
    assert parse_server_message(ready.to_json()) == ready


# -- the client's reading of server messages ---------------------------------------------------

EXAMPLES = [
    Ready(1, "3f9c2a7e1b0d4c55", MODEL, 16000, Capabilities()),
    SpeechStart(0, 0.1),
    Partial(0, 0.1, 1.1, (1702, 33, 2049)),
    Segment(0, 0.1, 3.17, (1702, 33), endpoint_ms=0.0),
    Segment(1, 3.82, 7.22, (), text="", llm="<|sound_start|><|sound_end|>", endpoint_ms=1.5),
    ErrorMessage("too_fast", "audio is arriving faster than 10x real time"),
    ErrorMessage("internal", "model failed", segment=4),
    Done(3, 12.692875),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_server_messages_round_trip(message: Any) -> None:
    assert parse_server_message(message.to_json()) == message
    assert parse_server_message(wire(message)) == message  # a decoded object too
    # unknown fields are ignored, at every level (newer servers may add some)
    extra = {**wire(message), "future": [1, {"x": None}]}
    if isinstance(message, Ready):
        extra["model"]["future"] = 1
        extra["capabilities"]["limits"]["future"] = True
    assert parse_server_message(json.dumps(extra)) == message


def test_integral_times_from_any_server_are_numbers() -> None:
    parsed = parse_server_message('{"type":"speech_start","segment":0,"start":1}')
    assert parsed == SpeechStart(0, 1.0) and isinstance(parsed.start, float)


def test_unknown_server_message_types_are_ignored() -> None:
    assert parse_server_message('{"type":"progress","n":1}') is None
    assert parse_server_message('{"n":1}') is None
    assert parse_server_message('{"type":["ready"]}') is None


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"speech_start","segment":0}',  # start missing
        '{"type":"speech_start","segment":"0","start":0.1}',
        '{"type":"speech_start","segment":true,"start":0.1}',
        '{"type":"speech_start","segment":0.0,"start":0.1}',
        '{"type":"speech_start","segment":0,"start":"0.1"}',
        '{"type":"speech_start","segment":0,"start":NaN}',
        '{"type":"speech_start","segment":0,"start":1%s}' % ("0" * 400),  # beyond any float
        '{"type":"partial","segment":0,"start":0,"end":1,"tokens":"1 2"}',
        '{"type":"partial","segment":0,"start":0,"end":1,"tokens":[1,2.5]}',
        '{"type":"segment","segment":0,"start":0,"end":1,"tokens":[1]}',  # endpoint_ms missing
        '{"type":"segment","segment":0,"start":0,"end":1,"tokens":[1],"endpoint_ms":0,"text":1}',
        '{"type":"error","code":"x"}',
        '{"type":"error","code":"x","message":"m","segment":"1"}',
        '{"type":"done","segments":1}',
        '{"type":"done","segments":1,"audio_seconds":null}',
        '{"type":"ready","protocol":1,"session":"s","model":{},"sample_rate":16000}',
    ],
)
def test_malformed_server_messages_are_client_errors(text: str) -> None:
    with pytest.raises(ClientError, match="malformed"):
        parse_server_message(text)


def test_malformed_ready_fields_are_named() -> None:
    good = wire(EXAMPLES[0])
    good["capabilities"]["limits"]["max_pending_segments"] = 1.5
    with pytest.raises(ClientError, match=r"ready\.capabilities\.limits\.max_pending_segments"):
        parse_server_message(json.dumps(good))
    good = wire(EXAMPLES[0])
    good["capabilities"]["encodings"] = ["pcm_s16le", 2]
    with pytest.raises(ClientError, match=r"ready\.capabilities\.encodings\[1\]"):
        parse_server_message(json.dumps(good))


@pytest.mark.parametrize("text", ["not json", "[]", '"ready"', "null", "[" * 100_000])
def test_server_text_that_is_no_object_is_a_client_error(text: str) -> None:
    with pytest.raises(ClientError):
        parse_server_message(text)


# -- the client's start message ----------------------------------------------------------------


def test_start_to_json_is_read_back_as_the_same_options() -> None:
    options = StartOptions(
        sample_rate=44100,
        encoding="pcm_f32le",
        channels=2,
        partials=True,
        partial_interval_ms=250,
        text=True,
        language="vi",
        llm_format="ichigo",
        vad=VadOptions(aggressiveness=3, min_silence_ms=700, max_segment_s=12.5, frame_ms=20),
        offset=61.25,
    )
    for opts in (options, StartOptions()):
        assert parse_message(Start(opts).to_json()) == Start(opts)
    assert parse_message(Flush().to_json()) == Flush()
    assert parse_message(Stop().to_json()) == Stop()
