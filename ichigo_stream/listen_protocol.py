"""The Deepgram-style /v1/listen protocol: its query options and control messages.

No sockets, no clocks. A Deepgram live client configures the stream in the URL's query
(`?encoding=linear16&sample_rate=16000&interim_results=true...`), sends binary audio and the
JSON control messages KeepAlive, Finalize and CloseStream, and reads Results, SpeechStarted,
UtteranceEnd and Metadata. This module validates the query (a bad one is refused with HTTP
400 before the upgrade, as Deepgram does) and reads control messages; listen_messages writes
the server messages, and listen_session.ListenSession maps the stream onto a v1
ServerSession. docs/protocol.md ("Deepgram-style /v1/listen") is the specification.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import parse_qs

from .errors import ProtocolError
from .protocol import (
    CHANNELS,
    LLM_FORMATS,
    MAX_SAMPLE_RATE,
    MAX_VAD_MS,
    MIN_SAMPLE_RATE,
    StartOptions,
)
from .segmentation import VadOptions

LISTEN_PATH = "/v1/listen"
# Browsers cannot set headers: they offer ["token", <key>] as subprotocols, and the server
# must answer with "token" or the browser drops the connection.
LISTEN_SUBPROTOCOL = "token"
# The one encoding we take: Deepgram's name for 16-bit signed little-endian PCM.
LINEAR16 = "linear16"
# Deepgram refuses an utterance_end_ms below a second (its interim results come about once
# a second, so a shorter gap could never be seen); we refuse the same values.
MIN_UTTERANCE_END_MS = 1000


class ListenQueryError(ValueError):
    """A query option we cannot honour: refused with HTTP 400 before the upgrade."""


@dataclass(frozen=True)
class ListenOptions:
    """The query of one /v1/listen connection, validated."""

    sample_rate: int = 16_000
    channels: int = 1
    interim_results: bool = False
    endpointing: bool = True  # false: segments end only by Finalize, CloseStream or the cap
    endpointing_ms: int | None = None  # None: the server's VAD min_silence_ms
    utterance_end_ms: int | None = None
    vad_events: bool = False
    language: str | None = None  # Whisper's code ("en" for en-US); None: detected
    model: str | None = None  # reported back, never chosen: the server runs one model
    ichigo_tokens: bool = False  # the extension: Results carry an `ichigo` object
    ichigo_llm_format: str | None = None  # ... whose final ones carry `llm` in this format

    def start_options(self, vad_defaults: VadOptions | None, text: bool) -> StartOptions:
        """The v1 start that serves this query (text: the server runs with --text)."""
        vad = vad_defaults or VadOptions()
        if not self.endpointing:
            # The longest silence setting v1 takes, far beyond the 30 s cap: never by silence.
            vad = replace(vad, min_silence_ms=MAX_VAD_MS)
        elif self.endpointing_ms is not None:
            # The segmenter needs min_silence_ms > tail_ms; a frame more keeps one frame of
            # silence between the tail and the decision. Deepgram's 10 ms default lands here.
            vad = replace(vad, min_silence_ms=max(self.endpointing_ms, vad.tail_ms + vad.frame_ms))
        return StartOptions(
            sample_rate=self.sample_rate,
            encoding="pcm_s16le",
            channels=self.channels,
            partials=self.interim_results,
            text=text,
            language=self.language,
            llm_format=self.ichigo_llm_format if self.ichigo_tokens else None,
            vad=vad,
        )


def parse_listen_query(query: str, *, text_available: bool) -> ListenOptions:
    """The URL query -> ListenOptions, or ListenQueryError (Deepgram's wording where it has
    one: "Invalid 'name' value of 'value'.").

    Unknown options are ignored as Deepgram's own are (a newer client may send more).
    text_available: the server runs with --text; without it only ichigo_tokens=true makes
    sense (Results would carry no transcript), so anything else is refused.
    """
    try:
        raw = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    except ValueError as e:  # e.g. more fields than parse_qs allows
        raise ListenQueryError(f"Invalid query: {e}.") from None
    encoding = raw.get("encoding", LINEAR16)
    if encoding != LINEAR16:
        raise ListenQueryError(
            f"Invalid 'encoding' value of {encoding!r}: this server takes raw 'linear16' only."
        )
    sample_rate = _int(raw, "sample_rate", 16_000)
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ListenQueryError(
            f"Invalid 'sample_rate' value of '{sample_rate}': "
            f"expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}."
        )
    channels = _int(raw, "channels", 1)
    if channels not in CHANNELS:
        raise ListenQueryError(f"Invalid 'channels' value of '{channels}': expected 1 or 2.")
    if _bool(raw, "multichannel", False):
        raise ListenQueryError(
            "Invalid 'multichannel' value of 'true': channels are mixed into one transcript."
        )
    endpointing, endpointing_ms = True, None
    if "endpointing" in raw:
        value = raw["endpointing"].lower()
        if value in ("true", "false"):
            endpointing = value == "true"
        else:
            endpointing_ms = _int(raw, "endpointing", 0)
            if not 0 <= endpointing_ms <= MAX_VAD_MS:
                raise _invalid("endpointing", raw["endpointing"])
    utterance_end_ms = None
    if "utterance_end_ms" in raw:
        utterance_end_ms = _int(raw, "utterance_end_ms", 0)
        if not MIN_UTTERANCE_END_MS <= utterance_end_ms <= MAX_VAD_MS:
            raise _invalid("utterance_end_ms", raw["utterance_end_ms"])
    interim_results = _bool(raw, "interim_results", False)
    vad_events = _bool(raw, "vad_events", False)
    language = _language(raw.get("language"))
    ichigo_tokens = _bool(raw, "ichigo_tokens", False)
    llm_format = raw.get("ichigo_llm_format") or None
    if llm_format is not None and llm_format not in LLM_FORMATS:
        raise _invalid("ichigo_llm_format", llm_format)
    # Last: a query with a bad option hears about that option first.
    if not text_available and not ichigo_tokens:
        raise ListenQueryError(
            "This server runs without --text, so Results would carry no transcript: "
            "ask for the sound tokens with ichigo_tokens=true."
        )
    return ListenOptions(
        sample_rate=sample_rate,
        channels=channels,
        interim_results=interim_results,
        endpointing=endpointing,
        endpointing_ms=endpointing_ms,
        utterance_end_ms=utterance_end_ms,
        vad_events=vad_events,
        language=language,
        model=raw.get("model") or None,
        ichigo_tokens=ichigo_tokens,
        ichigo_llm_format=llm_format,
    )


def _invalid(name: str, value: str) -> ListenQueryError:
    return ListenQueryError(f"Invalid {name!r} value of {value[:100]!r}.")


def _int(raw: dict[str, str], name: str, default: int) -> int:
    if name not in raw:
        return default
    value = raw[name]
    # Digits only: int() would also take " 8", "+8" and "8_000".
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise _invalid(name, value)
    return int(value)


def _bool(raw: dict[str, str], name: str, default: bool) -> bool:
    if name not in raw:
        return default
    value = raw[name].lower()
    if value not in ("true", "false"):
        raise _invalid(name, raw[name])
    return value == "true"


_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


def _language(tag: str | None) -> str | None:
    """A BCP-47 tag (en, en-US, pt-BR) -> Whisper's code, its primary subtag; multi (and
    none) -> None, which lets Whisper detect the language."""
    if not tag or tag.lower() == "multi":
        return None
    if not _LANGUAGE.fullmatch(tag):
        raise _invalid("language", tag)
    return tag.split("-")[0].lower()


def bad_request_body(message: str, request_id: str) -> str:
    """Deepgram's error body for a refused request (HTTP 400)."""
    return json.dumps({"err_code": "Bad Request", "err_msg": message, "request_id": request_id})


# -- client -> server control messages -------------------------------------------------------

ControlType = Literal["KeepAlive", "Finalize", "CloseStream", "Configure"]
CONTROL_TYPES: tuple[ControlType, ...] = ("KeepAlive", "Finalize", "CloseStream", "Configure")


def parse_control(text: str) -> ControlType:
    """A text message -> its control type, or ProtocolError("bad_message")."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_message", "text messages must be JSON objects") from None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind not in CONTROL_TYPES:
        raise ProtocolError(
            "bad_message",
            f"unknown control message {kind!r:.60}: expected one of {list(CONTROL_TYPES)}",
        )
    return kind
