"""An asyncio client for the streaming protocol v1 that survives lost connections.

    async for event in stream(audio_chunks, ClientOptions(url, token="...")):
        if isinstance(event, Segment):
            print(event.start, event.end, event.to_ichigo())
        elif isinstance(event, Reconnecting):
            print(f"reconnecting in {event.delay_s:.1f} s: {event.reason}")

`audio_chunks` is any async iterable of numpy arrays (float in [-1, 1] or int16, at
`options.start.sample_rate`; shape (frames,) or (frames, channels)), of raw bytes already in
`options.start.encoding`, or of the FLUSH marker (ends the open segment there, as the
protocol's flush). Events are frozen dataclasses: the server's messages (SpeechStart,
Partial, Segment, ErrorMessage, Done) and the client's connection events (Connecting,
Connected with the server's ready, Reconnecting, GaveUp: ichigo_stream.client_events).
No torch is imported here.

Reconnection. When the connection is lost (not after a clean `done`, not on a fatal error
such as a bad token or a malformed start), the client reconnects with exponential backoff and
jitter, sends `start` again with `offset` = the resume point, resends the audio it kept from
that point, then goes on with live audio. The resume point is the end of the last segment
received, moved back onto the VAD's frame grid (see ResendBuffer: the server's VAD frames are
anchored at the session's offset, so resuming exactly at a segment end would shift every
later frame and move later segment bounds). Consequences the caller can rely on:

- Times stay on one timeline: the first session's offset + samples / 16000.
- Segment indices are renumbered to one gapless increasing sequence across reconnects: a new
  server session counts from 0 again, the client maps its index k to (next index after the
  last segment received) + k, less the duplicates it dropped. A speech_start or partial may
  be repeated after a reconnect for the segment that was open; a Segment is never repeated.
- The audio kept for resending is bounded by ClientOptions.resend_limit_s (default 35 s: a
  segment lasts at most 30 s). While disconnected the audio iterator is not read (at most
  two chunks are read ahead), so a live source must buffer or drop on its side meanwhile.
- Done is the stream's, not the last connection's: segments and audio_seconds over all.
  Connected.connection (or StreamClient.reconnects) counts the reconnects.

What a resumed session cannot reproduce exactly (measured against the real server): the
server's webrtcvad starts with fresh adaptive state at the resume point, so on noisy audio it
may open a short segment right there, and on clean audio a later onset can move by a frame.
At sample rates other than 16 kHz the server's resampler restarts too.

This module is the I/O driver only: the protocol's rules live in ClientSession (sans-I/O,
ichigo_stream.client_session); here are the socket, the tasks and the sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator
from ssl import CERT_NONE, SSLCertVerificationError, SSLContext, create_default_context
from typing import Final

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from .audio import float32_to_pcm16, pcm16_to_float32
from .client_events import (
    Connected,
    Connecting,
    ConnectionEvent,
    GaveUp,
    Reconnecting,
    StreamEvent,
    event_record,
)
from .client_session import (
    DEFAULT_URL,
    AwaitAudio,
    ClientOptions,
    ClientSession,
    ReconnectPolicy,
    SendAction,
    SendAudio,
    SendFlush,
    SendStop,
    Throttle,
)
from .errors import (
    AudioError,
    AuthenticationError,
    ClientError,
    ConnectionLost,
    RemoteError,
)
from .messages import (
    Done,
    ErrorMessage,
    Partial,
    Ready,
    Segment,
    ServerMessage,
    SpeechStart,
    Start,
    parse_server_message,
    segments_to_llm,
)
from .protocol import StartOptions

__all__ = [
    "DEFAULT_URL",
    "FLUSH",
    "AuthenticationError",
    "ClientError",
    "ClientOptions",
    "Connected",
    "Connecting",
    "ConnectionEvent",
    "ConnectionLost",
    "Done",
    "ErrorMessage",
    "GaveUp",
    "Partial",
    "Ready",
    "ReconnectPolicy",
    "Reconnecting",
    "RemoteError",
    "Segment",
    "ServerMessage",
    "SpeechStart",
    "StartOptions",
    "StreamClient",
    "StreamEvent",
    "encode_audio",
    "event_record",
    "parse_server_message",
    "segments_to_llm",
    "stream",
]

log = logging.getLogger("ichigo_stream.client")

FLUSH_MESSAGE: Final = '{"type":"flush"}'
STOP_MESSAGE: Final = '{"type":"stop"}'


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
        return pcm16_to_float32(audio).astype("<f4").tobytes()
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"expected float or int16 samples, got dtype {audio.dtype}")
    if options.encoding == "pcm_s16le":
        return float32_to_pcm16(audio)  # raises on NaN/inf
    samples = audio.astype("<f4")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return samples.tobytes()


# -- the driver -----------------------------------------------------------------------------------


class _SourceEnd:
    pass


_SOURCE_END: Final = _SourceEnd()
# Failures of one attempt that a later attempt may not have.
_TRANSIENT = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


class StreamClient:
    """One audio stream over as many connections as it takes: call events() once.

    `connections`, `reconnects` and `resume_offset` may be read while it runs."""

    def __init__(
        self, options: ClientOptions = ClientOptions(), *, rng: random.Random | None = None
    ) -> None:
        self.options = options
        self.session = ClientSession(options, _now(), rng)
        self._queue: asyncio.Queue[bytes | _FlushMarker | _SourceEnd | BaseException] = (
            asyncio.Queue(maxsize=1)
        )
        self._cause: BaseException | None = None  # why the last attempt failed
        self._sender_error: BaseException | None = None
        self._closing: asyncio.Future[None] | None = None  # held: a bare task may be collected

    @property
    def connections(self) -> int:
        """Connections opened so far."""
        return self.session.connections

    @property
    def reconnects(self) -> int:
        return self.session.reconnects

    @property
    def resume_offset(self) -> float:
        """Where a reconnect would resume (seconds on the timeline)."""
        return self.session.resume_offset

    async def events(self, audio: AsyncIterable[AudioChunk]) -> AsyncIterator[StreamEvent]:
        session = self.session
        reader = asyncio.create_task(self._read(audio))
        try:
            while True:
                delay = 0.0
                async with contextlib.aclosing(self._connection()) as events:
                    async for event in events:
                        _log(event)
                        if isinstance(event, Reconnecting):
                            delay = event.delay_s
                        yield event
                if self._sender_error is not None:
                    raise self._sender_error
                if session.state == "finished":
                    return
                if session.error is not None:
                    # A refusal is its own explanation; giving up is explained by the last cause.
                    cause = self._cause if isinstance(session.error, ConnectionLost) else None
                    raise session.error from cause
                await asyncio.sleep(delay)
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

    # -- one connection --------------------------------------------------------------------

    async def _connection(self) -> AsyncIterator[StreamEvent]:
        """One attempt: connect, start, ready, then stream until the connection ends."""
        session = self.session
        self._cause = None
        yield session.connect(_now())
        ws, events = await self._open()
        for event in events:
            yield event
        if ws is None:
            return
        sender = asyncio.create_task(self._send(ws))
        sender.add_done_callback(lambda task: self._sender_ended(ws, task))
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    raise ClientError("the server sent a binary message")
                message = parse_server_message(raw)
                if message is None:
                    continue
                for event in session.receive(message, _now()):
                    yield event
                if session.state != "streaming":
                    break
        except ConnectionClosed:
            pass  # what comes next is the session's decision
        finally:
            sender.cancel()
            # Never raises: a failed sender was recorded by _sender_ended, and one that met the
            # closed connection first (it often does) tells nothing the receiver does not know.
            await asyncio.wait({sender})
            await _close(ws)
        if self._sender_error is None and session.state in ("streaming", "closing"):
            for event in session.connection_lost(_now()):
                yield event

    async def _open(self) -> tuple[ClientConnection | None, list[StreamEvent]]:
        """The handshake, start and ready; the session judges every way it can fail."""
        options, session = self.options, self.session
        headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
        try:
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
        except (InvalidURI, InvalidProxy, SSLCertVerificationError) as e:
            # A wrong URL or an untrusted certificate: retrying cannot fix these.
            raise ClientError(f"cannot connect to {options.url!r}: {e}") from None
        except InvalidStatus as e:
            self._cause = e
            return None, [*session.refused(e.response.status_code, _describe(e), _now())]
        except _TRANSIENT as e:
            self._cause = e
            return None, [*session.connect_failed(_describe(e), _now())]
        try:
            await ws.send(Start(session.start).to_json())
            raw = await asyncio.wait_for(ws.recv(), options.open_timeout_s)
            message = parse_server_message(raw) if isinstance(raw, str) else None
            if message is None:
                raise ClientError(f"expected a ready message, got {raw!r:.200}")
            events = session.receive(message, _now())
        except _TRANSIENT as e:
            await _close(ws)
            self._cause = e
            return None, [*session.connect_failed(_describe(e), _now())]
        except BaseException:
            await _close(ws)
            raise
        if session.state != "streaming":
            await _close(ws)
            return None, events
        return ws, events

    async def _send(self, ws: ClientConnection) -> None:
        """Send what the session says, feeding it the source whenever it runs dry."""
        session = self.session
        while (action := session.next_send(_now())) is not None:
            if isinstance(action, Throttle):
                await asyncio.sleep(action.delay_s)
            elif isinstance(action, AwaitAudio):
                item = await self._queue.get()
                if isinstance(item, bytes):
                    session.audio(item)
                elif isinstance(item, _FlushMarker):
                    session.flush()
                elif isinstance(item, _SourceEnd):
                    if dropped := session.end_audio():
                        log.warning("dropped %d trailing byte(s): not a whole frame", dropped)
                else:
                    raise item
            else:
                await ws.send(_wire(action))

    def _sender_ended(self, ws: ClientConnection, task: asyncio.Task[None]) -> None:
        if task.cancelled() or isinstance(task.exception(), ConnectionClosed):
            return
        if task.exception() is not None:
            # The source failed (or a bug): end the connection so the receiver stops waiting.
            self._sender_error = task.exception()
            self._closing = asyncio.ensure_future(_close(ws))


def _wire(action: SendAction) -> str | bytes:
    if isinstance(action, SendAudio):
        return action.data
    if isinstance(action, SendFlush):
        return FLUSH_MESSAGE
    assert isinstance(action, SendStop), action
    return STOP_MESSAGE


def _log(event: StreamEvent) -> None:
    """Connection changes as log lines, for people reading logs; programs use the events."""
    if isinstance(event, Connected) and event.resumed:
        log.info("reconnected: session %s resumes at %.3f s", event.ready.session, event.offset)
    elif isinstance(event, Reconnecting):
        log.info("%s; next attempt (%d) in %.2f s", event.reason, event.attempt, event.delay_s)
    elif isinstance(event, GaveUp):
        log.info("%s", event.reason)


def _now() -> float:
    return time.monotonic()


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
) -> AsyncIterator[StreamEvent]:
    """Stream audio to a server and yield its events, reconnecting as StreamClient does."""
    async for event in StreamClient(options).events(audio):
        yield event
