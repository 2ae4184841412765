"""One client audio stream over as many connections as it takes, as a sans-I/O state machine.

The I/O layer (ichigo_stream.client) feeds it what happens, with the current time: audio
from the source, a connection attempt, the server's messages, a failed or lost connection.
It answers with what to yield to the caller (the server's messages renumbered onto one
timeline, and connection events), what to send next (SendAudio, SendFlush, SendStop, or
Throttle / AwaitAudio), and, when the stream cannot go on, `error` to raise. It owns the
protocol rules of reconnecting: the resend buffer and resume offsets, segment renumbering,
duplicate suppression, when a `done` ends the stream, which errors are fatal, and the
reconnect policy's bookkeeping. Nothing here touches a socket, a task or a clock.

    idle -> connecting -> streaming -> finished            (done covered all the audio)
               |  ^           |  \\-> closing (a draining server's done) -> lost
               v  |           v
          (failed attempt / lost) -> idle again after Reconnecting, or failed after GaveUp
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from ssl import SSLContext
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from .client_events import (
    Connected,
    Connecting,
    ConnectionEvent,
    GaveUp,
    Reconnecting,
    StreamEvent,
)
from .constants import SAMPLE_RATE
from .errors import AuthenticationError, ClientError, ConnectionLost, RemoteError
from .messages import Done, ErrorMessage, Partial, Ready, Segment, ServerMessage, SpeechStart
from .protocol import STREAM_PATH, StartOptions
from .resend_buffer import ResendBuffer

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
# Errors that a new connection would only get again: the request itself is wrong.
FATAL_CODES = frozenset(
    {"bad_message", "bad_audio", "unsupported", "too_large", "too_fast", "unauthorized"}
)
AUTH_STATUSES = frozenset({401, 403})
# Handshake refusals worth retrying: the server is there but busy, starting or restarting.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A stream at another rate is resampled by the server, whose count of the audio it received
# may then differ from ours by a sample or so.
RESAMPLED_SLACK_S = 0.005


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter. A failed attempt is a connection that could not be
    opened, or one that was lost before it delivered anything (a segment, or staying up for
    stable_s): those count against max_attempts and max_total_s; progress resets both."""

    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5  # each delay is scaled by uniform(1 - jitter, 1): clients spread out
    max_attempts: int | None = 20  # consecutive failed attempts; None: no limit
    max_total_s: float | None = 300.0  # since the last progress; None: no limit
    stable_s: float = 5.0
    retry_initial: bool = False  # retry the very first connection too (else fail at once)

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** max(0, failures))
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class ClientOptions:
    """Where to connect, what to ask for in `start`, and how to survive a lost connection.

    ClientSession reads the protocol's fields; the asyncio driver the transport's (token,
    ssl, timeouts, proxy)."""

    url: str = DEFAULT_URL
    token: str | None = None  # sent as "Authorization: Bearer TOKEN"
    # wss:// only. None or True: verify against the system CAs; False: do not verify (testing
    # with self-signed certificates); a context: used as given.
    ssl: SSLContext | bool | None = None
    # The start message's fields; its offset is where the first session's timeline starts.
    start: StartOptions = field(default_factory=StartOptions)
    # None: a lost connection ends the stream with ConnectionLost.
    reconnect: ReconnectPolicy | None = field(default_factory=ReconnectPolicy)
    # Audio kept after the resume point: a segment is at most 30 s, plus its preroll and the
    # time a segment takes to come back.
    resend_limit_s: float = 35.0
    # Never send faster than this after the first burst_s of a connection: the server refuses
    # audio over its --max-realtime (default 10x after 30 s). None: no limit.
    max_realtime: float | None = 8.0
    burst_s: float = 20.0
    max_message_s: float = 0.5  # longer chunks go out as several messages
    open_timeout_s: float = 10.0  # the handshake, and then the ready message
    close_timeout_s: float = 2.0  # waiting for the server's close frame when we close
    proxy: str | Literal[True] | None = True  # websockets' default: from the environment


def remote_error(message: ErrorMessage) -> RemoteError | None:
    """The error to end the stream with for a server's `error` without a segment, or None
    when a new connection may not get it again (a limit, the server overloaded or failing)."""
    if message.code == "unauthorized":
        return AuthenticationError(message.code, message.message)
    if message.code in FATAL_CODES:
        return RemoteError(message.code, message.message)
    return None


# -- what to send ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendAudio:
    data: bytes  # in the start message's encoding, whole frames


@dataclass(frozen=True)
class SendFlush:
    pass


@dataclass(frozen=True)
class SendStop:
    pass


@dataclass(frozen=True)
class Throttle:
    """Ask again after delay_s: the next audio would go out faster than max_realtime."""

    delay_s: float


@dataclass(frozen=True)
class AwaitAudio:
    """Everything buffered is sent: feed more from the source (audio, flush or end_audio)."""


SendAction = SendAudio | SendFlush | SendStop | Throttle | AwaitAudio
AWAIT_AUDIO: Final = AwaitAudio()

State = Literal["idle", "connecting", "streaming", "closing", "finished", "failed"]


@dataclass
class _Link:
    """What one connection has sent and learned."""

    index_base: int  # the stream's index of this server session's segment 0
    offset: float  # the session's timeline start
    opened_at: float
    sent: int  # absolute byte position in the resend buffer
    flushed: int  # the last flush position sent
    sent_seconds: float = 0.0  # audio sent on this connection
    stop_sent: bool = False
    progress: bool = False
    done: bool = False  # the server's done came, whether or not it ended the stream


class ClientSession:
    """The stream's protocol state across connections; see the module docstring."""

    def __init__(
        self, options: ClientOptions, now: float, rng: random.Random | None = None
    ) -> None:
        self.options = options
        self.state: State = "idle"
        self.error: ClientError | None = None  # set when state is "failed": raise it
        self.connections = 0  # opened so far (a ready received)
        self.segments = 0  # delivered
        self._rng = rng or random.Random()
        self._buffer = ResendBuffer(options.start)
        self._start = options.start
        self._link: _Link | None = None
        self._source_ended = False
        self._next_index = 0  # the stream's index of the next segment
        self._delivered_end = float("-inf")  # end of the last segment delivered
        self._failures = 0  # consecutive failed attempts
        self._progress_at = now
        # The last refusal's retry_after_ms (a server at capacity), in seconds: the next
        # reconnect waits at least this long, whatever the backoff says.
        self._retry_after_s = 0.0

    # -- what it knows --------------------------------------------------------------------

    @property
    def resume_offset(self) -> float:
        """Where a reconnect would resume (seconds on the timeline)."""
        return self._buffer.resume_offset

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def start(self) -> StartOptions:
        """The start message's options for the current attempt: offset = the resume point."""
        return self._start

    # -- the audio source -----------------------------------------------------------------

    def audio(self, data: bytes) -> None:
        """Audio from the source, as wire bytes (may split frames)."""
        self._buffer.append(data)

    def flush(self) -> None:
        self._buffer.mark_flush()

    def end_audio(self) -> int:
        """The source ended; returns how many trailing bytes were dropped (not a whole frame)."""
        self._source_ended = True
        return self._buffer.drop_partial_frame()

    # -- connections ------------------------------------------------------------------------

    def connect(self, now: float) -> Connecting:
        """An attempt begins: send `start` with self.start, then feed what comes back."""
        self._require("idle")
        self.state = "connecting"
        self._start = replace(self.options.start, offset=self.resume_offset)
        return Connecting(self.options.url, self._failures + 1)

    def refused(self, status: int, reason: str, now: float) -> list[ConnectionEvent]:
        """The server answered the handshake with HTTP `status`."""
        self._require("connecting")
        url = self.options.url
        if status in AUTH_STATUSES:
            return self._fail(
                AuthenticationError("unauthorized", f"HTTP {status} from {url}: check the token")
            )
        if status not in RETRY_STATUSES:
            message = f"{url}: the server answered HTTP {status}"
            if 200 <= status < 300 or status == 404:  # a page, or no stream at this path
                message += f", not a WebSocket stream; {stream_url_hint(url)}"
            return self._fail(ClientError(message))
        return self._attempt_failed(reason, now)

    def connect_failed(self, reason: str, now: float) -> list[ConnectionEvent]:
        """The attempt failed before a ready: unreachable, timed out, closed, ..."""
        self._require("connecting")
        return self._attempt_failed(reason, now)

    def connection_lost(self, now: float) -> list[ConnectionEvent]:
        """An open connection ended before the stream did (closed, or after a draining done):
        reconnect at once if it made progress, else after a backoff (a server that accepts
        and then fails every time)."""
        if self.state == "connecting":
            return self._attempt_failed("connection lost", now)
        self._require("streaming", "closing")
        link, self._link = self._link, None
        assert link is not None
        why = "the server finished early (draining)" if link.done else "connection lost"
        policy = self.options.reconnect
        if policy is None:
            return self._give_up(f"{why}; reconnecting is disabled")
        if link.progress or now - link.opened_at >= policy.stable_s:
            self._failures = 0
            self._progress_at = now
            self.state = "idle"
            return [Reconnecting(1, self._take_retry_after(0.0), why)]
        return self._back_off(why, now)

    # -- the server's messages ----------------------------------------------------------------

    def receive(self, message: ServerMessage, now: float) -> list[StreamEvent]:
        """One server message -> what to yield (renumbered), in order."""
        if self.state == "connecting":
            return self._handshake(message, now)
        if self.state != "streaming":
            return []  # after the connection's done or a fatal error: nothing counts
        link = self._link
        assert link is not None
        if isinstance(message, SpeechStart | Partial):
            return [_renumbered(message, link.index_base + message.segment)]
        if isinstance(message, Segment):
            if message.end <= self._delivered_end:
                # Wholly inside audio already delivered: a duplicate of the resumed session.
                # Its index is not the stream's, so the next segment takes the index it
                # would have had: indices stay one gapless sequence.
                link.index_base -= 1
                return []
            index = link.index_base + message.segment
            self._next_index = index + 1
            self._delivered_end = message.end
            self.segments += 1
            self._buffer.acknowledge(message.end)
            link.progress = True
            return [_renumbered(message, index)]
        if isinstance(message, ErrorMessage):
            if message.segment is not None:
                index = link.index_base + message.segment
                self._next_index = max(self._next_index, index + 1)
                return [_renumbered(message, index)]
            error = remote_error(message)
            if error is not None:
                return self._fail(error)
            self._note_retry_after(message)
            return [message]  # transient: the server closes, the client reconnects
        if isinstance(message, Done):
            return self._done(link, message)
        return []  # a second ready cannot happen; ignore rather than fail

    def _handshake(self, message: ServerMessage, now: float) -> list[StreamEvent]:
        if isinstance(message, ErrorMessage):
            error = remote_error(message)
            if error is not None:
                return self._fail(error)
            self._note_retry_after(message)
            return self._attempt_failed(f"{message.code}: {message.message}", now)
        if not isinstance(message, Ready):
            return self._fail(ClientError(f"expected a ready message, got {message!r:.200}"))
        buffer = self._buffer
        self._link = _Link(self._next_index, self._start.offset, now, buffer.start, buffer.start)
        self.connections += 1
        self.state = "streaming"
        return [Connected(message, self.connections - 1, self._start.offset)]

    def _done(self, link: _Link, done: Done) -> list[StreamEvent]:
        link.done = link.progress = True
        # A draining server sends done before our stop, or (a race) ignores what we sent
        # after it began draining: then done does not cover all the audio, and the rest
        # goes to the next server.
        slack = 0.0 if self.options.start.sample_rate == SAMPLE_RATE else RESAMPLED_SLACK_S
        if not (link.stop_sent and done.audio_seconds >= link.sent_seconds - slack - 1e-6):
            self.state = "closing"
            return []
        self.state = "finished"
        # The stream's totals, not the last connection's.
        audio_seconds = link.offset - self.options.start.offset + done.audio_seconds
        return [replace(done, segments=self.segments, audio_seconds=round(audio_seconds, 6))]

    # -- sending ------------------------------------------------------------------------------

    def next_send(self, now: float) -> SendAction | None:
        """What to send next on the open connection: the resend buffer from the resume point
        (flushes where they were), then live audio, then stop once the source ended. None:
        nothing more on this connection (not streaming, or stop sent)."""
        link, buffer, options = self._link, self._buffer, self.options
        if self.state != "streaming" or link is None or link.stop_sent:
            return None
        next_flush = buffer.next_flush(link.flushed)
        if next_flush is not None and next_flush <= link.sent:
            link.flushed = next_flush
            return SendFlush()
        sendable = buffer.whole_end if next_flush is None else next_flush
        if link.sent < sendable:
            most = max(1, round(options.max_message_s * buffer.rate)) * buffer.frame_bytes
            end = min(sendable, link.sent + most)
            seconds = buffer.seconds(end - link.sent)
            if options.max_realtime is not None:
                ahead = (link.sent_seconds + seconds - options.burst_s) / options.max_realtime
                ahead -= now - link.opened_at
                if ahead > 0:
                    return Throttle(ahead)
            data = buffer.view(link.sent, end)
            link.sent, link.sent_seconds = end, link.sent_seconds + seconds
            buffer.bound(link.sent, options.resend_limit_s)
            return SendAudio(data)
        if self._source_ended:
            link.stop_sent = True
            return SendStop()
        return AWAIT_AUDIO

    # -- failing and backing off ----------------------------------------------------------------

    def _attempt_failed(self, reason: str, now: float) -> list[ConnectionEvent]:
        policy = self.options.reconnect
        if policy is None or (self.connections == 0 and not policy.retry_initial):
            return self._give_up(f"cannot connect to {self.options.url}: {reason}")
        return self._back_off(f"cannot connect ({reason})", now)

    def _back_off(self, why: str, now: float) -> list[ConnectionEvent]:
        """Count a failure; give up per the policy, or say how long to wait."""
        policy = self.options.reconnect
        assert policy is not None
        waited = now - self._progress_at
        if (policy.max_attempts is not None and self._failures >= policy.max_attempts) or (
            policy.max_total_s is not None and waited > policy.max_total_s
        ):
            return self._give_up(
                f"gave up reconnecting to {self.options.url} after {self._failures} "
                f"failed attempt(s) in {waited:.1f} s: {why}"
            )
        delay = self._take_retry_after(policy.delay(self._failures, self._rng))
        self._failures += 1
        self.state = "idle"
        return [Reconnecting(self._failures + 1, delay, why)]

    def _note_retry_after(self, message: ErrorMessage) -> None:
        if message.retry_after_ms is not None and message.retry_after_ms > 0:
            self._retry_after_s = message.retry_after_ms / 1000

    def _take_retry_after(self, delay: float) -> float:
        """The delay before the next attempt: at least what the server asked for, once."""
        delay, self._retry_after_s = max(delay, self._retry_after_s), 0.0
        return delay

    def _give_up(self, reason: str) -> list[ConnectionEvent]:
        self._fail(ConnectionLost(reason))
        return [GaveUp(reason)]

    def _fail(self, error: ClientError) -> list:
        self.state = "failed"
        self.error = error
        self._link = None
        return []

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise RuntimeError(f"ClientSession: not allowed in state {self.state!r}")


def _renumbered(event: SpeechStart | Partial | Segment | ErrorMessage, index: int) -> ServerMessage:
    return event if event.segment == index else replace(event, segment=index)


def stream_url(url: str) -> str:
    """The stream URL a mistyped one most likely meant: ws(s)://HOST:PORT/v1/stream.

    http -> ws, https -> wss, no scheme -> ws; the path becomes STREAM_PATH; a query (a
    token) is kept.
    """
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme.lower(), "ws")
    return urlunsplit((scheme, parts.netloc, STREAM_PATH, parts.query, ""))


def stream_url_hint(url: str) -> str:
    """The sentence that shows the right stream URL (for a wrong one's error message)."""
    right = stream_url(url)
    if right == url:
        return f"is an ichigo-stream server listening there? its stream is at {right}"
    return f"the stream is at {right}"
