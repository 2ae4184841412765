"""ichigo_stream.protocol: parsing client messages and building server messages, no session."""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import pytest

from ichigo_stream.protocol import (
    CLOSE_FOR_ERROR,
    MAX_OFFSET_S,
    Audio,
    CloseCode,
    ErrorCode,
    Flush,
    ProtocolError,
    Start,
    StartOptions,
    Stop,
    done_message,
    encode,
    error_message,
    parse_message,
    parse_start,
    partial_message,
    ready_message,
    seconds,
    segment_message,
    speech_start_message,
)
from ichigo_stream.segmentation import VadOptions


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


def test_server_message_shapes() -> None:
    model = {"name": "m", "sha256": "ab", "codebook_size": 2561, "mask_token": 2048}
    assert ready_message("s1", model) == {
        "type": "ready",
        "protocol": 1,
        "session": "s1",
        "model": model,
        "sample_rate": 16000,
    }
    assert speech_start_message(2, 8000) == {"type": "speech_start", "segment": 2, "start": 0.5}
    assert partial_message(0, 1600, 9600, [5, 6]) == {
        "type": "partial",
        "segment": 0,
        "start": 0.1,
        "end": 0.6,
        "tokens": [5, 6],
    }
    plain = segment_message(1, 0, 16000, [7], 12.34567)
    assert plain == {
        "type": "segment",
        "segment": 1,
        "start": 0.0,
        "end": 1.0,
        "tokens": [7],
        "endpoint_ms": 12.346,
    }
    full = segment_message(1, 0, 16000, [7], 0.0, text="hi", llm="<|sound_start|>")
    assert (full["text"], full["llm"], full["endpoint_ms"]) == ("hi", "<|sound_start|>", 0.0)
    # empty text is still text: only None leaves the field out
    assert segment_message(1, 0, 1, [], 0.0, text="")["text"] == ""
    assert error_message("bad_audio", "odd") == {
        "type": "error",
        "code": "bad_audio",
        "message": "odd",
    }
    assert error_message("internal", "boom", segment=3)["segment"] == 3
    assert done_message(4, 12.3456789) == {
        "type": "done",
        "segments": 4,
        "audio_seconds": 12.345679,
    }


def test_encode_is_compact_json_and_refuses_nan() -> None:
    assert encode({"type": "done", "segments": 0}) == '{"type":"done","segments":0}'
    with pytest.raises(ValueError):
        encode({"x": math.nan})
