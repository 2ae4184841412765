"""The stream port's HTTP routes without a socket: websockets' Request in, Response out.

The malformed requests of the abuse probe (a NUL in the path, a 300-character .js name, two
Authorization headers) get a 4xx; methods other than GET/HEAD get 405 with Allow; HEAD has no
body; the page is served only from the allowlist; /metrics sits behind its token; every
response carries the security headers. tests/integration/test_abuse_server.py sends the same
requests to a real server.
"""

from __future__ import annotations

import logging

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.streams import StreamReader

from ichigo_stream_server.routes import (
    SECURITY_HEADERS,
    STATIC,
    STATIC_FILES,
    HttpRoutes,
    RateLimitedLog,
    ResponseLogFilter,
)

STREAM = "/v1/stream"
TOKEN = "s3cret"


def routes(
    *,
    token: str | None = None,
    metrics_token: str | None = None,
    live: bool = True,
    ready: bool = True,
) -> HttpRoutes:
    return HttpRoutes(
        token=token,
        metrics_token=metrics_token,
        websocket_paths=frozenset({STREAM, "/v1/other"}),
        live=lambda: live,
        ready=lambda: ready,
        metrics=lambda openmetrics: "# EOF\n" if openmetrics else "ichigo_up 1\n",
    )


def request(path: str, method: str = "GET", headers: list[tuple[str, str]] = ()) -> Request:
    return Request(path, Headers([("Host", "localhost"), *headers]), method=method)


def call(r: HttpRoutes, *args: object, **kwargs: object) -> Response:
    response = r(None, request(*args, **kwargs))
    assert response is not None
    return response


def test_the_allowlist_is_every_file_of_the_page() -> None:
    assert sorted(STATIC_FILES.values()) == sorted(p.name for p in STATIC.iterdir() if p.is_file())


@pytest.mark.parametrize(
    "path",
    [
        "/app\x00.js",  # NUL: ValueError in Path.resolve before
        "/" + "a" * 300 + ".js",  # ENAMETOOLONG from is_file() before
        "/../pyproject.toml",
        "/%2e%2e/server/app.py",
        "/static/app.js",
        "/app.py",
        "/index.html/",
        "//etc/passwd",
    ],
)
def test_paths_outside_the_allowlist_are_404(path: str) -> None:
    response = call(routes(), path)
    assert response.status_code == 404


def test_the_page_and_its_files() -> None:
    r = routes()
    for path, name in STATIC_FILES.items():
        response = call(r, path)
        assert response.status_code == 200 and response.body == (STATIC / name).read_bytes()
    assert call(r, "/?partials=0").headers["Content-Type"].startswith("text/html")
    assert call(r, "/app.js").headers["Content-Type"].startswith("text/javascript")


def test_head_has_the_headers_and_no_body() -> None:
    r = routes()
    head_upgrade = call(r, STREAM, "HEAD")
    assert head_upgrade.status_code == 426 and head_upgrade.body == b""
    for path in ("/", "/app.js", "/livez", "/metrics", "/nothing"):
        get, head = call(r, path), call(r, path, "HEAD")
        assert head.status_code == get.status_code and head.body == b"", path
        assert head.headers["Content-Length"] == str(len(get.body)), path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "FOO"])
@pytest.mark.parametrize("path", ["/", STREAM, "/metrics", "/nothing"])
def test_other_methods_are_405_with_allow(method: str, path: str) -> None:
    response = call(routes(token=TOKEN), path, method)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"


def test_every_response_has_the_security_headers() -> None:
    r = routes(token=TOKEN)
    for path in ("/", "/style.css", "/livez", "/nothing", STREAM):
        response = call(r, path)
        for name, value in SECURITY_HEADERS:
            assert response.headers[name] == value, (path, name)
    csp = dict(SECURITY_HEADERS)["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp


# -- tokens ----------------------------------------------------------------------------------------


def test_websocket_paths_need_the_token_by_header_or_query() -> None:
    r = routes(token=TOKEN)
    for path in (STREAM, "/v1/other"):
        assert r(None, request(path, headers=[("Authorization", f"Bearer {TOKEN}")])) is None
        assert r(None, request(path, headers=[("Authorization", f"bearer {TOKEN}")])) is None
        assert r(None, request(f"{path}?token={TOKEN}")) is None
        for bad in ([], [("Authorization", "Bearer nope")], [("Authorization", TOKEN)]):
            refused = call(r, path, headers=bad)
            assert refused.status_code == 401, bad
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="ichigo-stream"'
    assert routes()(None, request(STREAM)) is None  # no token configured: open


def test_two_authorization_headers_are_400_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = routes(token=TOKEN)
    twice = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer other")]
    with caplog.at_level(logging.WARNING, logger="ichigo_stream.server"):
        for _ in range(100):
            assert call(r, STREAM, headers=twice).status_code == 400
    assert len(caplog.records) == 1, caplog.records
    assert "several Authorization headers" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None  # one line, no traceback


def parsed(raw: bytes) -> Request:
    """A request as websockets' own parser reads it off the wire."""
    reader = StreamReader()
    reader.feed_data(raw)
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete request")


def test_a_non_ascii_token_is_refused_not_a_500() -> None:
    raw = b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer caf\xe9\r\n\r\n"
    response = routes(token=TOKEN)(None, parsed(raw))
    assert response is not None and response.status_code == 401


def test_metrics_behind_the_metrics_token_or_else_the_auth_token() -> None:
    assert call(routes(), "/metrics").status_code == 200  # nothing configured: open
    for r, secret in ((routes(token=TOKEN), TOKEN), (routes(metrics_token="m"), "m")):
        assert call(r, "/metrics").status_code == 401
        ok = call(r, "/metrics", headers=[("Authorization", f"Bearer {secret}")])
        assert ok.status_code == 200 and ok.body == b"ichigo_up 1\n"
        assert call(r, f"/metrics?token={secret}").status_code == 200
    both = routes(token=TOKEN, metrics_token="m")  # the metrics token replaces the auth token
    assert call(both, f"/metrics?token={TOKEN}").status_code == 401
    assert call(both, "/metrics?token=m").status_code == 200
    accept = [("Accept", "application/openmetrics-text; version=1.0.0")]
    assert call(routes(), "/metrics", headers=accept).body == b"# EOF\n"


def test_livez_healthz_and_readyz() -> None:
    for live, ready in ((True, True), (True, False), (False, False)):
        r = routes(token=TOKEN, live=live, ready=ready)  # health needs no token
        for path in ("/livez", "/healthz"):
            assert call(r, path).status_code == (200 if live else 503)
        assert call(r, "/readyz").status_code == (200 if ready else 503)


def test_the_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ichigo_stream.server"):
        assert limited.warning("bad")
        for _ in range(41):
            now[0] += 0.1
            assert not limited.warning("bad")
        now[0] = 10.5
        assert limited.warning("bad")
    assert [r.getMessage() for r in caplog.records] == ["bad", "bad (and 41 more since)"]


def test_websockets_answer_lines_are_rate_limited() -> None:
    now = [0.0]
    response_filter = ResponseLogFilter(every_s=10.0, clock=lambda: now[0])

    def line(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("ws", logging.INFO, __file__, 1, msg, args, None)

    rejected = "connection rejected (%d %s)"
    assert response_filter.filter(line(rejected, 404, "Not Found"))
    assert not any(response_filter.filter(line(rejected, 404, "Not Found")) for _ in range(9))
    assert not response_filter.filter(line(rejected, 400, "Bad Request"))  # HttpRoutes logs it
    assert response_filter.filter(line("connection open"))  # other lines always pass
    now[0] = 11.0
    record = line("HTTP response sent (%d %s)", 200, "OK")
    assert response_filter.filter(record)
    assert record.getMessage() == "HTTP response sent (200 OK) (and 9 more HTTP answers since)"
