"""Streaming protocol v1: its constants and the `start` message's options, validated.

No sockets, no clocks. The messages themselves (both directions, typed) are in messages.py,
which uses parse_start for the server's strict reading of `start`; the connection state
machine is in session.py; docs/protocol.md is the specification for client writers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .constants import SAMPLE_RATE, WINDOW_SECONDS
from .errors import ProtocolError, SegmentationError
from .languages import LANGUAGE_CODES
from .segmentation import VadOptions

PROTOCOL_VERSION = 1
STREAM_PATH = "/v1/stream"
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4}  # bytes per sample
CHANNELS = (1, 2)
LLM_FORMATS = ("ichigo", "ichigo-rle")
PARTIAL_INTERVAL_MS = (100, 10_000)
# Bounds that keep every derived sample count a finite, exact number: an offset up to ~31 years
# (offset * 16000 stays far below 2**53) and VAD durations up to 10 minutes (any longer
# silence setting already means "never by silence", since segments are capped at 30 s).
MAX_OFFSET_S = 1e9
MAX_VAD_MS = 600_000
# How much of a client's value an error message quotes: enough to recognise it, never an echo
# of a megabyte (docs/protocol.md, Errors).
QUOTE_CHARS = 40

Encoding = Literal["pcm_s16le", "pcm_f32le"]


@dataclass(frozen=True)
class StartOptions:
    """The client's `start` message: how its audio is encoded and what it wants back."""

    sample_rate: int = SAMPLE_RATE
    encoding: Encoding = "pcm_s16le"
    channels: int = 1
    partials: bool = False
    partial_interval_ms: int = 500
    text: bool = False
    language: str | None = None
    llm_format: str | None = None
    vad: VadOptions = field(default_factory=VadOptions)
    offset: float = 0.0  # seconds: where the session's timeline starts (resuming clients)

    @property
    def bytes_per_frame(self) -> int:
        return ENCODINGS[self.encoding] * self.channels

    @property
    def offset_samples(self) -> int:
        return round(self.offset * SAMPLE_RATE)


# The `vad` object's integer fields; max_segment_s is a number. VadOptions.cut_search_s is the
# segmenter's own setting, not part of the protocol.
VAD_INT_FIELDS = ("aggressiveness", "min_silence_ms", "tail_ms", "preroll_ms", "frame_ms")
VAD_FIELDS = (*VAD_INT_FIELDS, "max_segment_s")


def _typed(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
    where: str = "start",
) -> Any:
    """obj[key] if present and of `kind`; null is accepted only where the default is null."""
    value = obj.get(key, default)
    if value is None and default is None:
        return None
    # bool is an int in Python; a JSON true is never a valid number here.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ProtocolError(
            "bad_message", f"{where}.{key} must be {_kind_name(kind)}, got {quote(value)}"
        )
    return value


def quote(value: Any) -> str:
    """A client's value for an error message: its repr, at most QUOTE_CHARS characters of it."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        float: "a number",
        dict: "an object",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _vad_options(raw: Any, defaults: VadOptions) -> VadOptions:
    """start.vad over the server's defaults: a field left out (or no vad at all) takes its."""
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", "start.vad must be an object")
    values: dict[str, Any] = {}
    for key in VAD_INT_FIELDS:
        if key in raw:
            # The default is never null, so a null here is a bad_message, not a TypeError later.
            values[key] = _typed(raw, key, int, getattr(defaults, key), "start.vad")
            # Checked here, before VadOptions converts them: a huge int would overflow a float.
            if not 0 <= values[key] <= MAX_VAD_MS:
                raise ProtocolError("unsupported", f"start.vad.{key} must be in 0..{MAX_VAD_MS}")
    if "max_segment_s" in raw:
        max_s = _typed(raw, "max_segment_s", (int, float), defaults.max_segment_s, "start.vad")
        # `not` so that NaN fails too
        if not 0 < max_s <= WINDOW_SECONDS:
            raise ProtocolError(
                "unsupported", f"start.vad.max_segment_s must be in (0, {WINDOW_SECONDS}]"
            )
        values["max_segment_s"] = max_s
    try:
        return replace(defaults, **values)
    except SegmentationError as e:
        raise ProtocolError("unsupported", f"start.vad: {e}") from None


def parse_start(obj: dict[str, Any], vad_defaults: VadOptions | None = None) -> StartOptions:
    """Validate a decoded `start` object; unknown fields are ignored (forward compatibility).

    vad_defaults: the server's VAD settings for a start without a vad object, and for the
    fields its vad object leaves out (default: VadOptions()).
    """
    rate = _typed(obj, "sample_rate", int, SAMPLE_RATE)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            "unsupported",
            f"sample_rate {rate} unsupported: expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}",
        )
    encoding = _typed(obj, "encoding", str, "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError(
            "unsupported",
            f"encoding {quote(encoding)} unsupported: expected one of {list(ENCODINGS)}",
        )
    channels = _typed(obj, "channels", int, 1)
    if channels not in CHANNELS:
        raise ProtocolError("unsupported", f"channels {channels} unsupported: expected 1 or 2")
    interval = _typed(obj, "partial_interval_ms", int, 500)
    lo, hi = PARTIAL_INTERVAL_MS
    if not lo <= interval <= hi:
        raise ProtocolError("unsupported", f"partial_interval_ms must be in {lo}..{hi}")
    llm_format = _typed(obj, "llm_format", str, None)
    if llm_format is not None and llm_format not in LLM_FORMATS:
        raise ProtocolError(
            "unsupported",
            f"llm_format {quote(llm_format)} unsupported: expected null or {LLM_FORMATS}",
        )
    language = _typed(obj, "language", str, None)
    if language is not None and language not in LANGUAGE_CODES:
        # Checked here, not by Whisper per segment: an unknown value would come back in an
        # error for every segment, and a client could make it as long as a message.
        raise ProtocolError(
            "unsupported", f"language {quote(language)} unsupported: expected a Whisper code"
        )
    offset = _typed(obj, "offset", (int, float), 0.0)
    # A chained comparison, not math.isfinite: that raises on a huge JSON integer, and NaN
    # (which Python's json accepts) fails it as it should.
    if not 0 <= offset <= MAX_OFFSET_S:
        raise ProtocolError("bad_message", f"start.offset must be a number in 0..{MAX_OFFSET_S:g}")
    return StartOptions(
        sample_rate=rate,
        encoding=encoding,
        channels=channels,
        partials=_typed(obj, "partials", bool, False),
        partial_interval_ms=interval,
        text=_typed(obj, "text", bool, False),
        language=language,
        llm_format=llm_format,
        vad=_vad_options(obj.get("vad"), vad_defaults or VadOptions()),
        offset=float(offset),
    )


def seconds(samples: int) -> float:
    """A timeline position in seconds: whole samples at 16 kHz."""
    return samples / SAMPLE_RATE
