"""The asyncio layer: websockets connections <-> ServerSession, the model worker, HTTP routes.

Thin on purpose: protocol decisions live in ichigo_stream.session (sans-I/O); this module
moves bytes, time and results between the socket, the session and the worker. The serve
process around it (signals, readiness, exit status) is server.lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ichigo_stream.actions import (
    Action,
    Cancel,
    Close,
    Count,
    Job,
    JobResult,
    Send,
    SessionMachine,
    Submit,
)
from ichigo_stream.errors import CloseCode, IchigoStreamError, ProtocolError
from ichigo_stream.listen_protocol import (
    LISTEN_PATH,
    LISTEN_SUBPROTOCOL,
    ListenQueryError,
    bad_request_body,
    parse_listen_query,
)
from ichigo_stream.listen_session import ListenSession
from ichigo_stream.messages import Capabilities
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.protocol import STREAM_PATH, quote
from ichigo_stream.realtime import RealtimeSession
from ichigo_stream.realtime_events import REALTIME_PATH, REALTIME_SUBPROTOCOL
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.session import ServerSession

from .config import ServerConfig
from .listener import Listener, tls_context
from .metrics import ServerMetrics
from .routes import SERVER_HEADER, HttpRoutes, response, websockets_logger

if TYPE_CHECKING:  # torch: the ingest processes of multi-process mode never import it
    from ichigo_stream.model import IchigoTokenizer

    from .worker import ModelWorker, ResultCallback
    from .worker_proxy import EvictionCallback, WorkerProxy

    # What makes a StreamServer's worker, given where its results and evictions go.
    WorkerFactory = Callable[[ResultCallback, EvictionCallback], ModelWorker | WorkerProxy]

log = logging.getLogger("ichigo_stream.server")
JSON_TYPE = "application/json"
FORCE_CLOSE_S = 1.0  # on a forced exit, how long a client may take to answer the close frame
# Of the drain timeout, what is kept for closing the sessions still open at its end (each
# client's answer to the close frame), so that the whole drain stays within the option:
# at most this, at most a quarter of the timeout.
CLOSE_RESERVE_S = 1.0


@dataclass(frozen=True)
class SessionContext:
    """What an endpoint needs to make the session of a new connection."""

    session_id: str
    model: ModelInfo
    capabilities: Capabilities
    now: float
    vad_defaults: VadOptions
    query: str  # the request's query string: some protocols carry their options there


# An endpoint: the session machine speaking its protocol for one new connection.
EndpointFactory = Callable[[SessionContext], SessionMachine]


def _v1_session(context: SessionContext) -> SessionMachine:
    return ServerSession(
        context.session_id,
        context.model,
        context.capabilities,
        context.now,
        vad_defaults=context.vad_defaults,
    )


def _realtime_session(context: SessionContext) -> SessionMachine:
    return RealtimeSession(
        context.session_id,
        context.model,
        context.capabilities,
        context.now,
        vad_defaults=context.vad_defaults,
    )


def _listen_session(context: SessionContext) -> SessionMachine:
    # The query was checked before the upgrade (StreamServer._check_listen_query): it parses.
    options = parse_listen_query(context.query, text_available=context.capabilities.text)
    return ListenSession(
        context.session_id,
        context.model,
        context.capabilities,
        context.now,
        options,
        request_id=str(uuid.uuid4()),
        created=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        vad_defaults=context.vad_defaults,
    )


class _Connection:
    def __init__(self, ws: ServerConnection, session: SessionMachine) -> None:
        self.ws = ws
        self.session = session
        self.outbox: asyncio.Queue[Send | Close] = asyncio.Queue()
        self.closing = False  # a Close is queued: the session's work is over
        self.audio_seconds = 0.0


def model_worker(
    config: ServerConfig, tokenizer: IchigoTokenizer, on_result: ResultCallback
) -> ModelWorker:
    """The in-process model worker the configuration asks for (imports torch)."""
    from ichigo_stream.pipeline import default_batch_size

    from .worker import ModelWorker

    return ModelWorker(
        tokenizer,
        on_result,
        max_batch=config.max_batch or default_batch_size(tokenizer.device.type),
        max_wait_s=config.max_wait_ms / 1000,
        held_budget_bytes=config.max_held_audio_bytes,
        max_text_tokens=config.max_text_tokens,
        admission=config.admission,
    )


class StreamServer:
    """make_worker: None, an in-process ModelWorker on the tokenizer (the single-process
    server); else what makes the worker (multi-process mode: a WorkerProxy, tokenizer None)."""

    def __init__(
        self,
        config: ServerConfig,
        tokenizer: IchigoTokenizer | None,
        info: ModelInfo,
        *,
        make_worker: WorkerFactory | None = None,
    ) -> None:
        self.config = config
        self.info = info
        self.metrics = ServerMetrics()
        self.worker: ModelWorker | WorkerProxy
        if make_worker is None:
            assert tokenizer is not None, "an in-process worker needs the tokenizer"
            self.worker = model_worker(config, tokenizer, self._result_from_worker)
        else:
            self.worker = make_worker(self._result_from_worker, self._evicted_by_worker)
        self.connections: dict[str, _Connection] = {}
        # WebSocket endpoints by path, all with the same auth, limits, VAD and worker.
        self.endpoints: dict[str, EndpointFactory] = {
            STREAM_PATH: _v1_session,
            LISTEN_PATH: _listen_session,
            REALTIME_PATH: _realtime_session,
        }
        # The subprotocol an endpoint answers when a browser offers it (with its key).
        self.subprotocols: dict[str, str] = {
            LISTEN_PATH: LISTEN_SUBPROTOCOL,
            REALTIME_PATH: REALTIME_SUBPROTOCOL,
        }
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.draining = False
        self.routes = HttpRoutes(
            token=config.token,
            metrics_token=config.metrics_token,
            websocket_paths=self.endpoints,  # read per request: later entries count too
            # Live: the process answers and its worker is not stuck (a restart would help);
            # ready: and it takes new sessions (not while draining, nor over its memory budget,
            # nor while the predicted demand leaves no room for one more session).
            live=self.worker.healthy,
            ready=self._ready,
            metrics=lambda openmetrics: self._render_metrics(openmetrics=openmetrics),
            upgrade_checks={LISTEN_PATH: self._check_listen_query},
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, listener: Listener | None = None) -> None:
        """Listen (on the listener's socket, bound before the model loaded, if given); an
        address that cannot be bound is an IchigoStreamError, not a traceback."""
        self._loop = asyncio.get_running_loop()
        limit = self.config.limits.max_message_bytes
        where = (
            {"sock": listener.sock}
            if listener is not None
            else {"host": self.config.host, "port": self.config.port}
        )
        try:
            self._server = await serve(
                self._handle,
                **where,
                process_request=self.routes,
                server_header=SERVER_HEADER,
                logger=websockets_logger(),
                # Our own size check answers with an error message first; this is the hard stop.
                max_size=4 * limit + 1024,
                ssl=listener.tls if listener is not None else tls_context(self.config),
                compression=None,  # PCM does not compress; deflate would only cost CPU
                select_subprotocol=self._select_subprotocol,
            )
        except OSError as e:
            raise IchigoStreamError(
                f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror or e}"
            ) from None
        self.worker.start()
        self._ticker = asyncio.create_task(self._tick())

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def drain(self) -> None:
        """Stop accepting, finish every open segment, send done, close; all within the timeout.

        Sessions get the drain timeout less a reserve (CLOSE_RESERVE_S at most, a quarter of
        it at most); those still open then are closed with 1001 (going away), all at once,
        and a client that has not answered the close frame by the timeout is cut off. So
        websockets' own close timeout never adds to --drain-timeout-s. The model worker gets
        what is left of the timeout to finish its current batch.
        """
        assert self._server is not None and self._loop is not None
        timeout = self.config.drain_timeout_s
        deadline = self._loop.time() + timeout
        self.draining = True
        self._server.close(close_connections=False)
        for conn in list(self.connections.values()):
            self._act(conn, conn.session.shutdown, self._loop.time())
        sessions_until = deadline - min(CLOSE_RESERVE_S, timeout / 4)
        try:
            await asyncio.wait_for(
                self._server.wait_closed(), max(0.0, sessions_until - self._loop.time())
            )
        except TimeoutError:
            log.warning("drain timeout: closing %d connection(s) unfinished", len(self.connections))
            await self._close_all(max(0.0, deadline - self._loop.time()))
        if self._ticker:
            self._ticker.cancel()
        # Wait for the worker here, not in asyncio.to_thread: a forced exit cancels this
        # wait, and asyncio.run would still wait for an executor thread joining the worker.
        self.worker.request_stop()
        while self.worker.alive and self._loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def force_close(self) -> None:
        """A second signal during the drain: close every connection with 1001 now, exit.

        Each client gets FORCE_CLOSE_S to answer the close frame; after that its connection
        is dropped. The worker is told to stop but not waited for (its thread is a daemon).
        """
        assert self._server is not None
        self.draining = True
        self._server.close(close_connections=False)
        if self._ticker:
            self._ticker.cancel()
        self.worker.request_stop()
        await self._close_all(FORCE_CLOSE_S)

    async def _close_all(self, timeout_s: float) -> None:
        """Close every connection with 1001 at once; cut off those that have not answered
        the close frame within timeout_s (one after another, each unresponsive client would
        add websockets' own close timeout)."""
        connections = list(self.connections.values())
        closing = [
            asyncio.create_task(conn.ws.close(CloseCode.GOING_AWAY, "server shutting down"))
            for conn in connections
        ]
        if closing:
            _, late = await asyncio.wait(closing, timeout=timeout_s)
            for task in late:
                task.cancel()
        for conn in connections:
            conn.ws.transport.abort()  # no-op for a connection that is already closed

    # -- HTTP on the same port: server/routes.py --------------------------------------

    def _check_listen_query(self, request: Request) -> Response | None:
        """Deepgram refuses a bad query before the upgrade: HTTP 400 with its error body."""
        try:
            parse_listen_query(urlsplit(request.path).query, text_available=self.config.text)
        except ListenQueryError as e:
            body = bad_request_body(str(e), str(uuid.uuid4()))
            return response(400, body, JSON_TYPE)
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[str]
    ) -> str | None:
        wanted = self.subprotocols.get(urlsplit(connection.request.path).path)
        return wanted if wanted in offered else None

    def _ready(self) -> bool:
        return (
            self.worker.healthy()
            and not self.draining
            and self.worker.admits_sessions
            and not self.worker.admission().saturated
        )

    def _render_metrics(self, *, openmetrics: bool = False) -> str:
        self._count_open_audio()
        stats = self.worker.stats_snapshot()
        admission = self.worker.admission()
        # Multi-process mode: every ingest process's counts added up (README, "Process
        # model"); else this process's own.
        cluster = getattr(self.worker, "cluster_metrics", None)
        metrics, open_sessions = (
            (cluster.metrics, cluster.open_sessions)
            if cluster is not None
            else (self.metrics, len(self.connections))
        )
        return metrics.render_server(
            open_sessions=open_sessions,
            queue_depth=self.worker.queue_depth,
            worker_healthy=self.worker.healthy(),
            partials_shed=stats.partials_shed,
            jobs_failed=stats.jobs_failed,
            batch_size=stats.batch_size,
            held_bytes=stats.held_bytes,
            held_budget_bytes=self.config.max_held_audio_bytes,
            sessions_evicted=stats.sessions_evicted,
            admission=admission,
            openmetrics=openmetrics,
        )

    # -- WebSocket sessions ----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert self._loop is not None
        now = self._loop.time()
        capabilities = Capabilities(text=self.config.text, limits=self.config.limits)
        url = urlsplit(ws.request.path if ws.request else STREAM_PATH)
        context = SessionContext(
            uuid.uuid4().hex[:16], self.info, capabilities, now, self.config.vad, url.query
        )
        session = self.endpoints[url.path](context)
        origin = ws.request.headers.get("Origin") if ws.request else None
        # The allowlist guards against other web pages driving a visitor's browser here;
        # browsers always send Origin, and non-browser clients (ours included) send none.
        if (
            self.config.allow_origins
            and origin is not None
            and origin not in self.config.allow_origins
        ):
            await self._refuse(
                ws, session, ProtocolError("unauthorized", f"origin {quote(origin)} is not allowed")
            )
            return
        if self.draining:
            error = ProtocolError(
                "limit", "server shutting down: try again later", CloseCode.TRY_AGAIN_LATER
            )
            self.metrics.refusals["draining"] += 1
            await self._refuse(ws, session, error)
            return
        if len(self.connections) >= self.config.max_sessions:
            error = ProtocolError(
                "limit", "server full: try again later", CloseCode.TRY_AGAIN_LATER
            )
            self.metrics.refusals["sessions"] += 1
            await self._refuse(ws, session, error)
            return
        if not self.worker.admits_sessions:
            # Waiting audio fills most of --max-held-audio-mb: keep the rest for the open ones.
            error = ProtocolError(
                "limit", "server busy: try again later", CloseCode.TRY_AGAIN_LATER
            )
            self.metrics.refusals["memory"] += 1
            await self._refuse(ws, session, error)
            return
        admission = self.worker.admit(session.id)
        if not admission.admits:
            # The open sessions' predicted demand leaves no room for this one's: refuse it
            # now rather than let every session's latency grow (server/admission.py).
            error = ProtocolError(
                "limit",
                "server at capacity: try again later",
                CloseCode.TRY_AGAIN_LATER,
                retry_after_ms=admission.retry_after_ms,
            )
            self.metrics.refusals["capacity"] += 1
            await self._refuse(ws, session, error)
            return
        conn = _Connection(ws, session)
        self.connections[session.id] = conn
        self.metrics.sessions_total += 1
        writer = asyncio.create_task(self._write(conn))
        # Protocols whose server speaks first (OpenAI's session.created) do it here.
        self._act(conn, session.opened, now)
        try:
            async for message in ws:
                self._act(conn, session.receive, message, self._loop.time())
        except ConnectionClosed:
            pass
        finally:
            # The session cancels its own work and closes; the Close only ends the writer.
            self._act(conn, session.connection_lost, self._loop.time())
            self._count_audio(conn)
            conn.outbox.put_nowait(Close(CloseCode.NORMAL))
            await writer
            del self.connections[session.id]
            self.worker.session_closed(session.id)

    def _act(self, conn: _Connection, step: Callable[..., list[Action]], *args: object) -> None:
        """Run one session step and carry out its actions.

        A step that raises is a server bug, and it fails that session alone: the client gets
        an internal error and 1011, instead of a silent close (a message), a session that
        waits forever (a model result) or a dead ticker for every session (timeouts).
        """
        try:
            actions = step(*args)
        except Exception:
            log.exception("session %s failed", conn.session.id)
            error = ProtocolError("internal", "internal server error; see the server log")
            try:
                actions = conn.session.fail(error)  # also cancels the session's jobs
            except Exception:
                log.exception("session %s could not fail cleanly", conn.session.id)
                actions = [Close(CloseCode.INTERNAL_ERROR, "internal")]
        self._perform(conn, actions)

    def _perform(self, conn: _Connection, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Submit):
                if not conn.closing:  # evicted below while acting: drop the rest
                    self._evict(self.worker.submit(action.job))
            elif isinstance(action, Cancel):
                self.worker.cancel(action.job)
            elif isinstance(action, Count):
                self.metrics.observe_message(action.message)
            else:
                if isinstance(action, Send):
                    self.metrics.observe_message(action.message)
                else:
                    conn.closing = True
                    # Its Close, counted once. getattr: a session machine of another protocol
                    # may have no window budget of its own.
                    if getattr(conn.session, "over_window_budget", False):
                        self.metrics.window_budget_rejections += 1
                conn.outbox.put_nowait(action)

    def _evict(self, sessions: list[str]) -> None:
        """Fail the sessions whose waiting work the worker dropped to stay within the held-audio
        budget (the ones holding most): 1013, so that their clients retry later."""
        for session_id in sessions:
            conn = self.connections.get(session_id)
            if conn is not None:
                error = ProtocolError(
                    "limit",
                    "the server is overloaded: this session holds the most waiting audio",
                    CloseCode.TRY_AGAIN_LATER,
                )
                self._act(conn, conn.session.fail, error)

    async def _write(self, conn: _Connection) -> None:
        """Send the session's messages in order; a Close ends the connection."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                action = await conn.outbox.get()
                if isinstance(action, Close):
                    await conn.ws.close(action.code, action.reason)
                    return
                await conn.ws.send(action.message.to_json())

    def _count_open_audio(self) -> None:
        """Bring the audio counter up to date for the open sessions: audio is counted when
        metrics are read (or published) and when a session ends, not per message."""
        for conn in self.connections.values():
            self._count_audio(conn)

    def _count_audio(self, conn: _Connection) -> None:
        """Add what the session received since it was last counted to the audio counter."""
        seconds = conn.session.audio_seconds
        self.metrics.audio_seconds_in += seconds - conn.audio_seconds
        conn.audio_seconds = seconds

    def _result_from_worker(self, job: Job, result: JobResult) -> None:
        """Called on the worker thread: hand over to the event loop, never block the worker.

        A batch that outlives a timed-out drain finishes after the loop has closed: its
        results have nobody to go to and are dropped.
        """
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed
            self._loop.call_soon_threadsafe(self._deliver, job, result)

    def _evicted_by_worker(self, sessions: Sequence[str]) -> None:
        """A WorkerProxy's evictions, which come after submit returned: on its reader thread."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop is closed
            self._loop.call_soon_threadsafe(self._evict, list(sessions))

    def _deliver(self, job: Job, result: JobResult) -> None:
        conn = self.connections.get(job.session)
        if conn is not None:
            self._act(conn, conn.session.job_done, job, result, self._loop.time())

    async def _tick(self) -> None:
        publish = getattr(self.worker, "publish_metrics", None)  # multi-process mode
        while True:
            await asyncio.sleep(1.0)
            if publish is not None:
                self._count_open_audio()
                publish(self.metrics, len(self.connections))
            now = self._loop.time()
            for conn in list(self.connections.values()):
                self._act(conn, conn.session.check_timeouts, now)

    async def _refuse(
        self, ws: ServerConnection, session: SessionMachine, error: ProtocolError
    ) -> None:
        """Turn a connection away with an error and a close, counted like any error sent."""
        with contextlib.suppress(ConnectionClosed):
            for action in session.fail(error):
                if isinstance(action, Send):
                    self.metrics.observe_message(action.message)
                    await ws.send(action.message.to_json())
                elif isinstance(action, Close):
                    await ws.close(action.code, action.reason)


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig,
    tokenizer: IchigoTokenizer,
    info: ModelInfo,
    listener: Listener | None = None,
) -> AsyncIterator[StreamServer]:
    """A warmed-up, started server that drains on exit (run_server, tests, embedding).

    listener: a socket bound (and TLS loaded) beforehand, as run_server does before loading
    the model; None binds config.host:config.port here.

    Warm-up is model work: it runs in a worker thread, so the event loop (other servers'
    sessions in an embedding process, the signal handlers) never waits for it.
    """
    server = StreamServer(config, tokenizer, info)
    log.info("warming up the model")
    await asyncio.to_thread(server.worker.warm_up, text=config.text)
    await server.start(listener)
    try:
        yield server
    finally:
        if not server.draining:
            await server.drain()
