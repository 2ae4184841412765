"""`serve --workers 2`: the supervisor, two ingest processes on one port, one model process.

Real `ichigo-stream serve` processes with the tiny random model. Which ingest process holds a
session is read from /proc: each process's sockets (/proc/PID/fd) against the kernel's TCP
table (/proc/net/tcp*), so the server announces nothing for the tests' sake. Segments are
judged against the segmenter and the model called directly (streaming == offline).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from models import ModelFiles
from streaming import Outcome, WireClient

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import float32_to_pcm16
from ichigo_stream.client import (
    ClientOptions,
    Connected,
    ReconnectPolicy,
    Segment,
    StreamEvent,
    stream,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.options import LoadOptions
from ichigo_stream.segmentation import SegmentClosed, VadSegmenter
from ichigo_stream.server_process import ServerProcess

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck.",
    "Peter Piper picked a peck of pickled peppers.",
)
FAST_RETRY = ReconnectPolicy(
    initial_delay_s=0.05, max_delay_s=0.5, max_attempts=None, max_total_s=60
)
Seg = tuple[float, float, tuple[int, ...]]
TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    files = tiny_model_files
    options = LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    return load_tokenizer(options)[0]


@pytest.fixture(scope="module")
def sentences(speak: Callable[..., np.ndarray]) -> np.ndarray:
    """~13 s: four espeak-ng sentences, each followed by 1 s of silence (digital zeros)."""
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    parts = [silence[: SAMPLE_RATE // 2]]
    for text in SENTENCES:
        parts += [speak(text), silence]
    return np.concatenate(parts)


def expected_segments(tokenizer: IchigoTokenizer, audio: np.ndarray) -> list[Seg]:
    """The offline path: the segmenter and the model called directly."""
    vad = VadSegmenter()
    closed = [e.span for e in vad.push(audio) + vad.finish() if isinstance(e, SegmentClosed)]
    tokens = tokenizer.quantize([torch.from_numpy(audio[s.start : s.end]) for s in closed])
    return [
        (s.start / SAMPLE_RATE, s.end / SAMPLE_RATE, tuple(t.tolist()))
        for s, t in zip(closed, tokens, strict=True)
    ]


@pytest.fixture(scope="module")
def two_workers(
    tiny_model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One `serve --workers 2` for the tests that leave it serving (a killed ingest process
    is replaced), so they do not each pay its start-up."""
    with serve(tiny_model_files, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


def serve(files: ModelFiles, log: Path, *extra: str) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    args = ["--port", "0", "--model", str(files.quantizer), "--whisper", str(files.whisper)]
    # Every session admitted: these tests are about the process model, and on a loaded CI
    # machine the tiny model's measured capacity could refuse a session they need (admission
    # across processes: tests/unit/test_multiprocess_parts.py).
    args += ["--admission-headroom", "inf"]
    return ServerProcess(
        [*args, "--workers", "2", "--drain-timeout-s", "5", *extra],
        env=env,
        stderr=log.open("ab"),
        start_timeout_s=120,
    )


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def _tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every TCP socket (IPv4 and IPv6)."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16),
                             state, inode))  # fmt: skip
    return rows


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def ingest_processes(server: ServerProcess) -> dict[int, int]:
    """The supervisor's children listening on the port -> their open client connections."""
    port = server.ready.port
    table = _tcp_table()
    out = {}
    for pid in children(server.process.pid):
        try:
            inodes = _socket_inodes(pid)
        except OSError:
            continue
        mine = [row for row in table if row[3] in inodes and row[0] == port]
        if any(state == TCP_LISTEN for *_, state, _ in mine):
            out[pid] = sum(state == TCP_ESTABLISHED for *_, state, _ in mine)
    return out


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


async def chunks(audio: np.ndarray, size: int, realtime: float) -> AsyncIterator[np.ndarray]:
    started = time.monotonic()
    for at in range(0, len(audio), size):
        await asyncio.sleep(max(0.0, started + at / SAMPLE_RATE / realtime - time.monotonic()))
        yield audio[at : at + size]


def segments(events: Sequence[StreamEvent]) -> list[Seg]:
    return [(e.start, e.end, e.tokens) for e in events if isinstance(e, Segment)]


def connections(events: Sequence[StreamEvent]) -> int:
    return sum(isinstance(e, Connected) for e in events)


async def sessions_on_both(
    server: ServerProcess, audio: np.ndarray, realtime: float, per_process: int = 2
) -> list[tuple[asyncio.Task[None], list[StreamEvent]]]:
    """Start library-client sessions one by one until each ingest process holds
    `per_process` (the kernel picks the process by a hash of the connection's addresses)."""
    options = ClientOptions(server.ready.url, reconnect=FAST_RETRY)
    started: list[tuple[asyncio.Task[None], list[StreamEvent]]] = []

    async def run(events: list[StreamEvent]) -> None:
        async for event in stream(chunks(audio, 1600, realtime), options):
            events.append(event)

    for _ in range(16):
        counts = ingest_processes(server)
        if len(counts) == 2 and min(counts.values()) >= per_process:
            return started
        events: list[StreamEvent] = []
        started.append((asyncio.create_task(run(events)), events))
        while connections(events) == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the server side's accept
    raise AssertionError(f"16 sessions did not reach both processes: {ingest_processes(server)}")


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sessions_spread_over_both_ingest_processes_and_match_offline(
    two_workers: ServerProcess, tokenizer: IchigoTokenizer, sentences: np.ndarray
) -> None:
    server = two_workers
    expected = expected_segments(tokenizer, sentences)
    assert len(expected) == len(SENTENCES)
    assert len(ingest_processes(server)) == 2
    assert http_status(server.ready.healthz_url) == 200
    assert http_status(server.ready.page_url + "readyz") == 200

    async def main() -> list[list[StreamEvent]]:
        started = await sessions_on_both(server, sentences, realtime=4.0)
        await asyncio.gather(*(task for task, _ in started))
        return [events for _, events in started]

    results = asyncio.run(main())
    for events in results:
        assert connections(events) == 1
        assert segments(events) == expected
    # /metrics, whichever ingest process answers it, adds up both processes' sessions (their
    # counts reach it within a second or two).
    want = (f"ichigo_sessions_total {len(results)}", f"ichigo_segments_total {len(results) * 4}")
    deadline = time.monotonic() + 20
    agreeing = 0
    while agreeing < 6:  # several scrapes in a row: both processes answered some
        page = http_text(server.ready.metrics_url)
        agreeing = agreeing + 1 if all(line in page.splitlines() for line in want) else 0
        assert time.monotonic() < deadline, (want, page)
        time.sleep(0.05 if agreeing else 0.2)


@pytest.mark.timeout(150)
def test_a_killed_ingest_process_is_replaced_and_only_its_clients_resume(
    two_workers: ServerProcess, tokenizer: IchigoTokenizer, sentences: np.ndarray
) -> None:
    server = two_workers
    expected = expected_segments(tokenizer, sentences)

    async def main() -> tuple[list[list[StreamEvent]], int, dict[int, int]]:
        started = await sessions_on_both(server, sentences, realtime=3.0)
        await asyncio.sleep(1.5)  # mid-stream: some segments out already
        before = ingest_processes(server)
        victim = max(before, key=before.__getitem__)
        os.kill(victim, signal.SIGKILL)
        await asyncio.gather(*(task for task, _ in started))
        return [events for _, events in started], before[victim], ingest_processes(server)

    results, killed_sessions, after = asyncio.run(main())
    # Replaced: two ingest processes again (the victim's pid gone), and the server is live.
    assert len(after) == 2, after
    assert http_status(server.ready.healthz_url) == 200
    # Every session got every segment; exactly the killed process's sessions reconnected.
    for events in results:
        assert segments(events) == expected
    reconnected = [connections(events) for events in results]
    assert sorted(reconnected).count(2) == killed_sessions >= 2, reconnected
    assert set(reconnected) == {1, 2}, reconnected


@pytest.mark.timeout(120)
def test_sigterm_drains_every_ingest_process(
    tiny_model_files: ModelFiles, sentences: np.ndarray, tmp_path: Path
) -> None:
    """Sessions on both processes mid-segment: SIGTERM finishes each one's open segment,
    sends done, closes 1000, and the whole server exits 0 within the drain timeout + 1 s."""
    pcm = float32_to_pcm16(sentences)
    server = serve(tiny_model_files, tmp_path / "serve.log")
    server.start()
    try:

        async def main() -> tuple[list[Outcome], float, int]:
            clients = await wire_clients_on_both(server)
            # 2.5 s of audio each: the first sentence's segment is open when the drain begins.
            await asyncio.gather(*(c.send_audio(pcm[: 2 * 40_000]) for c in clients))
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*(c.finish(timeout=10) for c in clients))
            status = await asyncio.to_thread(server.process.wait, 10)
            return outcomes, time.monotonic() - started, status

        outcomes, took, status = asyncio.run(main())
    finally:
        server.stop()
    assert status == 0
    assert took < 5 + 1, took
    for outcome in outcomes:
        types = [m["type"] for m in outcome.messages]
        assert types[-1] == "done" and "segment" in types, outcome.summary()
        assert outcome.close_code == 1000, outcome.summary()


@pytest.mark.timeout(180)
def test_a_second_sigterm_during_the_drain_closes_every_session_at_once(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """Sessions on both processes with tens of seconds of model work queued (the sample 16
    times over, 48 segments, unpaced, one clip a batch): the first SIGTERM starts the drain,
    a second one ends it; every session is closed with 1001 without its done; status 143."""
    pcm, _ = sf.read(sample_path(), dtype="int16")
    speech = np.tile(pcm, 16).tobytes()
    flags = ["--max-batch", "1", "--max-realtime", "1e6", "--realtime-burst-s", "1e6"]
    # All 48 may wait at once (the default cap, 32, refuses a session whose model is that far
    # behind: a fast sender on a slow machine would be closed with 1013 before the drain).
    flags += ["--max-pending-segments", "64"]
    server = serve(tiny_model_files, tmp_path / "serve.log", *flags, "--drain-timeout-s", "600")
    server.start()
    try:

        async def main() -> tuple[list[Outcome], float, int]:
            clients = await wire_clients_on_both(server)
            await asyncio.gather(*(c.send_audio(speech, (32_000,)) for c in clients))
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # the drain has begun (and has far more than that to do)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(server.process.wait, 60)
            took = time.monotonic() - signalled
            return [await c.finish(30) for c in clients], took, status

        outcomes, took, status = asyncio.run(main())
    finally:
        server.stop()
    assert status == 128 + signal.SIGTERM
    assert took < 15, took  # a second for the close frames; the rest for a loaded machine
    undelivered = 0
    for outcome in outcomes:
        assert outcome.close_code == 1001 and outcome.done is None, outcome.summary()
        undelivered += 48 - len(outcome.segments)
    assert undelivered >= 20, f"only {undelivered} segments were left: no long drain to cut"


async def wire_clients_on_both(server: ServerProcess) -> list[WireClient]:
    """Started WireClient sessions, one at a time, until each ingest process holds one."""
    clients: list[WireClient] = []
    for _ in range(16):
        counts = ingest_processes(server)
        if len(counts) == 2 and min(counts.values()) >= 1:
            return clients
        client = await WireClient.connect(server.ready.port)
        await client.start()
        clients.append(client)
        await asyncio.sleep(0.05)
    raise AssertionError(f"16 sessions did not reach both processes: {ingest_processes(server)}")


def test_workers_1_is_the_single_process_server(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """--workers 1: no children but the model's threads: one process serves."""
    server = serve(tiny_model_files, tmp_path / "serve.log", "--workers", "1")
    with server:
        assert children(server.process.pid) == []
        assert http_status(server.ready.healthz_url) == 200


@pytest.mark.timeout(120)
def test_a_dead_model_process_ends_the_server_with_status_70(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """The weights are gone: the supervisor stops every ingest process and exits 70 (for the
    orchestrator to restart it whole), removing its ready file; no child is left behind."""
    server = serve(tiny_model_files, tmp_path / "serve.log")
    server.start()
    try:
        ingest = set(ingest_processes(server))
        (model,) = set(children(server.process.pid)) - ingest - resource_trackers(server)
        ready_file = server.ready_file
        assert ready_file is not None and ready_file.exists()
        os.kill(model, signal.SIGKILL)
        status = server.process.wait(30)
        assert not ready_file.exists()
    finally:
        server.stop()
    assert status == 70
    for pid in ingest:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def resource_trackers(server: ServerProcess) -> set[int]:
    """multiprocessing's resource tracker: a child of the supervisor that is not ours."""
    return {
        pid
        for pid in children(server.process.pid)
        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }
