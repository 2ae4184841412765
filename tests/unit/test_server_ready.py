"""The server's readiness announcement (ServerReady) and the launcher's misuse errors: no
server runs here. (Real servers started through ServerProcess: integration/test_server_process.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.server_process import ServerProcess, ServerReady


def test_ready_announcement_round_trips_and_is_strict() -> None:
    ready = ServerReady.at("127.0.0.1", 8765, tls=False, pid=42)
    assert ready == ServerReady(
        url="ws://127.0.0.1:8765/v1/stream",
        host="127.0.0.1",
        port=8765,
        pid=42,
        page_url="http://127.0.0.1:8765/",
        healthz_url="http://127.0.0.1:8765/healthz",
        metrics_url="http://127.0.0.1:8765/metrics",
        protocol=1,
    )
    assert ServerReady.from_json(ready.to_json()) == ready
    line = json.loads(ready.event_line())
    assert line == {"event": "ready", **json.loads(ready.to_json())}
    assert ServerReady.from_json(ready.event_line()) == ready
    # A newer server may add fields; the known ones are checked strictly.
    assert ServerReady.from_json(json.dumps({**ready.to_dict(), "extra": [1]})) == ready
    for broken, problem in (
        ({**ready.to_dict(), "port": "8765"}, "'port' must be int"),
        ({**ready.to_dict(), "port": True}, "'port' must be int"),
        ({**ready.to_dict(), "url": None}, "'url' must be str"),
        ({k: v for k, v in ready.to_dict().items() if k != "pid"}, "'pid' must be int"),
        ({**ready.to_dict(), "event": "stopped"}, "not a ready announcement"),
    ):
        with pytest.raises(IchigoStreamError, match=problem):
            ServerReady.from_json(json.dumps(broken))
    with pytest.raises(IchigoStreamError, match="not JSON"):
        ServerReady.from_json("serving ws://127.0.0.1:8765/v1/stream")
    with pytest.raises(IchigoStreamError, match="not a JSON object"):
        ServerReady.from_json("[1]")


def test_ready_urls_reach_a_wildcard_server_on_loopback_and_say_tls() -> None:
    anywhere = ServerReady.at("0.0.0.0", 9000, tls=True, pid=1)
    assert anywhere.url == "wss://127.0.0.1:9000/v1/stream"
    assert anywhere.page_url == "https://127.0.0.1:9000/"
    ipv6 = ServerReady.at("::", 9000, tls=False, pid=1)
    assert ipv6.host == "::1" and ipv6.url == "ws://[::1]:9000/v1/stream"
    assert ServerReady.at("example.org", 1, tls=False, pid=1).metrics_url == (
        "http://example.org:1/metrics"
    )


def test_the_ready_file_is_written_atomically(tmp_path: Path) -> None:
    ready = ServerReady.at("127.0.0.1", 1, tls=False, pid=1)
    target = tmp_path / "ready.json"
    ready.write(target)
    ServerReady.at("127.0.0.1", 2, tls=False, pid=1).write(target)  # replaced, not appended
    assert ServerReady.from_json(target.read_text()).port == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready.json"]  # no temp file left


def test_stop_or_ready_before_start_is_an_error() -> None:
    server = ServerProcess(["--port", "0"])
    with pytest.raises(IchigoStreamError, match="not been started"):
        server.stop()
    with pytest.raises(IchigoStreamError, match="not ready"):
        server.ready  # noqa: B018
