"""Every message of streaming protocol v1, both directions, as frozen dataclasses.

The one home of the wire schema: each message has to_json() (compact JSON, NaN refused) and
is read back by one dispatch per direction. parse_client_message is the server's strict
reading of what a client sends (ProtocolError, with the codes docs/protocol.md lists);
parse_server_message is a client's reading of what a server sends: strict about the JSON type
of every field it knows, blind to fields and message types it does not (newer servers may add
them). server/static/protocol.js mirrors this schema for the page;
tests/unit/test_protocol_js.py checks that the two agree, field by field.

Server messages are read and written by one codec driven by the dataclasses' own type hints,
so a field exists on the wire exactly when it exists here. Times are seconds on the session's
16 kHz timeline (samples / 16000).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from types import NoneType, UnionType
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from .errors import ClientError, ProtocolError
from .model_info import ModelInfo
from .protocol import (
    CHANNELS,
    ENCODINGS,
    LLM_FORMATS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    VAD_FIELDS,
    StartOptions,
    parse_start,
    quote,
)
from .segmentation import VadOptions
from .tokens import TokenFormat, format_tokens, to_ichigo, to_ichigo_rle

# A float field whose metadata holds this key is written as JSON null when it equals the
# value (JSON has no infinity: `max_realtime` inf, i.e. no limit, goes out as null).
NULL_MEANS = "null_means"


def _to_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# -- client -> server ------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The first message: the audio layout and what the client wants back."""

    type: ClassVar[str] = "start"
    options: StartOptions = field(default_factory=StartOptions)

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults included: the server then never has to guess ours."""
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self.options):
            out[f.name] = getattr(self.options, f.name)
        out["vad"] = {name: getattr(self.options.vad, name) for name in VAD_FIELDS}
        return out

    def to_json(self) -> str:
        return _to_json(self.to_dict())


@dataclass(frozen=True)
class Flush:
    """End the open segment now."""

    type: ClassVar[str] = "flush"

    def to_json(self) -> str:
        return _to_json({"type": self.type})


@dataclass(frozen=True)
class Stop:
    """No more audio: finish the segments, send done, close."""

    type: ClassVar[str] = "stop"

    def to_json(self) -> str:
        return _to_json({"type": self.type})


@dataclass(frozen=True)
class Audio:
    """A binary message: PCM in the start message's layout (never JSON)."""

    data: bytes


ClientMessage = Start | Flush | Stop | Audio


def parse_client_message(
    data: str | bytes, *, vad_defaults: VadOptions | None = None
) -> ClientMessage:
    """One WebSocket message from a client -> a typed message, or ProtocolError.

    vad_defaults: the server's VAD settings where a start leaves them out (parse_start).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return Audio(bytes(data))
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ProtocolError("bad_message", f"text messages must be JSON objects: {e}") from None
    except RecursionError:
        # Deeply nested arrays fit in any message size limit and exhaust the parser's stack.
        raise ProtocolError("bad_message", "text message nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(
            "bad_message", 'text messages must be JSON objects with a "type" string'
        )
    kind = obj["type"]
    if kind == Start.type:
        return Start(parse_start(obj, vad_defaults))
    if kind == Flush.type:
        return Flush()
    if kind == Stop.type:
        return Stop()
    raise ProtocolError(
        "bad_message", f"unknown message type {quote(kind)}: expected start, flush or stop"
    )


# -- what ready tells about the server -------------------------------------------------------


def _no_limit_as_null(default: float) -> Any:
    """A limit that may be infinite (no limit): JSON has no infinity, so it goes out as null."""
    return field(default=default, metadata={NULL_MEANS: math.inf})


@dataclass(frozen=True)
class SessionLimits:
    """The limits a session must stay within (server options; see Limits in the protocol)."""

    max_message_bytes: int = 1 << 20
    # audio may arrive at most this many times faster than real time ...
    max_realtime: float = _no_limit_as_null(10.0)
    realtime_burst_s: float = _no_limit_as_null(30.0)  # ... after this much, at any speed
    max_session_s: float = _no_limit_as_null(4 * 3600.0)
    idle_timeout_s: float = _no_limit_as_null(60.0)
    max_pending_segments: int = 32  # closed segments waiting for the model
    # Encoder windows (one per final job, whatever its length) a session may cost per second
    # of its audio, after a burst of this many: see "Cost" in docs/protocol.md.
    max_windows_per_s: float = _no_limit_as_null(3.0)
    windows_burst: float = _no_limit_as_null(30.0)
    # Messages of any kind a second, with a burst of one second's worth; an empty binary
    # message counts as EMPTY_MESSAGE_COST of them (message_rate.py). 500: 10 ms chunks at 4x real
    # time plus control messages, and 20 times below a flood of tiny messages.
    max_messages_per_s: float = _no_limit_as_null(500.0)


@dataclass(frozen=True)
class Capabilities:
    """What this server can do and the limits a client must respect: sent in `ready`."""

    text: bool = False  # started with --text: `"text": true` is accepted
    partials: bool = True
    min_sample_rate: int = MIN_SAMPLE_RATE
    max_sample_rate: int = MAX_SAMPLE_RATE
    channels: tuple[int, ...] = CHANNELS
    encodings: tuple[str, ...] = tuple(ENCODINGS)
    llm_formats: tuple[str, ...] = LLM_FORMATS
    limits: SessionLimits = field(default_factory=SessionLimits)


# -- server -> client ------------------------------------------------------------------------


class _ServerMessage:
    """to_dict/to_json of a server message, from its dataclass fields ("type" first).

    A field whose value is None is left out: optional fields (typed X | None) are absent,
    never null; every other field is always there."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **_encode_fields(self)}

    def to_json(self) -> str:
        return _to_json(self.to_dict())


@dataclass(frozen=True)
class Ready(_ServerMessage):
    """The answer to a valid start: which model makes the tokens, what the server can do."""

    type: ClassVar[str] = "ready"
    protocol: int
    session: str  # 16 hex characters, for logs
    model: ModelInfo
    sample_rate: int  # of the timeline all times refer to: always 16000
    capabilities: Capabilities


@dataclass(frozen=True)
class SpeechStart(_ServerMessage):
    type: ClassVar[str] = "speech_start"
    segment: int
    start: float


@dataclass(frozen=True)
class Partial(_ServerMessage):
    type: ClassVar[str] = "partial"
    segment: int
    start: float
    end: float
    tokens: tuple[int, ...]
    # With "text": true: the segment's caption so far, which only ever grows (a later
    # partial's text, and the segment's final text, start with it).
    text: str | None = None


@dataclass(frozen=True)
class Segment(_ServerMessage):
    """A final segment: tokens of [start, end) seconds of the timeline."""

    type: ClassVar[str] = "segment"
    segment: int
    start: float
    end: float
    tokens: tuple[int, ...]
    text: str | None = None  # with "text": true, unless text decoding failed
    llm: str | None = None  # the server's rendering, when start asked for llm_format
    # The server's time from the endpoint decision to sending, ms (keyword: it follows the
    # optional fields on the wire, as documented).
    endpoint_ms: float = field(kw_only=True)

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_ichigo(self) -> str:
        """<|sound_start|><|sound_NNNN|>...<|sound_end|> (Ichigo-llama3.1 v0.3/v0.4)."""
        return to_ichigo(self.tokens)

    def to_ichigo_rle(self) -> str:
        """As to_ichigo, runs as <|duration_KK|><|sound_NNNN|> (Ichigo v0.5)."""
        return to_ichigo_rle(self.tokens)

    def to_llm(self, fmt: TokenFormat = "ichigo") -> str:
        text = format_tokens(self.tokens, fmt)
        return text if isinstance(text, str) else " ".join(map(str, text))


def segments_to_llm(segments: Sequence[Segment], fmt: TokenFormat = "ichigo") -> str:
    """Several segments as one Ichigo text: each segment's block, separated by a space (the
    offline `tokenize --format ichigo` layout)."""
    return " ".join(s.to_llm(fmt) for s in segments)


@dataclass(frozen=True)
class ErrorMessage(_ServerMessage):
    """With segment: that segment failed, the session goes on. Without: fatal, close follows."""

    type: ClassVar[str] = "error"
    code: str  # one of errors.ErrorCode (a client must expect codes it does not know)
    message: str  # for people
    segment: int | None = None
    # With a refusal for load (limit, close 1013): wait at least this long before retrying.
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class Done(_ServerMessage):
    """The last message of a normal session: segment messages sent, audio received (s)."""

    type: ClassVar[str] = "done"
    segments: int
    audio_seconds: float


ServerMessage = Ready | SpeechStart | Partial | Segment | ErrorMessage | Done
SERVER_MESSAGES: dict[str, type[ServerMessage]] = {
    cls.type: cls for cls in (Ready, SpeechStart, Partial, Segment, ErrorMessage, Done)
}


def parse_server_message(message: str | Mapping[str, Any]) -> ServerMessage | None:
    """A server message (JSON text or decoded) -> its dataclass; None for a type this client
    does not know; ClientError if it is not a JSON object, or a known type is malformed."""
    try:
        obj = json.loads(message) if isinstance(message, str) else message
    except (ValueError, RecursionError):
        raise ClientError(f"the server sent a message that is not JSON: {message!r:.200}") from None
    if not isinstance(obj, Mapping):
        raise ClientError(f"the server sent a message that is not an object: {message!r:.200}")
    kind = obj.get("type")
    cls = SERVER_MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    try:
        return _decode_dataclass(cls, obj, cls.type)
    except _Malformed as e:
        raise ClientError(f"malformed {cls.type} message from the server: {e}") from None


# -- the codec: JSON <-> dataclass fields, by type hint ----------------------------------------


class _Malformed(Exception):
    pass


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _encode_fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if NULL_MEANS in f.metadata and value == f.metadata[NULL_MEANS]:
            value = None
        elif is_dataclass(value):
            value = _encode_fields(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _decode_dataclass(cls: type, obj: Any, where: str) -> Any:
    """A JSON object -> cls. A field that may be None is optional on the wire (absent or null:
    None); every other field must be there, whatever its Python default."""
    if not isinstance(obj, Mapping):
        raise _Malformed(f"{where} must be an object, got {_show(obj)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = obj.get(f.name)
        if value is None and _optional(hints[f.name]):
            continue  # the dataclass default: None
        if f.name not in obj:
            raise _Malformed(f"{where}.{f.name} is missing")
        if value is None and NULL_MEANS in f.metadata:
            values[f.name] = f.metadata[NULL_MEANS]
        else:
            values[f.name] = _decode(hints[f.name], value, f"{where}.{f.name}")
    return cls(**values)


def _optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, UnionType) and NoneType in get_args(hint)


def _decode(hint: Any, value: Any, where: str) -> Any:
    if _optional(hint):  # X | None: the only unions in the schema
        (hint,) = [a for a in get_args(hint) if a is not NoneType]
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple:  # tuple[X, ...]: a JSON array
        if not isinstance(value, list):
            raise _Malformed(f"{where} must be an array, got {_show(value)}")
        return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if is_dataclass(hint):
        return _decode_dataclass(hint, value, where)
    # bool is an int in Python; a JSON true is never a number here, nor 1 a boolean.
    ok = (
        (hint is bool and isinstance(value, bool))
        or (hint is int and isinstance(value, int) and not isinstance(value, bool))
        or (hint is str and isinstance(value, str))
        or (hint is float and _finite_number(value))
    )
    if not ok:
        raise _Malformed(f"{where} must be {_JSON_NAMES[hint]}, got {_show(value)}")
    return float(value) if hint is float else value


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


_JSON_NAMES = {bool: "a boolean", int: "an integer", str: "a string", float: "a finite number"}


def _show(value: Any) -> str:
    return f"{value!r:.60}"
