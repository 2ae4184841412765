"""The server's messages of protocol v1 as typed, frozen events (what clients consume)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .errors import ClientError
from .tokens import TokenFormat, format_tokens, to_ichigo, to_ichigo_rle


@dataclass(frozen=True)
class Ready:
    """A connection's session started. Again after every reconnect, with offset = resume point."""

    type: ClassVar[str] = "ready"
    protocol: int
    session: str
    model: Mapping[str, Any] = field(hash=False)
    sample_rate: int
    offset: float = 0.0  # seconds: where this connection's audio starts on the timeline
    connection: int = 0  # 0 for the first connection, then 1, 2, ... after reconnects


@dataclass(frozen=True)
class SpeechStart:
    type: ClassVar[str] = "speech_start"
    segment: int
    start: float


@dataclass(frozen=True)
class Partial:
    type: ClassVar[str] = "partial"
    segment: int
    start: float
    end: float
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    """A final segment: tokens of [start, end) seconds of the timeline."""

    type: ClassVar[str] = "segment"
    segment: int
    start: float
    end: float
    tokens: tuple[int, ...]
    text: str | None = None
    llm: str | None = None  # the server's rendering, when start asked for llm_format
    endpoint_ms: float | None = None

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


@dataclass(frozen=True)
class ErrorEvent:
    """An error the stream survives: one segment failed (segment set), or the server hit a
    transient failure (limit, internal) that ended the connection; the client reconnects."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    segment: int | None = None


@dataclass(frozen=True)
class Done:
    """The stream is finished: totals over all connections."""

    type: ClassVar[str] = "done"
    segments: int
    audio_seconds: float
    reconnects: int = 0


Event = Ready | SpeechStart | Partial | Segment | ErrorEvent | Done


def parse_event(message: str | Mapping[str, Any]) -> Event | None:
    """A server message (JSON text or decoded) -> its event; None for a type this client does
    not know (newer servers may add some); ClientError if a known type is malformed."""
    try:
        obj = json.loads(message) if isinstance(message, str) else message
    except ValueError:
        raise ClientError(f"the server sent a message that is not JSON: {message!r:.200}") from None
    if not isinstance(obj, Mapping):
        raise ClientError(f"the server sent a message that is not an object: {message!r:.200}")
    kind = obj.get("type")
    try:
        if kind == "ready":
            return Ready(
                int(obj["protocol"]), str(obj["session"]), obj["model"], int(obj["sample_rate"])
            )
        if kind == "speech_start":
            return SpeechStart(int(obj["segment"]), float(obj["start"]))
        if kind == "partial":
            return Partial(
                int(obj["segment"]),
                float(obj["start"]),
                float(obj["end"]),
                tuple(int(t) for t in obj["tokens"]),
            )
        if kind == "segment":
            return Segment(
                int(obj["segment"]),
                float(obj["start"]),
                float(obj["end"]),
                tuple(int(t) for t in obj["tokens"]),
                obj.get("text"),
                obj.get("llm"),
                obj.get("endpoint_ms"),
            )
        if kind == "error":
            segment = obj.get("segment")
            return ErrorEvent(
                str(obj["code"]), str(obj["message"]), None if segment is None else int(segment)
            )
        if kind == "done":
            return Done(int(obj["segments"]), float(obj["audio_seconds"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ClientError(f"malformed {kind} message from the server: {e!r}") from None
    return None


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as a JSON-ready dict, "type" first (the server's field names)."""
    return {"type": event.type, **asdict(event)}


def segments_to_llm(segments: Sequence[Segment], fmt: TokenFormat = "ichigo") -> str:
    """Several segments as one Ichigo text: each segment's block, separated by a space (the
    offline `tokenize --format ichigo` layout)."""
    return " ".join(s.to_llm(fmt) for s in segments)
