"""The browser page at /: static files, and the page itself in headless Chromium.

Chromium runs with a fake microphone that plays ichigo_stream/assets/sample.wav once; the
test drives it over the Chrome DevTools protocol (a small client on `websockets`, no Node),
waits for token cells and final segments, stops the stream, checks the page's state and
saves a screenshot to the test's tmp_path (copied to $ICHIGO_TEST_ARTIFACTS when set).

Chromium is a test tool (.ci/install): missing, the tests fail in CI and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from system_tools import require_tool
from websockets.sync.client import ClientConnection, connect

from ichigo_stream.assets import sample_path
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.options import LoadOptions
from ichigo_stream.tokens import format_tokens
from ichigo_stream_server.app import running_server
from ichigo_stream_server.config import ServerConfig
from ichigo_stream_server.routes import STATIC

ROOT = Path(__file__).resolve().parents[2]
SPEECH = sample_path()
SPEECH_SECONDS = 12.7
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_files) -> tuple[Any, Any, LoadOptions]:
    load = LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper))
    tokenizer, info = load_tokenizer(load)
    return tokenizer, info, load


@contextlib.contextmanager
def _serving(config: ServerConfig, tokenizer: Any, info: Any) -> Iterator[int]:
    """running_server on its own event-loop thread; yields the port."""
    started: dict[str, Any] = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with running_server(config, tokenizer, info) as server:
                started["port"] = server.port
                ready.set()
                await stop.wait()
        except BaseException as e:  # reported to the test thread below
            started["error"] = e
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start within 60 s"
    if "error" in started:
        raise started["error"]
    try:
        yield started["port"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def base_url(tiny) -> Iterator[str]:
    """A real server (tiny random model) on a free port."""
    tokenizer, info, load = tiny
    with _serving(ServerConfig(port=0, load=load), tokenizer, info) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tls_base_url(tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same server over TLS (https: and wss:), with a throwaway self-signed certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = require_tool("openssl", why="to make a test certificate")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tokenizer, info, load = tiny
    config = ServerConfig(port=0, load=load, certfile=str(cert), keyfile=str(key))
    with _serving(config, tokenizer, info) as port:
        yield f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def chromium() -> str:
    override = os.environ.get("CHROMIUM")
    names = (override,) if override else CHROMIUM_CANDIDATES
    return require_tool(*names, why="the browser page tests; or set CHROMIUM=/path")


# -- a minimal Chrome DevTools protocol client ------------------------------------------------


class DevTools:
    """One page of a Chromium started with --remote-debugging-port=0, driven over CDP."""

    def __init__(self, ws: ClientConnection, session: str) -> None:
        self.ws = ws
        self.session = session
        self.ids = itertools.count(1)
        self.console: list[str] = []  # console errors and uncaught exceptions

    @classmethod
    def attach(cls, ws: ClientConnection) -> DevTools:
        browser = cls(ws, "")
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)
        page = cls(ws, session["sessionId"])
        page.call("Runtime.enable")
        page.call("Page.enable")
        return page

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """A command to the page (or, for Browser.* and Target.*, to the browser)."""
        call_id = next(self.ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params}
        if self.session and not method.startswith(("Browser.", "Target.")):
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            reply = json.loads(raw)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method} failed: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.console.append("console.error: " + " ".join(map(str, args)))

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        result = self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(
                details.get("exception", {}).get("description") or details.get("text")
            )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        error = ""
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as e:  # e.g. the page is still loading
                error, value = f" (last error: {e})", None
            if value:
                return value
            time.sleep(0.25)
        try:
            where = self.evaluate("location.href + ' ' + document.readyState")
        except RuntimeError as e:
            where = str(e)
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {what}{error}; page: {where}"
        )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))


@pytest.fixture
def browser(chromium: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DevTools]:
    """Headless Chromium whose microphone plays SPEECH once.

    Indirect params: {"deny_mic": True} refuses the microphone; {"args": [...]} adds flags.
    """
    param = getattr(request, "param", {})
    deny_mic = param.get("deny_mic", False)
    profile = tmp_path / "profile"
    args = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--window-size=1280,1000",
        # Fake UI: every getUserMedia is allowed without a prompt (unless the test denies).
        "--deny-permission-prompts" if deny_mic else "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={SPEECH}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        *param.get("args", ()),
        "about:blank",
    ]
    log = (tmp_path / "chromium.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Chromium did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.1)
        port, path = port_file.read_text().split("\n")[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10) as ws:
            yield DevTools.attach(ws)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- static files ------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_static_files_are_served_with_their_content_types(base_url: str) -> None:
    status, kind, body = _get(base_url + "/")
    assert status == 200 and kind.startswith("text/html")
    assert '<script type="module" src="app.js">' in body
    for name in ("app.js", "capture-worklet.js", "llm-format.js"):
        status, kind, body = _get(f"{base_url}/{name}")
        # Module scripts and audioWorklet.addModule need a JavaScript MIME type.
        assert status == 200 and kind.startswith("text/javascript"), (name, kind)
    status, kind, _ = _get(base_url + "/style.css")
    assert status == 200 and kind.startswith("text/css")


def test_static_files_reference_nothing_outside_the_server() -> None:
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "capture-worklet.js", "style.css"}
    for file in files:
        text = file.read_text()
        assert not re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[/:]", text, re.I), file.name
        assert not re.findall(r"\b(?:https?|wss?)://", text, re.I), file.name
        assert "@import" not in text and "url(http" not in text, file.name
    # Imports are relative to the page (served by this server), never bare or absolute URLs.
    for file in STATIC.glob("*.js"):
        source = file.read_text()
        specs = re.findall(r"""^\s*import\b[^'"\n;]*['"]([^'"]+)['"]""", source, re.M)
        specs += re.findall(r"""\bimport\(\s*['"]([^'"]+)['"]""", source)
        for spec in specs:
            assert spec.startswith("./"), (file.name, spec)


# -- the page in Chromium ------------------------------------------------------------------------

PAGE_STATE = """(() => {
  const q = (s) => document.querySelectorAll(s).length;
  const text = (id) => (document.getElementById(id) || {}).textContent || "";
  const err = document.getElementById("error");
  return {
    state: document.getElementById("status").dataset.state,
    status: text("status-text"),
    cells: q("#strip .cell"),
    finalCells: q("#strip .group.final .cell"),
    partialCells: q("#strip .group.partial .cell"),
    groups: q("#strip .group"),
    segments: q("#segments .segment"),
    latencies: [...document.querySelectorAll("#segments .latency")].map((e) => e.textContent),
    llm: [...document.querySelectorAll("#segments .llm")].map((e) => e.textContent),
    titles: [...document.querySelectorAll("#strip .group.final .cell")]
      .slice(0, 3).map((e) => e.title),
    error: err.hidden ? "" : err.textContent.trim(),
    audio: text("stat-audio"),
    model: text("model"),
    tokens: Number(text("stat-tokens")),
  };
})()"""


def test_page_streams_the_fake_microphone(
    browser: DevTools, base_url: str, tmp_path: Path, keep_artifact: Callable[[Path], None]
) -> None:
    t0 = time.monotonic()
    browser.call("Page.navigate", url=f"{base_url}/?autostart=1")
    state = lambda: browser.evaluate(PAGE_STATE)  # noqa: E731
    browser.wait_for("document.readyState === 'complete'", 10, "the page to load")
    try:
        browser.wait_for(
            "document.getElementById('status').dataset.state === 'streaming'", 20, "streaming"
        )
    except AssertionError as e:
        raise AssertionError(f"{e}: {state()}; console: {browser.console}") from None
    browser.wait_for(
        "document.querySelectorAll('#strip .cell').length > 0", 25, "the first token cells"
    )
    # Partials come first (dimmed), then the segment that replaces them (solid).
    browser.wait_for(
        "document.querySelectorAll('#strip .group.partial .cell').length > 0", 25, "partials"
    )
    browser.wait_for(
        "document.querySelectorAll('#segments .segment').length > 0", 30, "a final segment"
    )
    # A mid-stream picture for people: a final segment, the next one's partial, a live level.
    with contextlib.suppress(AssertionError):
        browser.wait_for(
            """document.querySelector('#segments .segment')
                && document.querySelector('#strip .group.partial .cell')
                && Number(document.getElementById('level').getAttribute('aria-valuenow')) > -50""",
            8,
            "a mid-stream moment",
        )
    browser.screenshot(tmp_path / "page-live.png")
    # Let the whole recording play (it ends with silence, so its last segment closes too).
    remaining = SPEECH_SECONDS + 1.5 - (time.monotonic() - t0)
    browser.wait_for(
        f"""(() => {{
            const audio = parseFloat(document.getElementById('stat-audio').textContent);
            return audio >= {SPEECH_SECONDS + 1.0} && !document.querySelector('#strip .partial');
        }})()""",
        max(remaining, 0) + 15,
        "the recording to play to its end",
    )
    browser.evaluate("document.getElementById('start').click()")  # Stop
    browser.wait_for(
        "document.getElementById('status').dataset.state === 'stopped'", 15, "done after stop"
    )
    final = state()

    screenshot = tmp_path / "page.png"
    browser.screenshot(screenshot)
    keep_artifact(screenshot)  # for humans, where $ICHIGO_TEST_ARTIFACTS names a folder
    keep_artifact(tmp_path / "page-live.png")

    assert final["error"] == "", final
    assert browser.console == [], browser.console
    assert final["segments"] >= 2, final  # three sentences with pauses
    assert final["finalCells"] == final["cells"] == final["tokens"] > 0, final
    assert final["partialCells"] == 0, final
    # Every final segment's cell count is its share of 25 tokens per second of audio.
    assert final["groups"] == final["segments"], final
    assert final["status"].startswith("Stopped"), final
    assert "16 kHz" in final["model"] and "2561 codes" in final["model"], final
    assert all(re.match(r"token \d+ · \d+\.\d\d s", t) for t in final["titles"]), final
    for latency in final["latencies"]:
        # end-of-speech latency from the capture clock, and the server's endpoint_ms
        assert re.fullmatch(r"latency \d+(\.\d+)? m?s · server \d+(\.\d+)? m?s", latency), latency
    # The cells are the segment's tokens: their ids give back the LLM text shown.
    ids = browser.evaluate(
        """[...document.querySelectorAll('#strip .group.final')].map((g) =>
            [...g.querySelectorAll('.cell')].map((c) => Number(c.title.split(' ')[1])))"""
    )
    assert [format_tokens(t, "ichigo-rle") for t in ids] == final["llm"]

    # Copy: the first segment's LLM text lands on the clipboard.
    browser.call(
        "Browser.grantPermissions",
        permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
        origin=base_url,
    )
    browser.call("Emulation.setFocusEmulationEnabled", enabled=True)
    browser.evaluate("document.querySelector('#segments .copy').click()")
    browser.wait_for(
        "document.querySelector('#segments .copy').textContent.startsWith('Copied')",
        5,
        "the copy button to confirm",
    )
    assert browser.evaluate("navigator.clipboard.readText()") == final["llm"][0]


def test_page_modules_in_the_browser(browser: DevTools, base_url: str) -> None:
    """The page's own modules, run by Chromium: LLM text parity and the resampler's filter."""
    browser.call("Page.navigate", url=f"{base_url}/?partials=0")
    browser.wait_for("document.readyState === 'complete'", 10, "the page to load")
    cases = [[], [5], [7, 7, 7, 1, 2, 2], [2560] * 150 + [0, 9, 9], list(range(30))]
    got = browser.evaluate(
        f"""import('/llm-format.js').then((m) => {json.dumps(cases)}.map((t) =>
            [m.formatTokens(t, 'ichigo'), m.formatTokens(t, 'ichigo-rle')]))"""
    )
    assert got == [[format_tokens(t, "ichigo"), format_tokens(t, "ichigo-rle")] for t in cases]

    # Tones through the worklet's resampler from common mic rates to 16 kHz: the passband is
    # flat, and what would alias (>= 8 kHz) is attenuated by at least 75 dB.
    gains = browser.evaluate(
        """import('/capture-worklet.js').then(({ Resampler }) => {
          const out = {};
          for (const rate of [48000, 44100]) {
            for (const f of [440, 3000, 6500, 8300, 11000, 15000, 20000]) {
              const r = new Resampler(rate, 16000);
              const x = new Float32Array(rate / 2);
              for (let k = 0; k < x.length; k++) x[k] = 0.5 * Math.sin(2 * Math.PI * f * k / rate);
              const y = [];
              for (let k = 0; k < x.length; k += 128) y.push(...r.push(x.subarray(k, k + 128)));
              const mid = y.slice(2000, 7000);
              const rms = Math.sqrt(mid.reduce((a, v) => a + v * v, 0) / mid.length);
              out[`${rate}:${f}`] = 20 * Math.log10(rms / (0.5 / Math.SQRT2) + 1e-12);
            }
          }
          return out;
        })"""
    )
    for key, db in gains.items():
        freq = int(key.split(":")[1])
        if freq <= 6500:
            assert abs(db) < 0.1, (key, db)
        else:
            assert db < -75, (key, db)
    assert browser.evaluate("document.getElementById('opt-partials').checked") is False

    # The stream URL follows the page: ws: for http:, wss: for https:, the page's ?token= on.
    urls = browser.evaluate(
        """import('/app.js').then(({ streamUrl }) => [
          streamUrl(new URL('http://h:8765/?autostart=1'), new URLSearchParams('autostart=1')),
          streamUrl(new URL('https://h/x/?token=a%20b'), new URLSearchParams('token=a%20b')),
        ])"""
    )
    assert urls == ["ws://h:8765/v1/stream", "wss://h/v1/stream?token=a+b"]


def test_page_without_server_text_falls_back_and_says_so(browser: DevTools, base_url: str) -> None:
    """?text=1 on a server without --text: a clear warning, text switched off, streaming on."""
    browser.call("Page.navigate", url=f"{base_url}/?autostart=1&text=1")
    browser.wait_for(
        """(() => {
            const err = document.getElementById('error');
            return document.getElementById('status').dataset.state === 'streaming'
                && !err.hidden && err.textContent.includes('--text');
        })()""",
        20,
        "streaming again without text, with a warning",
    )
    assert browser.evaluate("document.getElementById('opt-text').checked") is False
    assert browser.evaluate("document.getElementById('opt-text').disabled") is True
    assert browser.evaluate("document.getElementById('caption-panel').hidden") is True
    browser.evaluate("document.getElementById('start').click()")
    browser.wait_for(
        "document.getElementById('status').dataset.state === 'stopped'", 15, "done after stop"
    )
    assert browser.console == [], browser.console


@pytest.mark.parametrize("browser", [{"deny_mic": True}], indirect=True)
def test_page_says_when_the_microphone_is_denied(browser: DevTools, base_url: str) -> None:
    browser.call("Page.navigate", url=f"{base_url}/?autostart=1")
    message = browser.wait_for(
        """(() => {
            const err = document.getElementById('error');
            return !err.hidden && document.getElementById('status').dataset.state === 'error'
                && err.textContent;
        })()""",
        15,
        "an error on screen",
    )
    assert "Microphone access denied" in message, message
    assert browser.evaluate("document.getElementById('start').textContent.trim()") == "Start"
    assert browser.console == [], browser.console


@pytest.mark.parametrize("browser", [{"args": ["--ignore-certificate-errors"]}], indirect=True)
def test_page_over_https_streams_over_wss(browser: DevTools, tls_base_url: str) -> None:
    browser.call("Page.navigate", url=f"{tls_base_url}/?autostart=1")
    browser.wait_for(
        "document.querySelectorAll('#strip .cell').length > 0", 30, "token cells over wss"
    )
    url = browser.evaluate("document.getElementById('ws-url').textContent")
    assert url.startswith("wss://127.0.0.1:") and url.endswith("/v1/stream"), url
    browser.evaluate("document.getElementById('start').click()")
    browser.wait_for(
        "document.getElementById('status').dataset.state === 'stopped'", 15, "done after stop"
    )
    assert browser.evaluate("document.getElementById('error').hidden") is True
    assert browser.console == [], browser.console
