"""HTTP on the stream port: token checks for upgrades, health, metrics, the page; 4xx for the rest.

websockets hands every request to HttpRoutes (its process_request). Nothing a client sends
reaches the file system: the page's files are a fixed allowlist read once at start-up. A
malformed request gets a 4xx and, at most, one log line (several of them in a row: one line
per LOG_EVERY_S with their count), quoting no more than a short prefix of what it sent.
"""

from __future__ import annotations

import email.utils
import hmac
import itertools
import logging
import time
from collections.abc import Callable, Container, Mapping
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger("ichigo_stream.server")

STATIC = Path(__file__).parent / "static"
# URL path -> file in STATIC: the only files the page is made of (tests/unit/test_routes.py
# checks that it lists every file there).
STATIC_FILES = {
    "/": "index.html",
    "/app.js": "app.js",
    "/capture-worklet.js": "capture-worklet.js",
    "/llm-format.js": "llm-format.js",
    "/protocol.js": "protocol.js",
    "/style.css": "style.css",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css",
}
PLAIN_TYPE = "text/plain; charset=utf-8"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ALLOWED_METHODS = ("GET", "HEAD")
# On every response: the page loads only its own files and connects only to its own server
# ('self' covers ws:/wss: of the same host in CSP 3), no other site may frame it (clickjacking
# a microphone page), no MIME sniffing, and no URL (with a ?token=) in a Referer.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
# OpenAI's browser form of the API key: a subprotocol, as a page cannot set headers.
OPENAI_KEY_SUBPROTOCOL = "openai-insecure-api-key."
SERVER_HEADER = "ichigo-stream"  # websockets' default names the Python and websockets versions
LOG_EVERY_S = 10.0
QUOTE_CHARS = 80  # of a request's path, in a log line


class BadRequest(Exception):
    """A request this server cannot read: answered 400, logged at most once per LOG_EVERY_S."""


class Throttle:
    """At most one event per `every_s` goes through; the others are counted."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def take(self) -> int | None:
        """None: leave this one out. Else it goes through: the count left out since the last."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            self._suppressed += 1
            return None
        suppressed, self._last, self._suppressed = self._suppressed, now, 0
        return suppressed


class RateLimitedLog:
    """One warning line per `every_s` at most, counting the events it did not log."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.throttle = Throttle(every_s, clock)

    def warning(self, message: str) -> bool:
        """Log message (with the count since the last line) unless one went out lately."""
        suppressed = self.throttle.take()
        if suppressed is None:
            return False
        log.warning("%s%s", message, f" (and {suppressed} more since)" if suppressed else "")
        return True


class ResponseLogFilter(logging.Filter):
    """On the logger websockets is given: its line for each plain HTTP answer ("connection
    rejected (404 Not Found)", "HTTP response sent (200 OK)") at most once per LOG_EVERY_S,
    with the count of those left out, so that a client repeating requests cannot fill the
    log. A 400 is left out altogether: HttpRoutes logs its reason itself. Every other line of
    websockets (connections opened and closed, errors) passes."""

    RESPONSE_LINES = frozenset({"connection rejected (%d %s)", "HTTP response sent (%d %s)"})

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.throttle = Throttle(every_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.RESPONSE_LINES:
            return True
        if record.args and record.args[0] == 400:
            return False
        suppressed = self.throttle.take()
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more HTTP answers since)"
        return True


def websockets_logger() -> logging.Logger:
    """The logger to hand websockets' serve(): ours, its per-request lines rate-limited."""
    logger = logging.getLogger("ichigo_stream.server.websockets")
    if not any(isinstance(f, ResponseLogFilter) for f in logger.filters):
        logger.addFilter(ResponseLogFilter())
    return logger


def quote_path(path: str) -> str:
    text = repr(path)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def response(
    status: int,
    body: str | bytes = b"",
    content_type: str = PLAIN_TYPE,
    *,
    head: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """A complete HTTP response: security headers, the length of the body, no body for HEAD."""
    data = body.encode() if isinstance(body, str) else body
    all_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            *SECURITY_HEADERS,
            *headers,
        ]
    )
    return Response(status, HTTPStatus(status).phrase, all_headers, b"" if head else data)


def presented_credentials(request: Request) -> list[str]:
    """The tokens a request presents, in every form the endpoints' own clients use:
    `Authorization: Bearer X` (ours, OpenAI's) or `Token X` (Deepgram's), `?token=X`
    (browsers), and the subprotocols browsers offer for lack of headers: `token`, `X`
    (Deepgram's) and `openai-insecure-api-key.X` (OpenAI's).

    Several Authorization headers are a BadRequest (which one would count?)."""
    values = request.headers.get_all("Authorization")
    if len(values) > 1:
        raise BadRequest("several Authorization headers")
    candidates = []
    if values:
        scheme, _, credential = values[0].partition(" ")
        if scheme.lower() in ("bearer", "token"):
            candidates.append(credential)
    candidates += parse_qs(urlsplit(request.path).query).get("token", [])
    offered = [
        p.strip()
        for value in request.headers.get_all("Sec-WebSocket-Protocol")
        for p in value.split(",")
    ]
    candidates += [key for marker, key in itertools.pairwise(offered) if marker == "token"]
    candidates += [
        p.removeprefix(OPENAI_KEY_SUBPROTOCOL)
        for p in offered
        if p.startswith(OPENAI_KEY_SUBPROTOCOL)
    ]
    return candidates


def token_matches(request: Request, token: str) -> bool:
    """Whether the request presents `token`, compared in constant time (no timing leak)."""
    expected = token.encode()
    return any(
        # Header values come decoded with surrogateescape: encode them back the same way.
        hmac.compare_digest(c.encode("utf-8", "surrogateescape"), expected)
        for c in presented_credentials(request)
    )


def require_token(request: Request, token: str | None) -> Response | None:
    """None when the request may go on (no token configured, or it presents it); else the
    401 to answer. For every endpoint behind --auth-token, WebSocket or not."""
    if token is None or token_matches(request, token):
        return None
    return response(
        401,
        "unauthorized: a valid bearer token is required\n",
        head=request.method == "HEAD",
        headers=(("WWW-Authenticate", 'Bearer realm="ichigo-stream"'),),
    )


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: URL path -> (contents, content type)."""
    return {
        path: ((STATIC / name).read_bytes(), CONTENT_TYPES[Path(name).suffix])
        for path, name in STATIC_FILES.items()
    }


class HttpRoutes:
    """process_request for the stream port: None lets a WebSocket upgrade go on.

    websocket_paths: the WebSocket endpoints, all behind the same token (a live container:
    StreamServer's endpoints by path may grow after this is made)."""

    def __init__(
        self,
        *,
        token: str | None,
        metrics_token: str | None,
        websocket_paths: Container[str],
        live: Callable[[], bool],
        ready: Callable[[], bool],
        metrics: Callable[[bool], str],
        upgrade_checks: Mapping[str, Callable[[Request], Response | None]] | None = None,
    ) -> None:
        self.token = token
        # By path: what an endpoint checks of an authorized upgrade before the handshake
        # (e.g. /v1/listen's query: Deepgram answers a bad one with HTTP 400).
        self.upgrade_checks = upgrade_checks if upgrade_checks is not None else {}
        self.metrics_token = metrics_token if metrics_token is not None else token
        self.websocket_paths = websocket_paths
        self.live = live
        self.ready = ready
        self.metrics = metrics
        self.static = load_static()
        self.bad_requests = RateLimitedLog()

    def __call__(self, _connection: object, request: Request) -> Response | None:
        try:
            return self._route(request)
        except BadRequest as e:
            self.bad_requests.warning(f"bad HTTP request {quote_path(request.path)}: {e}")
            return response(400, f"bad request: {e}\n", head=request.method == "HEAD")

    def _route(self, request: Request) -> Response | None:
        head = request.method == "HEAD"
        if request.method not in ALLOWED_METHODS:
            return response(
                405, "method not allowed\n", headers=(("Allow", ", ".join(ALLOWED_METHODS)),)
            )
        path = urlsplit(request.path).path
        if path in self.websocket_paths:
            refusal = require_token(request, self.token)
            if refusal is None and head:
                # What a GET without an upgrade gets from websockets, without its body.
                upgrade = (("Upgrade", "websocket"),)
                return response(426, "a WebSocket endpoint\n", head=True, headers=upgrade)
            if refusal is None and (check := self.upgrade_checks.get(path)) is not None:
                return check(request)
            return refusal  # None: on with the handshake
        if path in ("/livez", "/healthz"):
            live = self.live()
            return response(200 if live else 503, "ok\n" if live else "unavailable\n", head=head)
        if path == "/readyz":
            ready = self.ready()
            return response(200 if ready else 503, "ok\n" if ready else "unavailable\n", head=head)
        if path == "/metrics":
            refusal = require_token(request, self.metrics_token)
            if refusal is not None:
                return refusal
            # OpenMetrics for a scraper that asks for it; Prometheus text 0.0.4 otherwise.
            openmetrics = "application/openmetrics-text" in ",".join(
                request.headers.get_all("Accept")
            )
            kind = OPENMETRICS_TYPE if openmetrics else PROMETHEUS_TYPE
            return response(200, self.metrics(openmetrics), kind, head=head)
        if path in self.static:
            body, kind = self.static[path]
            return response(200, body, kind, head=head)
        return response(404, "not found\n", head=head)
