"""An asyncio client for the streaming protocol v1 that survives lost connections.

    async for event in stream(audio_chunks, ClientOptions(url, token="...")):
        if isinstance(event, Segment):
            print(event.start, event.end, event.to_ichigo())

`audio_chunks` is any async iterable of numpy arrays (float in [-1, 1] or int16, at
`options.start.sample_rate`; shape (frames,) or (frames, channels)), of raw bytes already in
`options.start.encoding`, or of the FLUSH marker (ends the open segment there, as the
protocol's flush). Events are the protocol's frozen message dataclasses (ichigo_stream.messages):
Ready, SpeechStart, Partial, Segment, ErrorMessage, Done; ready and done come as
StreamReady and StreamDone. No torch is imported here.

Reconnection. When the connection is lost (not after a clean `done`, not on a fatal error
such as a bad token or a malformed start), the client reconnects with exponential backoff and
jitter, sends `start` again with `offset` = the resume point, resends the audio it kept from
that point, then goes on with live audio. The resume point is the end of the last segment
received, moved back onto the VAD's frame grid (see _Backlog: the server's VAD frames are
anchored at the session's offset, so resuming exactly at a segment end would shift every
later frame and move later segment bounds). Consequences the caller can rely on:

- Times stay on one timeline: the first session's offset + samples / 16000.
- Segment indices are renumbered to one increasing sequence across reconnects: a new server
  session counts from 0 again, the client maps its index k to (next index after the last
  segment received) + k. A speech_start or partial may be repeated after a reconnect for the
  segment that was open; a Segment is never repeated.
- The audio kept for resending is bounded by ClientOptions.resend_limit_s (default 35 s: a
  segment lasts at most 30 s). While disconnected the audio iterator is not read (at most
  two chunks are read ahead), so a live source must buffer or drop on its side meanwhile.
- Done is the stream's, not the last connection's: segments and audio_seconds over all.

What a resumed session cannot reproduce exactly (measured against the real server): the
server's webrtcvad starts with fresh adaptive state at the resume point, so on noisy audio it
may open a short segment right there, and on clean audio a later onset can move by a frame.
At sample rates other than 16 kHz the server's resampler restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field, replace
from ssl import CERT_NONE, SSLCertVerificationError, SSLContext, create_default_context
from typing import Any, Final, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from .audio import PCM16_SCALE, float32_to_pcm16
from .constants import SAMPLE_RATE
from .errors import (
    AudioError,
    AuthenticationError,
    ClientError,
    ConnectionLost,
    ServerError,
)
from .messages import (
    Done,
    ErrorMessage,
    Flush,
    Partial,
    Ready,
    Segment,
    ServerMessage,
    SpeechStart,
    Start,
    Stop,
    parse_server_message,
    segments_to_llm,
)
from .protocol import ENCODINGS, StartOptions

__all__ = [
    "DEFAULT_URL",
    "FLUSH",
    "AuthenticationError",
    "ClientError",
    "ClientOptions",
    "ConnectionLost",
    "Done",
    "ErrorMessage",
    "Event",
    "Partial",
    "Ready",
    "ReconnectPolicy",
    "Segment",
    "ServerError",
    "SpeechStart",
    "StartOptions",
    "StreamClient",
    "StreamDone",
    "StreamReady",
    "encode_audio",
    "segments_to_llm",
    "stream",
]

log = logging.getLogger("ichigo_stream.client")

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
# Errors that a new connection would only get again: the request itself is wrong.
FATAL_CODES = frozenset(
    {"bad_message", "bad_audio", "unsupported", "too_large", "too_fast", "unauthorized"}
)
# Handshake refusals worth retrying: the server is there but busy, starting or restarting.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


# -- TEMPORARY client-only views of ready and done -------------------------------------------------
# The wire messages (ichigo_stream.messages) carry no client state; until the typed connection
# events replace them, the client adds where a connection resumed and how many it took.


@dataclass(frozen=True)
class StreamReady(Ready):
    """A connection's session started. Again after every reconnect, with offset = resume point."""

    offset: float = 0.0  # seconds: where this connection's audio starts on the timeline
    connection: int = 0  # 0 for the first connection, then 1, 2, ... after reconnects


@dataclass(frozen=True)
class StreamDone(Done):
    """The stream is finished: totals over all connections."""

    reconnects: int = 0


Event = ServerMessage  # what stream() yields (ready and done as StreamReady, StreamDone)


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
    """Where to connect, what to ask for in `start`, and how to survive a lost connection."""

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


class _FlushMarker:
    def __repr__(self) -> str:
        return "FLUSH"


FLUSH: Final = _FlushMarker()  # yield this in the audio iterable to end the open segment

AudioChunk = np.ndarray | bytes | bytearray | memoryview | _FlushMarker


def encode_audio(
    chunk: np.ndarray | bytes | bytearray | memoryview, options: StartOptions
) -> bytes:
    """One chunk of audio -> the wire bytes of options.encoding (bytes pass through as they are).

    Arrays are float in [-1, 1] (clipped for pcm_s16le) or int16, shape (frames,) for mono or
    (frames, channels); int16 <-> float uses the 2**15 scale the server reads PCM with.
    """
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    audio = np.asarray(chunk)
    shape_ok = (audio.ndim == 1 and options.channels == 1) or (
        audio.ndim == 2 and audio.shape[1] == options.channels
    )
    if not shape_ok:
        raise AudioError(
            f"expected audio of shape (frames,) or (frames, {options.channels}) for "
            f"{options.channels} channel(s), got {audio.shape}"
        )
    if audio.dtype == np.int16:
        if options.encoding == "pcm_s16le":
            return audio.astype("<i2").tobytes()
        return (audio.astype(np.float32) / np.float32(PCM16_SCALE)).astype("<f4").tobytes()
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"expected float or int16 samples, got dtype {audio.dtype}")
    if options.encoding == "pcm_s16le":
        return float32_to_pcm16(audio)  # raises on NaN/inf
    samples = audio.astype("<f4")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return samples.tobytes()


# -- the audio kept for resending --------------------------------------------------------------


class _Backlog:
    """The client's audio from the resume point on, as wire bytes, with its flush positions.

    Positions are absolute byte offsets into the stream's audio (frame 0 = the first
    session's offset). The resume point only ever moves forward, to a whole frame at a VAD
    frame boundary of the original session: the server cuts its VAD frames on a grid from
    the session's start, so a new session started off that grid would classify different
    frames and could move every later segment bound (tail_ms 200 is not a multiple of
    frame_ms 30, so segment ends are off the grid). On the grid, a resumed session sees the
    same frames as the uninterrupted one would have.
    """

    def __init__(self, options: StartOptions) -> None:
        self.rate = options.sample_rate
        self.frame_bytes = ENCODINGS[options.encoding] * options.channels
        self.offset = options.offset
        self.origin = options.offset_samples  # the VAD grid's origin on the 16 kHz timeline
        self.grid = options.vad.frame_samples
        self.data = bytearray()
        self.start = 0  # absolute byte position of data[0]; always a whole frame
        self.flushes: deque[int] = deque()  # absolute byte positions, increasing

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    @property
    def whole_end(self) -> int:
        """The end, less a trailing partial frame (raw bytes may split frames)."""
        return self.end - self.end % self.frame_bytes

    @property
    def resume_offset(self) -> float:
        """The timeline position (seconds) of the resume point: the next session's offset."""
        return self.offset + self.start // self.frame_bytes / self.rate

    def append(self, data: bytes) -> None:
        self.data += data

    def mark_flush(self) -> None:
        position = self.whole_end
        if not self.flushes or self.flushes[-1] < position:
            self.flushes.append(position)

    def drop_partial_frame(self) -> int:
        extra = self.end - self.whole_end
        if extra:
            del self.data[len(self.data) - extra :]
        return extra

    def view(self, start: int, end: int) -> bytes:
        return bytes(self.data[start - self.start : end - self.start])

    def next_flush(self, after: int) -> int | None:
        return next((p for p in self.flushes if p > after), None)

    def seconds(self, n_bytes: int) -> float:
        return n_bytes / self.frame_bytes / self.rate

    def acknowledge(self, end: float) -> None:
        """A segment up to `end` (seconds) came back: audio before it need not be resent."""
        samples = round(end * SAMPLE_RATE) - self.origin
        self._drop_before_sample(samples // self.grid * self.grid)

    def bound(self, sent: int, limit_s: float) -> None:
        """Keep at most limit_s of sent audio: drop the oldest, up to a grid point."""
        excess = sent - self.start - round(limit_s * self.rate) * self.frame_bytes
        if excess <= 0:
            return
        frame = (self.start + excess) // self.frame_bytes
        sample = math.ceil(frame * SAMPLE_RATE / self.rate)
        sample = -(-sample // self.grid) * self.grid  # up to the grid
        log.debug("resend buffer over %g s: dropping its oldest audio", limit_s)
        self._drop_before_sample(sample, limit=sent)

    def _drop_before_sample(self, sample: int, limit: int | None = None) -> None:
        # Down to a whole client frame: at 16 kHz exactly the sample, else the frame before.
        position = sample * self.rate // SAMPLE_RATE * self.frame_bytes
        if limit is not None:
            position = min(position, limit)
        position = min(position, self.whole_end)
        if position <= self.start:
            return
        del self.data[: position - self.start]
        self.start = position
        while self.flushes and self.flushes[0] <= position:
            self.flushes.popleft()


# -- the client -----------------------------------------------------------------------------------


class _SourceEnd:
    pass


_SOURCE_END: Final = _SourceEnd()


@dataclass
class _Connection:
    """What one connection learned; read after it ends to decide what comes next."""

    ws: ClientConnection
    index_base: int
    offset: float  # the session's timeline start
    opened_at: float
    progress: bool = False
    sent_seconds: float = 0.0  # audio sent on this connection
    stop_sent: bool = False
    done: Done | None = None  # the server's, whether or not it ended the stream
    finished: bool = False  # done covered all the audio: the stream is over
    fatal: ServerError | None = None
    sender: asyncio.Task[None] | None = None
    sender_error: BaseException | None = None
    closing: asyncio.Future[None] | None = None


class StreamClient:
    """One audio stream over as many connections as it takes: call events() once.

    `connections` and `resume_offset` may be read while it runs (progress, logging)."""

    def __init__(self, options: ClientOptions = ClientOptions()) -> None:
        self.options = options
        self.connections = 0  # opened so far
        self._backlog = _Backlog(options.start)
        self._queue: asyncio.Queue[bytes | _FlushMarker | _SourceEnd | BaseException] = (
            asyncio.Queue(maxsize=1)
        )
        self._source_done = False
        self._next_index = 0  # client index of the next segment
        self._delivered_end = -math.inf  # end of the last segment yielded
        self._segments = 0
        self._failures = 0
        self._progress_at = time.monotonic()
        self._rng = random.Random()

    @property
    def resume_offset(self) -> float:
        """Where a reconnect would resume (seconds on the timeline)."""
        return self._backlog.resume_offset

    async def events(self, audio: AsyncIterable[AudioChunk]) -> AsyncIterator[Event]:
        reader = asyncio.create_task(self._read(audio))
        try:
            while True:
                conn, ready = await self._open()
                yield ready
                async with contextlib.aclosing(self._run(conn)) as events:
                    async for event in events:
                        yield event
                if conn.sender_error is not None:
                    raise conn.sender_error
                if conn.fatal is not None:
                    raise conn.fatal
                if conn.finished:
                    return
                await self._lost(conn)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    # -- the audio source ------------------------------------------------------------------

    async def _read(self, audio: AsyncIterable[AudioChunk]) -> None:
        """Source -> queue, converted; runs for the whole stream, never per connection, so
        that a lost connection never cancels the caller's iterator mid-step."""
        try:
            async for chunk in audio:
                if isinstance(chunk, _FlushMarker):
                    await self._queue.put(chunk)
                else:
                    await self._queue.put(encode_audio(chunk, self.options.start))
        except Exception as e:  # the caller's iterator failed: the stream ends with it
            await self._queue.put(e)
            return
        await self._queue.put(_SOURCE_END)

    # -- connections ----------------------------------------------------------------------

    async def _open(self) -> tuple[_Connection, StreamReady]:
        """Connect, start, await ready; retried by the reconnect policy."""
        policy = self.options.reconnect
        while True:
            offset = self._backlog.resume_offset
            try:
                return await self._try_open(offset)
            except (InvalidURI, InvalidProxy, SSLCertVerificationError) as e:
                # A wrong URL or an untrusted certificate: retrying cannot fix these.
                raise ClientError(f"cannot connect to {self.options.url!r}: {e}") from None
            except InvalidStatus as e:
                status = e.response.status_code
                if status in (401, 403):
                    raise AuthenticationError(
                        "unauthorized", f"HTTP {status} from {self.options.url}: check the token"
                    ) from None
                if status not in RETRY_STATUSES:
                    raise ClientError(
                        f"{self.options.url}: the server answered HTTP {status}"
                    ) from None
                cause: BaseException = e
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, _Retryable) as e:
                cause = e
            if policy is None or (self.connections == 0 and not policy.retry_initial):
                raise ConnectionLost(
                    f"cannot connect to {self.options.url}: {_describe(cause)}"
                ) from cause
            await self._back_off(policy, f"cannot connect ({_describe(cause)})", cause)

    async def _back_off(
        self, policy: ReconnectPolicy, why: str, cause: BaseException | None
    ) -> None:
        """Count a failure; give up per the policy, or wait before the next attempt."""
        waited = time.monotonic() - self._progress_at
        if (policy.max_attempts is not None and self._failures >= policy.max_attempts) or (
            policy.max_total_s is not None and waited > policy.max_total_s
        ):
            raise ConnectionLost(
                f"gave up reconnecting to {self.options.url} after {self._failures} "
                f"failed attempt(s) in {waited:.1f} s: {why}"
            ) from cause
        delay = policy.delay(self._failures, self._rng)
        self._failures += 1
        log.warning("%s; retrying in %.2f s (attempt %d)", why, delay, self._failures)
        await asyncio.sleep(delay)

    async def _try_open(self, offset: float) -> tuple[_Connection, StreamReady]:
        options = self.options
        headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
        ws = await connect(
            options.url,
            additional_headers=headers,
            ssl=_ssl_context(options) if options.url.startswith("wss:") else None,
            open_timeout=options.open_timeout_s,
            # An unresponsive server must not hold a closing client for websockets' 10 s.
            close_timeout=options.close_timeout_s,
            compression=None,  # PCM does not compress
            proxy=options.proxy,
        )
        try:
            await ws.send(Start(replace(options.start, offset=offset)).to_json())
            raw = await asyncio.wait_for(ws.recv(), options.open_timeout_s)
            event = parse_server_message(raw) if isinstance(raw, str) else None
            if isinstance(event, ErrorMessage):
                raise self._error(event)
            if not isinstance(event, Ready):
                raise ClientError(f"expected a ready message, got {raw!r:.200}")
        except BaseException:
            await _close(ws)
            raise
        conn = _Connection(ws, self._next_index, offset, time.monotonic())
        ready = StreamReady(
            event.protocol,
            event.session,
            event.model,
            event.sample_rate,
            event.capabilities,
            offset=offset,
            connection=self.connections,
        )
        self.connections += 1
        if ready.connection:
            log.warning("reconnected: session %s resumes at %.3f s", ready.session, offset)
        return conn, ready

    def _error(self, event: ErrorMessage) -> ServerError | _Retryable:
        if event.code == "unauthorized":
            return AuthenticationError(event.code, event.message)
        if event.code in FATAL_CODES:
            return ServerError(event.code, event.message)
        return _Retryable(f"{event.code}: {event.message}")

    async def _lost(self, conn: _Connection) -> None:
        """The connection ended before the stream did: reconnect at once if it had made
        progress, else after a backoff (a server that accepts and then fails every time)."""
        policy = self.options.reconnect
        why = "the server finished early (draining)" if conn.done else "connection lost"
        if policy is None:
            raise ConnectionLost(f"{why}; reconnecting is disabled")
        if conn.progress or time.monotonic() - conn.opened_at >= policy.stable_s:
            self._failures = 0
            self._progress_at = time.monotonic()
            log.warning("%s; resuming at %.3f s", why, self.resume_offset)
        else:
            await self._back_off(policy, why, None)

    # -- one connection ----------------------------------------------------------------------

    async def _run(self, conn: _Connection) -> AsyncIterator[Event]:
        conn.sender = asyncio.create_task(self._send(conn))
        conn.sender.add_done_callback(lambda task: self._sender_ended(conn, task))
        try:
            async for raw in conn.ws:
                if not isinstance(raw, str):
                    raise ClientError("the server sent a binary message")
                event = parse_server_message(raw)
                if event is None:
                    continue
                event = self._on_event(conn, event)
                if event is not None:
                    yield event
                if conn.done is not None or conn.fatal is not None:
                    break
        except ConnectionClosed:
            pass  # why is decided by the caller from what conn learned
        finally:
            conn.sender.cancel()
            # Never raises: a failed sender was recorded by _sender_ended, and one that met the
            # closed connection first (it often does) tells nothing the receiver does not know.
            await asyncio.wait({conn.sender})
            await _close(conn.ws)

    def _sender_ended(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        if task.cancelled() or isinstance(task.exception(), ConnectionClosed):
            return
        if task.exception() is not None:
            # The source failed (or a bug): end the connection so the receiver stops waiting.
            conn.sender_error = task.exception()
            conn.closing = asyncio.ensure_future(_close(conn.ws))

    def _on_event(self, conn: _Connection, event: Event) -> Event | None:
        """Renumber, record progress, acknowledge audio; None drops the event."""
        base = conn.index_base
        if isinstance(event, SpeechStart | Partial):
            return _renumbered(event, base + event.segment)
        if isinstance(event, Segment):
            if event.end <= self._delivered_end:
                return None  # wholly inside audio already delivered: a duplicate
            index = base + event.segment
            self._next_index = index + 1
            self._delivered_end = event.end
            self._segments += 1
            self._backlog.acknowledge(event.end)
            conn.progress = True
            return _renumbered(event, index)
        if isinstance(event, ErrorMessage):
            if event.segment is not None:
                index = base + event.segment
                self._next_index = max(self._next_index, index + 1)
                return _renumbered(event, index)
            error = self._error(event)
            if isinstance(error, ServerError):
                conn.fatal = error
                return None
            return event  # transient: the server closes, the client reconnects
        if isinstance(event, Done):
            conn.done = event
            conn.progress = True
            # A draining server sends done before our stop, or (a race) ignores what we sent
            # after it began draining: then done does not cover all the audio, and the rest
            # goes to the next server. Resampling may make the count differ by a sample.
            slack = 0.0 if self.options.start.sample_rate == SAMPLE_RATE else 0.005
            conn.finished = conn.stop_sent and (
                event.audio_seconds >= conn.sent_seconds - slack - 1e-6
            )
            if not conn.finished:
                return None
            audio_seconds = conn.offset - self.options.start.offset + event.audio_seconds
            return StreamDone(self._segments, round(audio_seconds, 6), self.connections - 1)
        return None  # a second ready cannot happen; ignore rather than fail

    async def _send(self, conn: _Connection) -> None:
        """Resend the backlog from the resume point, then live audio; stop at the end."""
        options, backlog, ws = self.options, self._backlog, conn.ws
        sent = flushed = backlog.start
        max_bytes = max(
            backlog.frame_bytes, round(options.max_message_s * backlog.rate) * backlog.frame_bytes
        )
        while True:
            next_flush = backlog.next_flush(flushed)
            if next_flush is not None and next_flush <= sent:
                await ws.send(Flush().to_json())
                flushed = next_flush
                continue
            sendable = backlog.whole_end if next_flush is None else next_flush
            if sent < sendable:
                end = min(sendable, sent + max_bytes)
                conn.sent_seconds += backlog.seconds(end - sent)
                await self._throttle(conn)
                await ws.send(backlog.view(sent, end))
                sent = end
                backlog.bound(sent, options.resend_limit_s)
                continue
            if self._source_done:
                await ws.send(Stop().to_json())
                conn.stop_sent = True
                return
            item = await self._queue.get()
            if isinstance(item, bytes):
                backlog.append(item)
            elif isinstance(item, _FlushMarker):
                backlog.mark_flush()
            elif isinstance(item, _SourceEnd):
                self._source_done = True
                if dropped := backlog.drop_partial_frame():
                    log.warning("dropped %d trailing byte(s): not a whole frame", dropped)
            else:
                raise item

    async def _throttle(self, conn: _Connection) -> None:
        rate = self.options.max_realtime
        if rate is None:
            return
        ahead = (conn.sent_seconds - self.options.burst_s) / rate - (
            time.monotonic() - conn.opened_at
        )
        if ahead > 0:
            await asyncio.sleep(ahead)


class _Retryable(Exception):
    """A failure a new connection may not have (the server full, restarting, ...)."""


def _renumbered(event: Any, index: int) -> Any:
    return event if event.segment == index else replace(event, segment=index)


def _describe(error: BaseException | None) -> str:
    text = str(error) if error is not None else ""
    return text or type(error).__name__


def _ssl_context(options: ClientOptions) -> SSLContext:
    if isinstance(options.ssl, SSLContext):
        return options.ssl
    context = create_default_context()
    if options.ssl is False:
        context.check_hostname = False
        context.verify_mode = CERT_NONE
    return context


async def _close(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()


async def stream(
    audio: AsyncIterable[AudioChunk], options: ClientOptions = ClientOptions()
) -> AsyncIterator[Event]:
    """Stream audio to a server and yield its events, reconnecting as StreamClient does."""
    async for event in StreamClient(options).events(audio):
        yield event
