"""Load generation: N sessions streaming their own speech at real time over real WebSockets.

Each session gets its own mix of speech (espeak-ng sentences and the bundled sample, in a
seeded random order with random pauses) sent as 16 kHz s16le in real-time-paced chunks; the
sessions of a run share one event loop, or are split across client processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import speech
from stream_analysis import analyse_session
from stream_realtime import run_realtime_session
from stream_report import log

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import load_audio, to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.segmentation import VadOptions


def speech_files(files: list[Path] | None, cache: Path) -> list[Path]:
    """`files` if given, else the bundled sample then the espeak-ng sentences (speech.py)."""
    if files:
        return list(files)
    if not speech.have_espeak():
        log("espeak-ng not found: streaming the bundled sample only")
        return [sample_path()]
    return [sample_path(), *speech.spoken("stream", cache / "speech")]


def load_clips(files: list[Path]) -> list[np.ndarray]:
    """Each file as 16 kHz int16 PCM (what the client sends)."""
    return [to_pcm16(load_audio(path)) for path in files]


@dataclass(frozen=True)
class LoadSpec:
    """Everything a client process needs to rebuild and stream its sessions."""

    url: str
    clip_files: tuple[str, ...]
    duration_s: float
    chunk_ms: int
    speed: float
    partials: bool
    partial_interval_ms: int
    pause_s: tuple[float, float]
    lead_in_s: float
    stagger_s: float
    seed: int
    vad: dict[str, int] = field(default_factory=dict)
    lag_limit_ms: float = 500.0
    protocol: str = "stream"  # or "realtime": the same audio on /v1/realtime (stream_realtime)
    text: bool = False  # ask for text (the server must run with --text)
    connect_timeout_s: float = 60.0

    @property
    def vad_options(self) -> VadOptions:
        return VadOptions(**self.vad)


def session_audio(clips: list[np.ndarray], spec: LoadSpec, index: int) -> tuple[np.ndarray, float]:
    """Session `index`'s own speech and start offset: a random lead-in, then the clips in the
    session's own random order, each followed by its own random pause. The stream ends in at
    least `trailing` of silence, so every segment ends at a VAD endpoint, none at the stop.
    """
    # By (seed, index) only: session i streams the same audio in every run of a sweep.
    rng = np.random.default_rng([spec.seed, index])
    n = round(spec.duration_s * SAMPLE_RATE)
    trailing = round(max(1.0, spec.pause_s[1]) * SAMPLE_RATE)
    parts = [np.zeros(int(rng.uniform(0, spec.lead_in_s) * SAMPLE_RATE), np.int16)]
    total = len(parts[0])
    while True:
        fitted = False
        for k in rng.permutation(len(clips)):
            if total + len(clips[k]) + trailing > n:
                continue
            pause = np.zeros(int(rng.uniform(*spec.pause_s) * SAMPLE_RATE), np.int16)
            parts += [clips[k], pause]
            total += len(clips[k]) + len(pause)
            fitted = True
        if not fitted:
            break
    parts.append(np.zeros(max(n - total, 0), np.int16))
    offset = float(rng.uniform(0, spec.stagger_s))
    return np.concatenate(parts)[:n], offset


async def run_session(spec: LoadSpec, index: int, pcm: np.ndarray, offset: float) -> dict:
    """Stream one session on the real-time schedule; return raw timings and messages."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    chunk = spec.chunk_ms * SAMPLE_RATE // 1000
    n_chunks = math.ceil(len(pcm) / chunk)
    data = memoryview(pcm.astype("<i2").tobytes())
    rec: dict[str, Any] = dict(
        index=index,
        offset_s=offset,
        audio_s=len(pcm) / SAMPLE_RATE,
        messages=[],
        errors=[],
        close_code=None,
        sent=np.full(n_chunks, np.nan),  # when each chunk was handed to the socket
        due=np.full(n_chunks, np.nan),  # when it should have been, on the real-time schedule
        stop_sent=None,
    )
    sent, due, messages = rec["sent"], rec["due"], rec["messages"]
    await asyncio.sleep(offset)
    t_connect = loop.time()
    try:
        ws = await asyncio.wait_for(
            connect(spec.url, max_size=None, compression=None, ping_interval=None),
            spec.connect_timeout_s,
        )
    except Exception as e:
        rec["errors"].append(f"connect: {type(e).__name__}: {e}")
        return rec
    t_open = loop.time()

    async def sender() -> None:
        for i in range(n_chunks):
            delay = due[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = loop.time()
            await ws.send(data[i * chunk * 2 : (i + 1) * chunk * 2])
        rec["stop_sent"] = loop.time()
        await ws.send('{"type":"stop"}')

    async def receiver() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                messages.append((loop.time(), json.loads(raw)))

    async with ws:
        try:
            start: dict[str, Any] = {
                "type": "start",
                "sample_rate": SAMPLE_RATE,
                "encoding": "pcm_s16le",
                "partials": spec.partials,
                "partial_interval_ms": spec.partial_interval_ms,
            }
            if spec.vad:
                start["vad"] = spec.vad
            if spec.text:
                start["text"] = True
            # A server at capacity refuses at once: its error may close the socket before
            # start is sent, and is read below all the same.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(start))
            ready = json.loads(await asyncio.wait_for(ws.recv(), spec.connect_timeout_s))
            t0 = loop.time()
            rec["connect_ms"] = (t0 - t_connect) * 1000
            if ready.get("type") == "error" and ready.get("code") == "limit":
                # Refused at the door (admission control): not a failure, a figure.
                rec["refused"] = dict(
                    retry_after_ms=ready.get("retry_after_ms"), answer_ms=(t0 - t_open) * 1000
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), spec.connect_timeout_s)
                rec["close_code"] = ws.close_code
                return rec
            if ready.get("type") != "ready":
                rec["errors"].append(f"expected ready, got {ready}")
                return rec
            rec["model"] = ready.get("model")
            due[:] = t0 + np.arange(n_chunks) * (spec.chunk_ms / 1000 / spec.speed)
            send_task = asyncio.create_task(sender())
            try:
                # Generous: an overloaded server may take minutes to drain its backlog.
                await asyncio.wait_for(receiver(), len(pcm) / SAMPLE_RATE / spec.speed + 900)
            finally:
                if not send_task.done():
                    send_task.cancel()
                    rec["errors"].append("connection closed before all audio was sent")
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await send_task
        except (ConnectionClosed, OSError, TimeoutError, ValueError) as e:
            rec["errors"].append(f"{type(e).__name__}: {e}")
        rec["close_code"] = ws.close_code
    return rec


async def _loop_lag_monitor(samples: list[float], period: float = 0.01) -> None:
    """How late the event loop wakes a `period` sleep: the client's own overload."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period)
        samples.append((loop.time() - t - period) * 1000)


async def run_group(spec: LoadSpec, indices: list[int]) -> dict:
    """Sessions `indices` in this event loop, analysed here: their results, the loop's lag
    and this process's CPU and wall time."""
    clips = load_clips([Path(p) for p in spec.clip_files])
    audios = {i: session_audio(clips, spec, i) for i in indices}
    loop_lag: list[float] = []
    monitor = asyncio.create_task(_loop_lag_monitor(loop_lag))
    cpu0, t0 = time.process_time(), time.monotonic()
    session = run_realtime_session if spec.protocol == "realtime" else run_session
    records = await asyncio.gather(*(session(spec, i, *audios[i]) for i in indices))
    cpu1, t1 = time.process_time(), time.monotonic()
    monitor.cancel()
    results = [analyse_session(r, audios[r["index"]][0], spec) for r in records]
    models = [r.pop("_model") for r in results]
    return dict(
        sessions=results,
        loop_lag_ms=np.asarray(loop_lag),
        cpu_s=cpu1 - cpu0,
        wall_s=t1 - t0,
        model=next((m for m in models if m), None),
    )


def _group_in_process(spec: LoadSpec, indices: list[int]) -> dict:
    """run_group in a client process (a module-level function, so spawn can pickle it)."""
    return asyncio.run(run_group(spec, indices))


async def run_clients(spec: LoadSpec, n: int, procs: int) -> list[dict]:
    """Sessions 0..n-1, in this event loop (procs <= 1) or shared round-robin among `procs`
    client processes; one result per event loop (see run_group)."""
    indices = list(range(n))
    if procs <= 1:
        return [await run_group(spec, indices)]
    shares = [indices[k::procs] for k in range(procs)]
    # spawn: forking a process that runs threads (the samplers') is unsafe.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=context) as pool:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(pool, _group_in_process, spec, s) for s in shares]
        return list(await asyncio.gather(*futures))
