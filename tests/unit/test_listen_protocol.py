"""The /v1/listen query and messages (listen_protocol, listen_messages), sans-I/O: what
Deepgram clients send in the URL and as control messages, and the JSON our messages become."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ichigo_stream.errors import ProtocolError
from ichigo_stream.listen_messages import (
    Error,
    IchigoTokens,
    Metadata,
    ModelFields,
    Results,
    SpeechStarted,
    UtteranceEnd,
    coarse_words,
)
from ichigo_stream.listen_protocol import (
    ListenOptions,
    ListenQueryError,
    bad_request_body,
    parse_control,
    parse_listen_query,
)
from ichigo_stream.protocol import MAX_VAD_MS
from ichigo_stream.segmentation import VadOptions

MODEL = ModelFields("m.pth", "0123456789ab", "ichigo-whisper", "0000-uuid")


def parse(query: str, *, text_available: bool = True) -> ListenOptions:
    return parse_listen_query(query, text_available=text_available)


def test_an_empty_query_is_linear16_at_16_khz_mono_with_the_servers_endpointing() -> None:
    options = parse("")
    assert options == ListenOptions()
    start = options.start_options(VadOptions(min_silence_ms=700), text=True)
    assert (start.encoding, start.sample_rate, start.channels) == ("pcm_s16le", 16_000, 1)
    assert start.vad == VadOptions(min_silence_ms=700)
    assert start.text and not start.partials and start.language is None
    assert start.llm_format is None


def test_every_supported_option_maps_onto_the_v1_start() -> None:
    options = parse(
        "encoding=linear16&sample_rate=48000&channels=2&interim_results=true"
        "&endpointing=300&utterance_end_ms=1500&vad_events=TRUE&language=en-US"
        "&model=nova-3&ichigo_tokens=true&ichigo_llm_format=ichigo-rle"
    )
    assert options == ListenOptions(
        sample_rate=48_000,
        channels=2,
        interim_results=True,
        endpointing_ms=300,
        utterance_end_ms=1500,
        vad_events=True,
        language="en",
        model="nova-3",
        ichigo_tokens=True,
        ichigo_llm_format="ichigo-rle",
    )
    start = options.start_options(None, text=True)
    assert (start.sample_rate, start.channels, start.partials) == (48_000, 2, True)
    assert start.vad.min_silence_ms == 300 and start.language == "en"
    assert start.llm_format == "ichigo-rle"


def test_endpointing_maps_onto_min_silence() -> None:
    defaults = VadOptions()  # tail 200 ms, frames of 30 ms
    vad = parse("endpointing=800").start_options(defaults, text=True).vad
    assert vad == replace(defaults, min_silence_ms=800)
    # Deepgram's 10 ms (and anything up to the tail) becomes the shortest our VAD can do.
    assert parse("endpointing=10").start_options(defaults, text=True).vad.min_silence_ms == 230
    assert parse("endpointing=0").start_options(defaults, text=True).vad.min_silence_ms == 230
    off = parse("endpointing=false").start_options(defaults, text=True).vad
    assert off.min_silence_ms == MAX_VAD_MS  # never by silence: the 30 s cap comes first
    assert parse("endpointing=true").start_options(defaults, text=True).vad == defaults


@pytest.mark.parametrize(
    ("query", "language"),
    [("language=en", "en"), ("language=pt-BR", "pt"), ("language=ZH-Hant-TW", "zh"),
     ("language=multi", None), ("language=", None)],
)  # fmt: skip
def test_language_tags_become_whisper_codes(query: str, language: str | None) -> None:
    assert parse(query).language == language


def test_deepgram_options_we_do_not_implement_are_accepted_and_ignored() -> None:
    query = (
        "model=nova-3&punctuate=true&smart_format=true&diarize=true&numerals=true"
        "&profanity_filter=false&keywords=ichigo:2&keyterm=tokens&tag=a&tag=b"
        "&filler_words=true&mip_opt_out=true&no_delay=true&some_future_option=1"
    )
    assert replace(parse(query), model=None) == ListenOptions()


@pytest.mark.parametrize(
    "query",
    [
        "encoding=opus",
        "encoding=linear32",
        "encoding=mulaw",
        "sample_rate=7999",
        "sample_rate=48001",
        "sample_rate=16k",
        "sample_rate=+16000",
        "sample_rate=99999999999999999999",
        "channels=3",
        "channels=0",
        "multichannel=true",
        "interim_results=yes",
        "vad_events=1",
        "endpointing=-5",
        "endpointing=soon",
        "endpointing=600001",
        "utterance_end_ms=999",
        "utterance_end_ms=abc",
        "language=en_US!",
        "language=e",
        "ichigo_tokens=maybe",
        "ichigo_llm_format=gpt",
    ],
)
def test_a_bad_option_is_refused(query: str) -> None:
    with pytest.raises(ListenQueryError, match="Invalid"):
        parse(query)


def test_without_text_only_the_token_extension_is_served() -> None:
    with pytest.raises(ListenQueryError, match="--text"):
        parse("interim_results=true", text_available=False)
    options = parse("ichigo_tokens=true", text_available=False)
    assert options.ichigo_tokens and not options.start_options(None, text=False).text


def test_the_400_body_is_deepgrams() -> None:
    body = json.loads(bad_request_body("Invalid 'channels' value of '3'.", "rid"))
    assert body == {
        "err_code": "Bad Request",
        "err_msg": "Invalid 'channels' value of '3'.",
        "request_id": "rid",
    }


@pytest.mark.parametrize("kind", ["KeepAlive", "Finalize", "CloseStream", "Configure"])
def test_control_messages(kind: str) -> None:
    assert parse_control(json.dumps({"type": kind, "extra": 1})) == kind


@pytest.mark.parametrize(
    "text",
    ['{"type": "KeepAlive"', "[]", '"KeepAlive"', '{"type": "Keepalive"}', '{"type": 3}',
     "{}", "[" * 100_000],
)  # fmt: skip
def test_a_bad_control_message_is_a_bad_message(text: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_control(text)
    assert raised.value.code == "bad_message"


def test_results_json_is_deepgrams_shape() -> None:
    tokens = IchigoTokens(2, 1.0, 2.5, (7, 8), llm="<|sound_start|>")
    results = Results(
        1.0, 2.5, "Hello, world", is_final=True, speech_final=True, from_finalize=False,
        request_id="rid", model=MODEL, ichigo=tokens,
    )  # fmt: skip
    assert json.loads(results.to_json()) == {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.5,
        "start": 1.0,
        "is_final": True,
        "speech_final": True,
        "channel": {
            "alternatives": [
                {
                    "transcript": "Hello, world",
                    "confidence": 0.0,
                    "words": coarse_words("Hello, world", 1.0, 2.5),
                }
            ]
        },
        "metadata": {
            "request_id": "rid",
            "model_info": {"name": "m.pth", "version": "0123456789ab", "arch": "ichigo-whisper"},
            "model_uuid": "0000-uuid",
        },
        "from_finalize": False,
        "ichigo": {
            "segment": 2,
            "start": 1.0,
            "end": 2.5,
            "tokens": [7, 8],
            "llm": "<|sound_start|>",
        },
    }
    plain = json.loads(replace(results, ichigo=None).to_json())
    assert "ichigo" not in plain


def test_words_are_the_transcript_spread_evenly() -> None:
    assert coarse_words("Hello, world!", 1.0, 2.0) == [
        {"word": "hello", "start": 1.0, "end": 1.5, "confidence": 0.0, "punctuated_word": "Hello,"},
        {"word": "world", "start": 1.5, "end": 2.0, "confidence": 0.0, "punctuated_word": "world!"},
    ]
    assert coarse_words("  ", 0.0, 1.0) == []
    assert coarse_words("...", 0.0, 1.0)[0]["word"] == "..."


def test_the_other_server_messages() -> None:
    assert json.loads(SpeechStarted(1.25).to_json()) == {
        "type": "SpeechStarted", "channel": [0, 1], "timestamp": 1.25,
    }  # fmt: skip
    assert json.loads(UtteranceEnd(3.5).to_json()) == {
        "type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 3.5,
    }  # fmt: skip
    created = "2026-01-01T00:00:00.000Z"
    metadata = json.loads(Metadata("rid", "ab" * 32, created, 2.5, 1, MODEL).to_json())
    assert metadata == {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": "rid",
        "sha256": "ab" * 32,
        "created": "2026-01-01T00:00:00.000Z",
        "duration": 2.5,
        "channels": 1,
        "models": ["0000-uuid"],
        "model_info": {"0000-uuid": MODEL.info()},
    }
    error = json.loads(Error("bad_message", "no", message="{oops").to_json())
    assert error == {
        "type": "Error", "variant": "SchemaError", "description": "no", "code": "bad_message",
        "message": "{oops",
    }  # fmt: skip
    assert json.loads(Error("bad_audio", "odd").to_json())["variant"] == "DataError"
    assert json.loads(Error("internal", "x", segment=3).to_json())["segment"] == 3


@pytest.mark.parametrize("query", ["interim_results=maybe", "vad_events=2", "language=e"])
def test_a_bad_option_is_named_before_the_missing_text(query: str) -> None:
    with pytest.raises(ListenQueryError, match="Invalid"):
        parse(query, text_available=False)
