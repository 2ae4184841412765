"""What session machines and the I/O layer exchange: model jobs, their results, and the
actions a session step returns (send, submit, cancel, close, count).

A session machine (ServerSession for v1, the adapters for OpenAI Realtime and Deepgram) is
fed messages, model results and the time, and answers with actions; server/app.py carries
them out. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from .errors import ProtocolError
from .messages import ServerMessage

_job_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Job:
    """Model work: the tokens (and maybe text) of [start, end) of one session's audio."""

    session: str
    segment: int
    kind: Literal["final", "partial"]
    start: int  # samples on the session's 16 kHz timeline, offset excluded
    end: int
    audio: np.ndarray
    text: bool = False
    language: str | None = None
    # Whisper text tokens the text decoding must start with: the segment's agreed caption.
    text_prefix: tuple[int, ...] = ()
    id: int = field(default_factory=lambda: next(_job_ids))


@dataclass(frozen=True)
class JobResult:
    tokens: list[int] | None = None
    text: str | None = None
    error: str | None = None
    # With text: the decoding's Whisper text tokens (the job's text_prefix first) and the
    # UTF-8 bytes of each, what the session's LocalAgreement works on.
    text_tokens: tuple[int, ...] | None = None
    text_pieces: tuple[bytes, ...] | None = None


class WireMessage(Protocol):
    """What a Send carries: a v1 message, or an event of another protocol an adapter speaks."""

    def to_json(self) -> str: ...


@dataclass(frozen=True)
class Send:
    message: ServerMessage | WireMessage


@dataclass(frozen=True)
class Submit:
    job: Job


@dataclass(frozen=True)
class Cancel:
    job: Job


@dataclass(frozen=True)
class Close:
    code: int
    reason: str = ""


@dataclass(frozen=True)
class Count:
    """A v1 message an adapter rendered in its own protocol's events: counted in /metrics as
    if it had been sent (segments, partials, errors, endpoint latency), never sent itself."""

    message: ServerMessage


Action = Send | Submit | Cancel | Close | Count


class SessionMachine(Protocol):
    """What the I/O layer drives for one WebSocket connection, whatever protocol it speaks:
    ServerSession (v1) and the adapters for other protocols over it."""

    id: str

    def opened(self, now: float) -> list[Action]: ...
    def receive(self, data: str | bytes, now: float) -> list[Action]: ...
    def job_done(self, job: Job, result: JobResult, now: float) -> list[Action]: ...
    def check_timeouts(self, now: float) -> list[Action]: ...
    def shutdown(self, now: float) -> list[Action]: ...
    def fail(self, error: ProtocolError) -> list[Action]: ...
    def connection_lost(self, now: float) -> list[Action]: ...

    @property
    def audio_seconds(self) -> float: ...
