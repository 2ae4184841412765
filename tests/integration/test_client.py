"""ichigo_stream.client and `ichigo-stream send` against the real server and a random tiny model.

The server runs in-process (running_server, port 0) except where it must die: the restart
test runs `ichigo-stream serve` as a subprocess on a fixed port, kills it with SIGKILL
mid-stream and starts it again there. What the client yields is judged against the segmenter
and the model called directly, or against an uninterrupted run through the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from models import ModelFiles
from system_tools import require_tool

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import float32_to_pcm16, load_audio
from ichigo_stream.client import (
    FLUSH,
    AuthenticationError,
    ClientError,
    ClientOptions,
    Connected,
    Connecting,
    ConnectionLost,
    Done,
    GaveUp,
    Partial,
    Reconnecting,
    ReconnectPolicy,
    Segment,
    SpeechStart,
    StartOptions,
    StreamEvent,
    stream,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import AudioError
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.options import LoadOptions
from ichigo_stream.segmentation import SegmentClosed, VadSegmenter
from ichigo_stream.server_process import ServerProcess
from ichigo_stream.tokens import to_ichigo
from ichigo_stream_server.app import StreamServer, running_server
from ichigo_stream_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = sample_path()
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck.",
    "Peter Piper picked a peck of pickled peppers.",
    "Red lorry, yellow lorry, red lorry.",
    "A stitch in time saves nine.",
)
# Quick retries: the restart test waits on them, and a test server is local.
FAST_RETRY = ReconnectPolicy(
    initial_delay_s=0.05, max_delay_s=0.5, max_attempts=None, max_total_s=120
)

Seg = tuple[float, float, tuple[int, ...]]
Model = tuple[IchigoTokenizer, ModelInfo]


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_files: ModelFiles) -> Model:
    files = tiny_model_files
    return load_tokenizer(LoadOptions(model=str(files.quantizer), whisper=str(files.whisper)))


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return load_audio(SAMPLE)


@pytest.fixture(scope="module")
def sentences(speak: Callable[..., np.ndarray]) -> np.ndarray:
    """~21 s: six espeak-ng sentences, each followed by 1 s of silence (digital zeros)."""
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    parts = [silence[: SAMPLE_RATE // 2]]
    for text in SENTENCES:
        parts += [speak(text), silence]
    return np.concatenate(parts)


def serve(model: Model, **config: object) -> contextlib.AbstractAsyncContextManager[StreamServer]:
    tokenizer, info = model
    options: dict = {"port": 0, "drain_timeout_s": 10.0, **config}
    return running_server(ServerConfig(**options), tokenizer, info)


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/stream"


async def chunks(
    audio: np.ndarray | bytes, size: int, realtime: float | None = None, flush_at: int = -1
) -> AsyncIterator[object]:
    """audio in chunks of `size` (samples or bytes), paced on an absolute schedule or not;
    FLUSH once the chunk ending at or after `flush_at` is out."""
    started = time.monotonic()
    per_second = SAMPLE_RATE * (2 if isinstance(audio, bytes) else 1)
    for at in range(0, len(audio), size):
        if realtime:
            await asyncio.sleep(max(0.0, started + at / per_second / realtime - time.monotonic()))
        yield audio[at : at + size]
        if at < flush_at <= at + size:
            yield FLUSH


async def collect(
    audio: AsyncIterator[object], options: ClientOptions, into: list[StreamEvent] | None = None
) -> list[StreamEvent]:
    """Everything the stream yields (also into `into`, as it comes: kept when it raises)."""
    events = [] if into is None else into
    async for event in stream(audio, options):
        events.append(event)
    return events


def connections(events: Sequence[StreamEvent]) -> list[Connected]:
    return [e for e in events if isinstance(e, Connected)]


def segments(events: Sequence[StreamEvent]) -> list[Seg]:
    return [(e.start, e.end, e.tokens) for e in events if isinstance(e, Segment)]


def expected_segments(
    tokenizer: IchigoTokenizer, audio: np.ndarray, flush_at: int = -1
) -> list[Seg]:
    """The segmenter (flushed at flush_at, if any) and the model called directly."""
    vad = VadSegmenter()
    if flush_at >= 0:
        events = vad.push(audio[:flush_at]) + vad.flush() + vad.push(audio[flush_at:])
    else:
        events = vad.push(audio)
    closed = [e.span for e in events + vad.finish() if isinstance(e, SegmentClosed)]
    tokens = tokenizer.quantize([torch.from_numpy(audio[s.start : s.end]) for s in closed])
    return [
        (s.start / SAMPLE_RATE, s.end / SAMPLE_RATE, tuple(t.tolist()))
        for s, t in zip(closed, tokens, strict=True)
    ]


def assert_protocol_order(events: Sequence[StreamEvent]) -> None:
    """connecting and connected (the server's ready) first, done last, one connection; per
    segment index: speech_start, then partials, then segment; segments in index order 0, 1, 2"""
    summary = [type(e).__name__ + str(getattr(e, "segment", "")) for e in events]
    assert isinstance(events[0], Connecting) and events[0].attempt == 1, summary
    assert isinstance(events[1], Connected) and events[1].connection == 0, summary
    assert events[1].ready.protocol == 1 and events[1].offset == 0.0, summary
    assert isinstance(events[-1], Done), summary
    kinds = Connecting | Connected | Reconnecting | GaveUp | Done
    assert sum(isinstance(e, kinds) for e in events) == 3, summary
    started: dict[int, float] = {}
    finished: set[int] = set()
    for event in events[2:-1]:
        if isinstance(event, SpeechStart):
            assert event.segment not in started, summary
            assert event.segment == len(started), summary
            started[event.segment] = event.start
        elif isinstance(event, Partial):
            assert started.get(event.segment) == event.start, summary
            assert event.segment not in finished, summary
        elif isinstance(event, Segment):
            assert started.get(event.segment) == event.start, summary
            assert event.segment == len(finished), summary
            finished.add(event.segment)
    assert finished == set(started), summary


# -- the library ----------------------------------------------------------------------------------


def test_importing_the_client_does_not_import_torch() -> None:
    code = (
        "import sys, ichigo_stream.client, ichigo_stream_client.send; "
        "bad = [m for m in ('torch', 'whisper') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.timeout(60)
def test_events_arrive_in_protocol_order_with_the_offline_segments(
    model: Model, sample: np.ndarray
) -> None:
    expected = expected_segments(model[0], sample)
    start = StartOptions(partials=True, partial_interval_ms=200, llm_format="ichigo")

    async def main() -> list[StreamEvent]:
        async with serve(model) as server:
            options = ClientOptions(url(server.port), start=start)
            return await collect(chunks(sample, 1600, realtime=4.0), options)

    events = asyncio.run(main())
    assert_protocol_order(events)
    assert len(expected) == 3
    assert segments(events) == expected
    assert any(isinstance(e, Partial) for e in events), "paced speech should get partials"
    done = events[-1]
    assert done == Done(segments=3, audio_seconds=len(sample) / SAMPLE_RATE)
    assert [c.connection for c in connections(events)] == [0]  # no reconnect
    for segment in (e for e in events if isinstance(e, Segment)):
        assert segment.llm == segment.to_ichigo() == to_ichigo(segment.tokens)


@pytest.mark.timeout(60)
def test_float_int16_and_bytes_input_give_the_same_segments(
    model: Model, sample: np.ndarray
) -> None:
    """Any dtype, encoding, channel count and chunking (bytes split mid-frame) is the same audio:
    sample.wav is 16-bit, so float -> int16 -> float is exact."""
    expected = expected_segments(model[0], sample)
    pcm = np.frombuffer(float32_to_pcm16(sample), dtype="<i2")
    f32_stereo = np.repeat(sample[:, None], 2, axis=1)
    cases = {
        "float32": (sample, 1600, StartOptions()),
        "int16": (pcm, 4000, StartOptions()),
        "bytes-odd-sizes": (pcm.tobytes(), 999, StartOptions()),
        "f32le-stereo": (f32_stereo, 7000, StartOptions(encoding="pcm_f32le", channels=2)),
    }

    async def main() -> dict[str, list[StreamEvent]]:
        async with serve(model) as server:
            runs = [
                collect(chunks(audio, size), ClientOptions(url(server.port), start=start))
                for audio, size, start in cases.values()
            ]
            return dict(zip(cases, await asyncio.gather(*runs), strict=True))

    for name, events in asyncio.run(main()).items():
        assert segments(events) == expected, name
        assert events[-1] == Done(3, len(sample) / SAMPLE_RATE), name


@pytest.mark.timeout(60)
def test_flush_marker_ends_the_segment_where_it_is_yielded(
    model: Model, sample: np.ndarray
) -> None:
    at = 96_000  # 6.0 s: the middle of the second sentence
    expected = expected_segments(model[0], sample, flush_at=at)
    assert len(expected) == 4 and expected[1][1] == at / SAMPLE_RATE

    async def main() -> list[StreamEvent]:
        async with serve(model) as server:
            return await collect(chunks(sample, 1600, flush_at=at), ClientOptions(url(server.port)))

    events = asyncio.run(main())
    assert_protocol_order(events)
    assert segments(events) == expected


@pytest.mark.timeout(60)
def test_a_wrong_token_raises_at_once_without_retrying(model: Model, sample: np.ndarray) -> None:
    # Would retry after a minute: a retry cannot hide under the generous bound below.
    patient = ReconnectPolicy(initial_delay_s=60.0, jitter=0.0, retry_initial=True)

    async def main() -> tuple[list[Exception], float, list[StreamEvent]]:
        async with serve(model, token="s3cret") as server:
            errors: list[Exception] = []
            began = time.monotonic()
            for token in ("wrong", None):
                options = ClientOptions(url(server.port), token=token, reconnect=patient)
                with pytest.raises(AuthenticationError) as raised:
                    await collect(chunks(sample, 1600), options)
                errors.append(raised.value)
            took = time.monotonic() - began
            good = ClientOptions(url(server.port), token="s3cret")
            return errors, took, await collect(chunks(sample[:1600], 1600), good)

    errors, took, events = asyncio.run(main())
    # Two refused handshakes take ~0.05 s here; 20 s leaves room for CI machines 5-7x slower
    # and is still far below the 60 s a retry would wait.
    assert took < 20.0, "an authentication failure must not be retried"
    assert all("401" in str(e) and e.code == "unauthorized" for e in errors)
    assert isinstance(events[1], Connected) and events[-1] == Done(0, 0.1)


@pytest.mark.timeout(60)
def test_wss_with_a_trusted_unverified_or_untrusted_certificate(
    model: Model, sample: np.ndarray, tmp_path: Path
) -> None:
    openssl = require_tool("openssl", why="to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    trusted = ssl.create_default_context(cafile=str(cert))

    async def main() -> list[list[StreamEvent]]:
        async with serve(model, certfile=str(cert), keyfile=str(key)) as server:
            wss = f"wss://localhost:{server.port}/v1/stream"
            with pytest.raises(ClientError, match="certificate verify failed"):
                await collect(chunks(sample, 1600), ClientOptions(wss))
            return [
                await collect(chunks(sample[:16000], 1600), ClientOptions(wss, ssl=context))
                for context in (trusted, False)
            ]

    for events in asyncio.run(main()):
        assert isinstance(events[1], Connected) and events[-1] == Done(1, 1.0)


@pytest.mark.timeout(60)
def test_a_failing_or_invalid_source_ends_the_stream_with_its_error(
    model: Model, sample: np.ndarray
) -> None:
    async def failing() -> AsyncIterator[object]:
        yield sample[:16000]
        raise RuntimeError("microphone unplugged")

    async def nan() -> AsyncIterator[object]:
        yield np.full(1600, np.nan, dtype=np.float32)

    async def main() -> None:
        async with serve(model) as server:
            options = ClientOptions(url(server.port))
            with pytest.raises(RuntimeError, match="microphone unplugged"):
                await collect(failing(), options)
            with pytest.raises(AudioError, match="NaN"):
                await collect(nan(), options)
            await _eventually(lambda: not server.connections)

    asyncio.run(main())


async def _eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(30)
def test_no_server_fails_at_once_unless_asked_to_retry() -> None:
    port = free_port()
    slow = ReconnectPolicy(initial_delay_s=0.01, max_attempts=3, retry_initial=True)

    async def main() -> tuple[float, float, list[StreamEvent]]:
        began = time.monotonic()
        failed: list[StreamEvent] = []
        with pytest.raises(ConnectionLost, match="cannot connect") as lost:
            await collect(chunks(b"\0\0", 2), ClientOptions(url(port)), failed)
        assert failed == [Connecting(url(port), 1), GaveUp(str(lost.value))]
        once = time.monotonic() - began
        retried: list[StreamEvent] = []
        with pytest.raises(ConnectionLost, match="after 3 failed attempt"):
            await collect(chunks(b"\0\0", 2), ClientOptions(url(port), reconnect=slow), retried)
        return once, time.monotonic() - began - once, retried

    once, took, retried = asyncio.run(main())
    # Refused connections to a closed local port fail in milliseconds and the three retries
    # wait at most 0.04 s each; the bounds are generous for slow CI machines (5-7x slower)
    # and still far below any default backoff. The events above prove the retry counts.
    assert once < 10.0 and took < 20.0
    # Each attempt is announced, each retry with its delay, and the give-up before the raise.
    assert [type(e) for e in retried] == [
        *(Connecting, Reconnecting) * 3,
        *(Connecting, GaveUp),
    ]
    assert [e.attempt for e in retried if isinstance(e, Connecting | Reconnecting)] == [
        *(1, 2, 2, 3, 3, 4, 4)
    ]
    assert all(0 < e.delay_s <= 0.04 for e in retried if isinstance(e, Reconnecting))


# -- a server killed and restarted mid-stream -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`ichigo-stream serve` on a fixed port, to be killed and started again there."""

    def __init__(self, files: ModelFiles, port: int, log: Path) -> None:
        self.files, self.port, self.log = files, port, log
        self.server: ServerProcess | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
        args = ["--port", str(self.port)]
        args += ["--model", str(self.files.quantizer), "--whisper", str(self.files.whisper)]
        with self.log.open("ab") as stderr:
            self.server = ServerProcess(args, env=env, stderr=stderr, start_timeout_s=120)
            ready = await asyncio.to_thread(self.server.start)
        assert ready.port == self.port, ready

    async def terminate(self) -> int:
        """SIGTERM: the server drains (finishes open segments, sends done) and exits."""
        assert self.server is not None
        return await asyncio.to_thread(self.server.stop, 30)

    async def kill(self) -> None:
        if self.server is not None:
            # SIGKILL: no drain, no close frames, sockets just vanish (nothing if it is gone).
            await asyncio.to_thread(self.server.stop, 10, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_server_killed_and_restarted_mid_stream_loses_no_segment(
    tiny_model_files: ModelFiles, sentences: np.ndarray, tmp_path: Path
) -> None:
    port = free_port()
    options = ClientOptions(url(port), reconnect=FAST_RETRY)
    server = ServeProcess(tiny_model_files, port, tmp_path / "serve.log")

    async def interrupted() -> tuple[list[StreamEvent], float]:
        events: list[StreamEvent] = []
        restart: asyncio.Task[None] | None = None
        killed_at = 0.0

        async def restart_later() -> None:
            await asyncio.sleep(1.0)
            await server.start()

        async for event in stream(chunks(sentences, 1600, realtime=4.0), options):
            events.append(event)
            if isinstance(event, Segment) and event.segment == 1 and restart is None:
                killed_at = event.end
                await server.kill()
                restart = asyncio.create_task(restart_later())
        assert restart is not None
        await restart
        return events, killed_at

    async def main() -> tuple[list[StreamEvent], list[StreamEvent], float]:
        await server.start()
        try:
            uninterrupted = await collect(chunks(sentences, 1600), options)
            events, killed_at = await interrupted()
        finally:
            await server.kill()
        return uninterrupted, events, killed_at

    uninterrupted, events, killed_at = asyncio.run(main())
    expected = segments(uninterrupted)
    assert len(expected) == len(SENTENCES), uninterrupted
    assert segments(events) == expected
    # One reconnect, resumed on the VAD's 30 ms frame grid at or just before the end of the
    # last segment received (segment 1, or 2 if it was already on its way when the server died).
    connected = connections(events)
    assert [c.connection for c in connected] == [0, 1]
    resumed = connected[1].offset
    ends = [end for _, end, _ in expected[1:3]]
    assert any(0 <= end - resumed < 0.03 for end in ends), (resumed, ends)
    assert round(resumed * SAMPLE_RATE) % 480 == 0
    assert killed_at == expected[1][1]
    # One index sequence and one set of totals across both connections.
    assert [e.segment for e in events if isinstance(e, Segment)] == list(range(len(expected)))
    assert events[-1] == Done(len(expected), len(sentences) / SAMPLE_RATE)
    # The outage as events: lost after progress (reconnect at once), then retries numbered
    # 2, 3, ... with backoff while the server was down, each announced before its attempt.
    retries = [e for e in events if isinstance(e, Reconnecting)]
    assert retries[0].delay_s == 0.0 and retries[0].attempt == 1
    assert [r.attempt for r in retries] == list(range(1, len(retries) + 1))
    assert all(r.delay_s > 0 for r in retries[1:])
    attempts = [e.attempt for e in events if isinstance(e, Connecting)]
    assert attempts == [1, *range(1, len(retries) + 1)]


async def gated(audio: np.ndarray, until: int, gate: asyncio.Event) -> AsyncIterator[object]:
    """audio[:until] at 4x real time, then nothing until the gate opens, then the rest."""
    async for chunk in chunks(audio[:until], 1600, realtime=4.0):
        yield chunk
    await gate.wait()
    async for chunk in chunks(audio[until:], 1600):
        yield chunk


@pytest.mark.timeout(180)
def test_a_draining_server_is_resumed_on_its_successor(
    tiny_model_files: ModelFiles, sentences: np.ndarray, tmp_path: Path
) -> None:
    """SIGTERM: the server finishes the session and sends done before the client's stop. That
    ends the connection, not the stream: the client resumes on the next server. The audio
    pauses in the silence after sentence 2, so the drain finds no open segment to cut short."""
    port = free_port()
    options = ClientOptions(url(port), reconnect=FAST_RETRY)
    server = ServeProcess(tiny_model_files, port, tmp_path / "serve.log")

    async def main() -> tuple[list[StreamEvent], list[StreamEvent], int]:
        await server.start()
        try:
            uninterrupted = await collect(chunks(sentences, 1600), options)
            pause = round((segments(uninterrupted)[1][1] + 0.6) * SAMPLE_RATE)
            gate, events, exit_code = asyncio.Event(), [], -1
            async for event in stream(gated(sentences, pause, gate), options):
                events.append(event)
                if isinstance(event, Segment) and event.segment == 1 and not gate.is_set():
                    exit_code = await server.terminate()
                    await server.start()
                    gate.set()
        finally:
            await server.kill()
        return uninterrupted, events, exit_code

    uninterrupted, events, exit_code = asyncio.run(main())
    assert exit_code == 0, server.log.read_text()
    assert segments(events) == segments(uninterrupted)
    assert [c.connection for c in connections(events)] == [0, 1]
    # The drain's done counts as progress: the client resumes at once, not after a backoff.
    assert next(e.delay_s for e in events if isinstance(e, Reconnecting)) == 0.0
    assert events[-1] == Done(len(SENTENCES), len(sentences) / SAMPLE_RATE)


# -- the send command -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_send_command_prints_every_segment_and_writes_jsonl(
    model: Model, sample: np.ndarray, tmp_path: Path
) -> None:
    expected = expected_segments(model[0], sample)
    out = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}

    async def main() -> tuple[int, str, str]:
        async with serve(model) as server:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "ichigo_stream", "send", str(SAMPLE), url(server.port)),
                *("--speed", "0", "--llm-format", "ichigo-rle", "-o", str(out)),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), 50)
            assert process.returncode is not None
            return process.returncode, stdout.decode(), stderr.decode()

    code, stdout, stderr = asyncio.run(main())
    assert code == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(lines) == len(expected), stdout
    for line, (start, end, tokens) in zip(lines, expected, strict=True):
        assert line.startswith(f"[{start:8.3f} - {end:8.3f}]") and f"{len(tokens)} tokens" in line
    assert "done: 3 segment(s)" in stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in events[:2]] == ["connecting", "connected"]
    assert events[1]["ready"]["type"] == "ready" and events[-1]["type"] == "done"
    assert [e["connection"] for e in events if e["type"] == "connected"] == [0]  # no reconnect
    written = [e for e in events if e["type"] == "segment"]
    assert [(e["start"], e["end"], tuple(e["tokens"])) for e in written] == expected
    assert all(e["llm"].startswith("<|sound_start|>") for e in written)
    done = events[-1]
    assert (done["segments"], done["audio_seconds"]) == (3, 12.692875), done
    assert "0 reconnect(s)" in stderr
