"""The server messages of /v1/listen (Deepgram's live API), as frozen dataclasses.

Each has to_json() in Deepgram's field layout (the official SDK parses them into its own
types); listen_session.ListenSession makes them from the v1 session's messages, and
docs/protocol.md ("Deepgram-style /v1/listen") maps every field.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ModelFields:
    """How the model is named in Results.metadata and Metadata (Deepgram's model_info)."""

    name: str
    version: str
    arch: str
    uuid: str

    def info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


class _Message:
    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class IchigoTokens:
    """The extension object on Results (ichigo_tokens=true): the v1 segment or partial."""

    segment: int
    start: float
    end: float
    tokens: tuple[int, ...]
    llm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "segment": self.segment,
            "start": self.start,
            "end": self.end,
            "tokens": list(self.tokens),
        }
        if self.llm is not None:
            out["llm"] = self.llm
        return out


@dataclass(frozen=True)
class Results(_Message):
    type: ClassVar[str] = "Results"
    start: float
    end: float
    transcript: str
    is_final: bool
    speech_final: bool
    from_finalize: bool
    request_id: str
    model: ModelFields
    ichigo: IchigoTokens | None = None

    def to_dict(self) -> dict[str, Any]:
        alternative = {
            "transcript": self.transcript,
            "confidence": 0.0,  # not computed: Whisper's decoding gives no calibrated score
            "words": coarse_words(self.transcript, self.start, self.end),
        }
        out: dict[str, Any] = {
            "type": self.type,
            "channel_index": [0, 1],  # one transcript of the (mixed) audio
            "duration": self.end - self.start,
            "start": self.start,
            "is_final": self.is_final,
            "speech_final": self.speech_final,
            "channel": {"alternatives": [alternative]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": self.model.info(),
                "model_uuid": self.model.uuid,
            },
            "from_finalize": self.from_finalize,
        }
        if self.ichigo is not None:
            out["ichigo"] = self.ichigo.to_dict()
        return out


def coarse_words(transcript: str, start: float, end: float) -> list[dict[str, Any]]:
    """Deepgram's words array, coarse: the transcript's words spread evenly over [start, end).
    Not alignments: Whisper's segment decoding gives no word times."""
    words = transcript.split()
    if not words:
        return []
    step = (end - start) / len(words)
    return [
        {
            "word": word.strip(string.punctuation).lower() or word,
            "start": start + i * step,
            "end": start + (i + 1) * step,
            "confidence": 0.0,
            "punctuated_word": word,
        }
        for i, word in enumerate(words)
    ]


@dataclass(frozen=True)
class SpeechStarted(_Message):
    type: ClassVar[str] = "SpeechStarted"
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "channel": [0, 1], "timestamp": self.timestamp}


@dataclass(frozen=True)
class UtteranceEnd(_Message):
    type: ClassVar[str] = "UtteranceEnd"
    last_word_end: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "channel": [0, 1], "last_word_end": self.last_word_end}


@dataclass(frozen=True)
class Metadata(_Message):
    """The summary after CloseStream (or a drain): the last message of a normal session."""

    type: ClassVar[str] = "Metadata"
    request_id: str
    sha256: str  # of the audio bytes received
    created: str  # ISO 8601, UTC: when the connection opened
    duration: float  # seconds of audio received
    channels: int
    model: ModelFields

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.sha256,
            "created": self.created,
            "duration": self.duration,
            "channels": self.channels,
            "models": [self.model.uuid],
            "model_info": {self.model.uuid: self.model.info()},
        }


# The `variant` of an Error message, by v1 error code (`code` carries the v1 code itself).
ERROR_VARIANTS = {
    "bad_message": "SchemaError",
    "bad_audio": "DataError",
    "unsupported": "DataError",
    "too_large": "DataError",
    "too_fast": "LimitError",
    "limit": "LimitError",
    "unauthorized": "AuthError",
    "internal": "InternalError",
}


@dataclass(frozen=True)
class Error(_Message):
    """An error: fatal (a close follows) unless `segment` is set (that segment failed)."""

    type: ClassVar[str] = "Error"
    code: str  # the v1 error code (errors.ErrorCode): the stable contract
    description: str  # for people
    message: str | None = None  # a SchemaError's offending text message (cut short)
    segment: int | None = None
    variant: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", ERROR_VARIANTS.get(self.code, "Error"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "variant": self.variant,
            "description": self.description,
            "code": self.code,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.segment is not None:
            out["segment"] = self.segment
        return out


@dataclass(frozen=True)
class ConfigureFailure(_Message):
    """The answer to Configure (mid-stream keyterms/formatting), which we do not support."""

    type: ClassVar[str] = "ConfigureFailure"
    request_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "request_id": self.request_id,
            "code": "CONFIGURE_NOT_SUPPORTED",
            "description": "this server has no keyterms or formatting features to configure",
        }
