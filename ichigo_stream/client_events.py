"""What the streaming client reports about its connections, as typed, frozen events.

The stream yields these alongside the server's messages (ichigo_stream.events), in order:

    Connecting(url, attempt=1)
    Connected(ready, connection=0, offset=0.0)
    ... the server's messages ...
    Reconnecting(attempt=1, delay_s=0.0, reason="connection lost")   # the connection is lost
    Connecting(url, attempt=1)
    Connected(ready, connection=1, offset=3.39)                      # resumed at 3.39 s
    ... the server's messages, then Done (totals over all connections) ...

or, when the reconnect policy gives up, GaveUp(reason) and then ConnectionLost is raised.
A user interface renders these; nothing needs to read the client's log lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .messages import Ready, ServerMessage


@dataclass(frozen=True)
class Connecting:
    """An attempt to open a connection begins (the handshake, start, and the server's ready).

    attempt: 1 for the first attempt since the stream began or last made progress (a
    segment, or a connection that stayed up), then 2, 3, ... while attempts keep failing."""

    type: ClassVar[str] = "connecting"
    url: str
    attempt: int


@dataclass(frozen=True)
class Connected:
    """A connection's session started: the server's ready, which connection of the stream
    this is (0 first, then 1, 2, ... after reconnects), and the timeline position (seconds)
    its audio starts at: where a reconnect resumes."""

    type: ClassVar[str] = "connected"
    ready: Ready
    connection: int
    offset: float

    @property
    def resumed(self) -> bool:
        """This connection resumes the stream after a lost one."""
        return self.connection > 0


@dataclass(frozen=True)
class Reconnecting:
    """The last connection (or attempt) ended before the stream did: the next attempt, its
    number as in Connecting, comes after delay_s (0 after a connection that made progress:
    it resumes at once). reason is for people, not for parsing."""

    type: ClassVar[str] = "reconnecting"
    attempt: int
    delay_s: float
    reason: str


@dataclass(frozen=True)
class GaveUp:
    """The reconnect policy gave up (or forbids reconnecting): ConnectionLost follows."""

    type: ClassVar[str] = "gave_up"
    reason: str


ConnectionEvent = Connecting | Connected | Reconnecting | GaveUp
StreamEvent = ServerMessage | ConnectionEvent  # everything ichigo_stream.client.stream() yields


def event_record(event: StreamEvent) -> dict[str, Any]:
    """Anything the stream yields as a JSON-ready dict, "type" first: the server's messages
    under the server's names, connection events under theirs (with the server's ready inside
    `connected`). One line each is the JSONL of `send -o` and `mic --save`."""
    if isinstance(event, Connected):
        return {
            "type": event.type,
            "connection": event.connection,
            "offset": event.offset,
            "ready": event.ready.to_dict(),
        }
    if isinstance(event, Connecting | Reconnecting | GaveUp):
        return {"type": event.type, **asdict(event)}
    return event.to_dict()
