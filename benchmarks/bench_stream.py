"""Streaming server load test: N concurrent sessions streaming real speech at real time.

Starts the real server (`ichigo-stream serve --port 0`, model loaded once for the whole run)
or connects to a running one (--url), then opens N WebSocket sessions that each stream their
own mix of speech (espeak-ng sentences and the bundled sample, looped with random pauses) as
16 kHz s16le PCM in 20 ms chunks on the real-time schedule, with seeded random start offsets.

Per session and overall (p50 / p95 / p99) it measures:
- client send lag: how late each chunk left against its real-time schedule. Large values mean
  the CLIENT was the bottleneck and the other numbers are not the server's;
- end of speech -> segment ("eos"): wall time from sending the sample at the segment's `end`
  to receiving its `segment` message: what a user waits. It includes, by design, the VAD's
  (min_silence - tail) wait; "decision" is the same minus that wait, measured from the send of
  the sample that completes min_silence (when the endpoint first became decidable);
- endpoint -> segment: the server's own `endpoint_ms`;
- timeline lag: segment arrival minus the scheduled time of its decision sample (client and
  server delays together). A session "lags" (falls behind real time) when this or stop -> done
  exceeds --lag-limit-ms; partials are best effort and do not count;
- partials delivered and their latency (partial `end` sample sent -> partial received);
- segments delivered vs expected: the offline VAD segmentation (segment_vad) of exactly the
  audio the session sent; every expected segment must arrive with the same [start, end);
- server side: /metrics scraped before and after (batch-size histogram, partials shed,
  errors), queue depth sampled every second, the server's CPU split into its event-loop thread
  and its other threads (model worker + torch), machine-wide CPU, and on CUDA the GPU
  utilisation (pynvml, else nvidia-smi; absent on CPU).

    python benchmarks/bench_stream.py --random tiny --sessions 64 --duration 36
    python benchmarks/bench_stream.py --random tiny --sweep 16,32,64 --partials both
    python benchmarks/bench_stream.py --full medium --device cuda --dtype float16 \\
        --max-batch 64 --sweep 100,200,400,700,1000 --p95-bar-ms 100

Exit status 1 when any session lost a segment, got an unexpected one, an error message, or an
abnormal close; 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import load_audio
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.segmentation import Segment, VadOptions, segment_vad

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Speech tokens let a language model listen without a separate recognizer.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The weather report says rain will move in from the west by late afternoon.",
    "A streaming tokenizer must answer within milliseconds of the end of speech.",
    "Yes.",
    "Could you repeat that, please?",
]
# Random-weight models (make-random-model): (width, encoder layers). Cost is what matters:
# every clip runs a full 30 s Whisper window whatever its length.
RANDOM_SIZES = {"tiny": (384, 1), "small": (768, 2), "medium": (1024, 2)}
READY_LINE = re.compile(r"ichigo-stream: serving (wss?://\S+)")
PCTS = (50, 95, 99)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------------


def percentiles(values: Any, qs: tuple[int, ...] = PCTS) -> dict[str, float] | None:
    """{'p50': .., 'p95': .., 'p99': .., 'max': .., 'n': ..}, or None when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None
    out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    out["n"] = int(arr.size)
    return out


def fmt_pcts(stats: dict[str, float] | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if stats is None:
        return "-"
    return "/".join(f"{stats[k]:.0f}" if stats[k] >= 10 else f"{stats[k]:.1f}" for k in keys)


# -- model and speech -----------------------------------------------------------------------------


def random_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """Write (once, into the cache) a random-weight model in the real formats."""
    if args.full:
        tag, extra = f"full-{args.full}", ["--full", args.full]
    else:
        width, layers = random_size(args.random)
        tag, extra = f"w{width}-l{layers}", ["--width", str(width), "--layers", str(layers)]
    folder = args.cache / "models"
    quantizer, whisper = folder / f"quantizer-{tag}.pth", folder / f"whisper-{tag}.pt"
    if quantizer.exists() and whisper.exists():
        return quantizer, whisper
    folder.mkdir(parents=True, exist_ok=True)
    log(f"writing random model {tag} to {folder}")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        q, w = Path(tmp) / quantizer.name, Path(tmp) / whisper.name
        cmd = [sys.executable, "-m", "ichigo_stream", "make-random-model", str(q)]
        subprocess.run([*cmd, "--whisper-out", str(w), *extra], check=True, stdout=sys.stderr)
        os.replace(w, whisper)
        os.replace(q, quantizer)
    return quantizer, whisper


def random_size(name: str) -> tuple[int, int]:
    """tiny / small / medium, or WIDTHxLAYERS (e.g. 64x1: a near-free model, to take the model
    out of the picture and load only the server's I/O path)."""
    if name in RANDOM_SIZES:
        return RANDOM_SIZES[name]
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if not match or int(match.group(1)) % 64 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(
            f"{name!r}: expected {', '.join(RANDOM_SIZES)} or WIDTHxLAYERS (width a multiple of 64)"
        )
    return int(match.group(1)), int(match.group(2))


def speech_files(args: argparse.Namespace) -> list[Path]:
    if args.speech:
        return [Path(p) for p in args.speech]
    files = [sample_path()]
    if shutil.which("espeak-ng") is None:
        log("espeak-ng not found: streaming the bundled sample only")
        return files
    folder = args.cache / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(SENTENCES):
        wav = folder / f"sentence{i}.wav"
        if not wav.exists():
            tmp = wav.with_suffix(".tmp.wav")
            cmd = ["espeak-ng", "-v", "en-us", "-w", str(tmp), text]
            subprocess.run(cmd, check=True, capture_output=True)
            os.replace(tmp, wav)
        files.append(wav)
    return files


def load_clips(files: list[Path]) -> list[np.ndarray]:
    """Each file as 16 kHz int16 PCM (what the client sends)."""
    clips = []
    for path in files:
        audio = load_audio(path)
        clips.append(np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16))
    return clips


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


# -- one session ---------------------------------------------------------------------------------


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
            await ws.send(json.dumps(start))
            ready = json.loads(await asyncio.wait_for(ws.recv(), spec.connect_timeout_s))
            t0 = loop.time()
            rec["connect_ms"] = (t0 - t_connect) * 1000
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


def analyse_session(rec: dict, pcm: np.ndarray, spec: LoadSpec) -> dict:
    """Raw timings + the offline segmentation of the audio sent -> the session's results."""
    opts = spec.vad_options
    chunk = spec.chunk_ms * SAMPLE_RATE // 1000
    sent, due, stop_sent = rec.pop("sent"), rec.pop("due"), rec.pop("stop_sent")
    model = rec.pop("model", None)
    n_sent = int(np.count_nonzero(~np.isnan(sent)))
    # A silence endpoint is decided at the end of the first VAD frame with min_silence after
    # the last voiced frame (frames lie on a grid from sample 0); the segment ends `tail` after
    # that voiced frame. So the decision sample is `wait` after `end` (510 - 200 ms by default).
    frame = opts.frame_samples
    wait = math.ceil(opts.min_silence_samples / frame) * frame - opts.tail_samples

    def sent_at(sample: int) -> tuple[float, float] | None:
        """(actual, scheduled) send time of the chunk holding `sample`; None past the audio."""
        i = sample // chunk
        return (sent[i], due[i]) if 0 <= i < n_sent else None

    if n_sent * chunk >= len(pcm) and stop_sent is not None:
        expected = segment_vad(pcm, opts)
    else:  # cut short: the segments the audio sent had closed before it stopped
        expected = [s for s in segment_vad(pcm[: n_sent * chunk], opts) if s.reason != "finish"]
    segments, partials, errors = [], [], list(rec["errors"])
    speech_starts, done, done_at = 0, None, None
    for arrival, msg in rec.pop("messages"):
        kind = msg.get("type")
        if kind == "segment":
            segments.append((arrival, msg))
        elif kind == "partial":
            end = round(msg["end"] * SAMPLE_RATE)
            at = sent_at(end - 1)
            partials.append((arrival - at[0]) * 1000 if at else math.nan)
        elif kind == "speech_start":
            speech_starts += 1
        elif kind == "error":
            errors.append(f"{msg.get('code')}: {msg.get('message')}")
        elif kind == "done":
            done, done_at = msg, arrival
    by_span = {(s.start, s.end): s for s in expected}
    rows, received_spans = [], set()
    for arrival, msg in segments:
        start, end = round(msg["start"] * SAMPLE_RATE), round(msg["end"] * SAMPLE_RATE)
        received_spans.add((start, end))
        ref: Segment | None = by_span.get((start, end))
        row = dict(
            segment=msg["segment"],
            start=msg["start"],
            end=msg["end"],
            tokens=len(msg["tokens"]),
            endpoint_ms=msg["endpoint_ms"],
            reason=ref.reason if ref else None,
        )
        eos = sent_at(end - 1)
        decision = sent_at(end + wait - 1) if ref is not None and ref.reason == "silence" else None
        if eos is not None and decision is not None:
            row["eos_ms"] = (arrival - eos[0]) * 1000
            row["decision_ms"] = (arrival - decision[0]) * 1000
            row["timeline_lag_ms"] = (arrival - decision[1]) * 1000
        rows.append(row)
    lost = [asdict(s) for s in expected if (s.start, s.end) not in received_spans]
    unexpected = [r for r in rows if r["reason"] is None]
    send_lag = (sent[:n_sent] - due[:n_sent]) * 1000
    done_ms = (done_at - stop_sent) * 1000 if done_at is not None and stop_sent else None
    if rec.get("close_code") not in (1000, None) or (rec.get("close_code") is None and not errors):
        errors.append(f"closed with code {rec.get('close_code')}")
    if done is None and not errors:
        errors.append("no done message")
    elif done is not None and done.get("segments") != len(segments):
        errors.append(f"done says {done.get('segments')} segments, {len(segments)} received")
    # Lagging: behind real time. Partials are best effort (the server sheds them under load),
    # so their latency is reported but does not count here.
    timeline = [r["timeline_lag_ms"] for r in rows if "timeline_lag_ms" in r]
    worst = max([*timeline, done_ms or 0.0, 0.0])
    rec.update(
        chunks_sent=n_sent,
        send_lag_ms=percentiles(send_lag),
        segments_expected=len(expected),
        segments_received=len(rows),
        segments_lost=lost,
        segments_unexpected=unexpected,
        speech_starts=speech_starts,
        partials=len(partials),
        partial_latency_ms=percentiles([p for p in partials if not math.isnan(p)]),
        done_ms=done_ms,
        errors=errors,
        segments=rows,
        worst_lag_ms=worst,
        lagging=worst > spec.lag_limit_ms,
    )
    rec["_send_lag"] = send_lag
    rec["_partial_ms"] = np.asarray(partials)
    rec["_model"] = model
    return rec


# -- a group of sessions in one event loop (the whole run, or one client process's share) ----


async def _loop_lag_monitor(samples: list[float], period: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period)
        samples.append((loop.time() - t - period) * 1000)


async def run_group(spec: LoadSpec, indices: list[int]) -> dict:
    clips = load_clips([Path(p) for p in spec.clip_files])
    audios = {i: session_audio(clips, spec, i) for i in indices}
    loop_lag: list[float] = []
    monitor = asyncio.create_task(_loop_lag_monitor(loop_lag))
    cpu0, t0 = time.process_time(), time.monotonic()
    records = await asyncio.gather(*(run_session(spec, i, *audios[i]) for i in indices))
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
    return asyncio.run(run_group(spec, indices))


# -- the server side: process, /metrics, CPU, GPU -------------------------------------------------


class ServerProcess:
    """`ichigo-stream serve` on port 0; the URL from its ready line; SIGTERM (drain) on close."""

    def __init__(self, args: argparse.Namespace, model: Path, whisper: Path, max_sessions: int):
        cmd = [sys.executable, "-m", "ichigo_stream", "serve", "--port", "0"]
        cmd += ["--model", str(model), "--whisper", str(whisper)]
        cmd += ["--device", args.device, "--dtype", args.dtype, "--max-sessions", str(max_sessions)]
        if args.max_batch:
            cmd += ["--max-batch", str(args.max_batch)]
        cmd += args.server_arg
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in args.server_env)
        self.log_path = Path(tempfile.mkstemp(prefix="bench-stream-server-", suffix=".log")[1])
        self._log = self.log_path.open("w")
        log(f"starting: {' '.join(cmd)}  (server log: {self.log_path})")
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        self.url: str | None = None
        ready = threading.Event()

        def read_stdout() -> None:
            for line in self.proc.stdout:
                match = READY_LINE.search(line)
                if match and self.url is None:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(args.startup_timeout) or self.url is None:
            self.close()
            tail = self.log_path.read_text()[-3000:]
            log(f"bench_stream: the server did not start:\n{tail}")
            raise SystemExit(2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def metrics_url(ws_url: str) -> str:
    scheme, rest = ws_url.split("://", 1)
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}/metrics"


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; empty when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metrics_diff(before: dict[str, float], after: dict[str, float]) -> dict:
    if not after:
        return {}

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    buckets, previous = {}, 0.0
    for key in after:
        if key.startswith("ichigo_batch_size_bucket"):
            bound = key.split('le="', 1)[1].rstrip('"}')
            cumulative = d(key)
            buckets[bound] = int(cumulative - previous)
            previous = cumulative
    batches = d("ichigo_batch_size_count")
    return dict(
        batches=int(batches),
        batch_mean=d("ichigo_batch_size_sum") / batches if batches else None,
        model_jobs=int(d("ichigo_batch_size_sum")),  # finals (speculative ones too) + partials
        batch_histogram={k: v for k, v in buckets.items() if v},
        segments=int(d("ichigo_segments_total")),
        partials=int(d("ichigo_partials_total")),
        partials_shed=int(d("ichigo_partials_shed_total")),
        jobs_failed=int(d("ichigo_model_jobs_failed_total")),
        errors={
            k.split('code="', 1)[1].rstrip('"}'): int(d(k))
            for k in after
            if k.startswith("ichigo_errors_total{") and d(k)
        },
        audio_seconds=d("ichigo_audio_seconds_total"),
    )


def _ticks(path: str) -> float | None:
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _machine_busy() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuSampler:
    """The server's CPU (event-loop thread vs the rest) and the machine's, every second.

    Uses psutil when installed, else /proc. The event loop runs on the process's main thread;
    the model worker and torch's intra-op threads are the others.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[dict[str, float]] = []

    def _read(self) -> dict[str, float]:
        now = time.monotonic()
        busy, total = _machine_busy()
        out = dict(t=now, busy=busy, total=total)
        if self.pid is not None:
            main = _ticks(f"/proc/{self.pid}/task/{self.pid}/stat")
            whole = _ticks(f"/proc/{self.pid}/stat")
            try:
                import psutil

                times = psutil.Process(self.pid).cpu_times()
                whole = times.user + times.system
            except Exception:
                pass
            if main is not None and whole is not None:
                out.update(main=main, whole=whole)
        return out

    async def run(self, period: float = 1.0) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(self._read))
            await asyncio.sleep(period)

    def summary(self) -> dict:
        self.samples.append(self._read())
        s = self.samples
        if len(s) < 2:
            return {}
        wall = s[-1]["t"] - s[0]["t"]
        out: dict[str, Any] = dict(
            machine_busy_pct=100
            * (s[-1]["busy"] - s[0]["busy"])
            / (s[-1]["total"] - s[0]["total"]),
            cores=os.cpu_count(),
        )
        if "whole" in s[0] and "whole" in s[-1]:
            out["server_pct"] = 100 * (s[-1]["whole"] - s[0]["whole"]) / wall
            out["server_loop_pct"] = 100 * (s[-1]["main"] - s[0]["main"]) / wall
            out["server_other_pct"] = out["server_pct"] - out["server_loop_pct"]
            per_second = [
                100 * (b["main"] - a["main"]) / (b["t"] - a["t"])
                for a, b in itertools.pairwise(s)
                if "main" in a and "main" in b and b["t"] > a["t"]
            ]
            out["server_loop_pct_max_1s"] = max(per_second) if per_second else None
        return out


class GpuSampler:
    """GPU utilisation and memory while the run lasts: pynvml, else `nvidia-smi --loop-ms`."""

    def __init__(self, device: str, period_ms: int = 200) -> None:
        self.index = int(device.split(":", 1)[1]) if ":" in device else 0
        self.period_ms = period_ms
        self.util: list[float] = []
        self.mem_mib: list[float] = []
        self.source: str | None = None
        self.name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.name = str(pynvml.nvmlDeviceGetName(handle))
            self.source = "pynvml"

            def poll() -> None:
                while not self._stop.wait(self.period_ms / 1000):
                    self.util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                    self.mem_mib.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
            return
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            return
        self.source = "nvidia-smi"
        query = "--query-gpu=utilization.gpu,memory.used,name"
        self._proc = subprocess.Popen(
            [
                *("nvidia-smi", "-i", str(self.index), query),
                *("--format=csv,noheader,nounits", f"--loop-ms={self.period_ms}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

        def read() -> None:
            for line in self._proc.stdout:
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    self.util.append(float(parts[0]))
                    self.mem_mib.append(float(parts[1]))
                    self.name = parts[2]

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def stop(self) -> dict | None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(2)
        if not self.util:
            return None
        return dict(
            source=self.source,
            name=self.name,
            util_pct=percentiles(self.util, (50, 95)),
            mem_mib_max=max(self.mem_mib) if self.mem_mib else None,
        )


async def _queue_sampler(url: str, out: list[float], period: float = 1.0) -> None:
    while True:
        values = await asyncio.to_thread(scrape, url)
        if "ichigo_queue_depth" in values:
            out.append(values["ichigo_queue_depth"])
        await asyncio.sleep(period)


async def wait_idle(url: str, timeout: float = 120.0) -> None:
    """Until the server has no sessions and no queued jobs (between runs of a sweep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = await asyncio.to_thread(scrape, url)
        if (
            not values
            or values.get("ichigo_sessions", 0) + values.get("ichigo_queue_depth", 0) == 0
        ):
            return
        await asyncio.sleep(0.5)


# -- one run: N sessions -------------------------------------------------------------------------


async def run_load(spec: LoadSpec, n: int, procs: int, server_pid: int | None, device: str) -> dict:
    murl = metrics_url(spec.url)
    await wait_idle(murl)
    await asyncio.sleep(1.0)
    before = await asyncio.to_thread(scrape, murl)
    cpu = CpuSampler(server_pid)
    gpu = GpuSampler(device) if device.startswith("cuda") else None
    if gpu:
        gpu.start()
    queue: list[float] = []
    monitors = [asyncio.create_task(cpu.run()), asyncio.create_task(_queue_sampler(murl, queue))]
    t0 = time.monotonic()
    indices = list(range(n))
    if procs <= 1:
        groups = [await run_group(spec, indices)]
    else:
        shares = [indices[k::procs] for k in range(procs)]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=context) as pool:
            loop = asyncio.get_running_loop()
            futures = [loop.run_in_executor(pool, _group_in_process, spec, s) for s in shares]
            groups = await asyncio.gather(*futures)
    wall = time.monotonic() - t0
    for task in monitors:
        task.cancel()
    server_cpu = cpu.summary()
    if server_cpu and "server_pct" in server_cpu:
        # Everything else on the machine (other users' jobs) competes for the same cores.
        client_pct = 100 * sum(g["cpu_s"] for g in groups) / wall
        machine = server_cpu["machine_busy_pct"] * (os.cpu_count() or 1)
        server_cpu["client_pct"] = client_pct
        server_cpu["others_pct"] = max(machine - server_cpu["server_pct"] - client_pct, 0.0)
    gpu_stats = gpu.stop() if gpu else None
    after = await asyncio.to_thread(scrape, murl)
    sessions = sorted((s for g in groups for s in g["sessions"]), key=lambda s: s["index"])
    return summarise(
        spec, n, procs, wall, groups, sessions, before, after, server_cpu, gpu_stats, queue
    )


def summarise(
    spec: LoadSpec,
    n: int,
    procs: int,
    wall: float,
    groups: list[dict],
    sessions: list[dict],
    before: dict,
    after: dict,
    server_cpu: dict,
    gpu_stats: dict | None,
    queue: list[float],
) -> dict:
    rows = [r for s in sessions for r in s["segments"]]

    def col(key: str) -> list[float]:
        return [r[key] for r in rows if key in r]

    send_lag = np.concatenate([s.pop("_send_lag") for s in sessions] or [np.zeros(0)])
    partial_ms = np.concatenate([s.pop("_partial_ms") for s in sessions] or [np.zeros(0)])
    loop_lag = np.concatenate([g["loop_lag_ms"] for g in groups])
    client_cpu = sum(g["cpu_s"] for g in groups)
    client_wall = max(g["wall_s"] for g in groups)
    lost = sum(len(s["segments_lost"]) for s in sessions)
    unexpected = sum(len(s["segments_unexpected"]) for s in sessions)
    errored = [s["index"] for s in sessions if s["errors"]]
    done = [s["done_ms"] for s in sessions if s["done_ms"] is not None]
    result = dict(
        sessions_n=n,
        partials=spec.partials,
        model=next((g["model"] for g in groups if g["model"]), None),
        wall_s=wall,
        audio_s_per_session=spec.duration_s,
        segments_expected=sum(s["segments_expected"] for s in sessions),
        segments_received=sum(s["segments_received"] for s in sessions),
        segments_lost=lost,
        segments_unexpected=unexpected,
        sessions_with_errors=errored,
        sessions_lagging=[s["index"] for s in sessions if s["lagging"]],
        eos_ms=percentiles(col("eos_ms")),
        decision_ms=percentiles(col("decision_ms")),
        # VAD endpoints while streaming; segments closed by stop or the 30 s cap separately.
        endpoint_ms=percentiles([r["endpoint_ms"] for r in rows if r["reason"] == "silence"]),
        endpoint_ms_other=percentiles([r["endpoint_ms"] for r in rows if r["reason"] != "silence"]),
        timeline_lag_ms=percentiles(col("timeline_lag_ms")),
        done_ms=percentiles(done),
        partials_per_session=percentiles([s["partials"] for s in sessions], (50,)),
        partial_latency_ms=percentiles(partial_ms[~np.isnan(partial_ms)]),
        client=dict(
            procs=procs,
            send_lag_ms=percentiles(send_lag),
            loop_lag_ms=percentiles(loop_lag),
            cpu_pct=100 * client_cpu / client_wall if client_wall else None,
            connect_ms=percentiles([s["connect_ms"] for s in sessions if "connect_ms" in s]),
        ),
        server=dict(
            metrics=metrics_diff(before, after),
            cpu=server_cpu,
            queue_depth=percentiles(queue, (50, 95)),
            gpu=gpu_stats,
        ),
        per_session=sessions,
    )
    return result


# -- report ----------------------------------------------------------------------------------------


def print_run(r: dict, bar_ms: float | None) -> None:
    c, s = r["client"], r["server"]
    m, cpu = s["metrics"], s["cpu"]
    print(
        f"\n== {r['sessions_n']} sessions, partials {'on' if r['partials'] else 'off'}, "
        f"{r['audio_s_per_session']:g} s of audio each, wall {r['wall_s']:.1f} s"
    )
    print(
        f"segments: {r['segments_received']} received / {r['segments_expected']} expected, "
        f"{r['segments_lost']} lost, {r['segments_unexpected']} unexpected; "
        f"sessions with errors: {len(r['sessions_with_errors'])}; "
        f"lagging: {len(r['sessions_lagging'])}"
    )
    print(f"{'latency, ms':34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'n':>6}")
    for label, key in (
        ("endpoint -> segment (server)", "endpoint_ms"),
        ("end of speech -> segment (raw)", "eos_ms"),
        ("  minus the min_silence-tail wait", "decision_ms"),
        ("lag behind the audio timeline", "timeline_lag_ms"),
        ("partial end sent -> partial", "partial_latency_ms"),
        ("stop -> done", "done_ms"),
    ):
        st = r[key]
        if st is None:
            print(f"{label:34} {'-':>8}")
            continue
        print(
            f"{label:34} {st['p50']:8.1f} {st['p95']:8.1f} {st['p99']:8.1f} {st['max']:8.1f} "
            f"{st['n']:6d}"
        )
    sl, ll = c["send_lag_ms"], c["loop_lag_ms"]
    print(
        f"client: {c['procs']} process(es), CPU {c['cpu_pct']:.0f}%, send lag p50/p99/max "
        f"{fmt_pcts(sl, ('p50', 'p99', 'max'))} ms, event-loop lag p99/max "
        f"{fmt_pcts(ll, ('p99', 'max'))} ms, connect p95 {fmt_pcts(c['connect_ms'], ('p95',))} ms"
    )
    if sl and sl["p99"] > 20:
        print("  WARNING: client send lag p99 > 20 ms: the client may be the bottleneck")
    pps = r["partials_per_session"]
    if r["partials"]:
        print(
            f"partials: {pps['p50']:.0f} per session (median), {m.get('partials_shed', '?')} shed "
            "by the server"
        )
    if m:
        mean = m["batch_mean"]
        print(
            f"server batches: {m['batches']}, mean size {mean:.2f}"
            if mean
            else "server batches: 0",
            f"histogram (<=bound: count) {m['batch_histogram']}; model jobs {m['model_jobs']} "
            f"for {m['segments']} segments and {m['partials']} partials sent",
        )
    if cpu:
        line = f"CPU: machine {cpu['machine_busy_pct']:.0f}% of {cpu['cores']} cores"
        if "server_pct" in cpu:
            line += (
                f"; server {cpu['server_pct']:.0f}% (event loop {cpu['server_loop_pct']:.0f}%, "
                f"max 1 s {cpu['server_loop_pct_max_1s']:.0f}%; model+other threads "
                f"{cpu['server_other_pct']:.0f}%)"
            )
        if "others_pct" in cpu:
            line += f"; other processes {cpu['others_pct']:.0f}%"
        print(line + " [100% = one core]")
    if s["queue_depth"]:
        print(
            f"server queue depth p50/p95/max: {fmt_pcts(s['queue_depth'], ('p50', 'p95', 'max'))}"
        )
    g = s["gpu"]
    if g:
        print(
            f"GPU {g['name']} ({g['source']}): utilisation p50/p95 "
            f"{fmt_pcts(g['util_pct'], ('p50', 'p95'))}%, memory max {g['mem_mib_max']:.0f} MiB"
        )
    if bar_ms is not None and r["endpoint_ms"]:
        ok = r["endpoint_ms"]["p95"] < bar_ms and not r["sessions_lagging"]
        print(
            f"bar endpoint->segment p95 < {bar_ms:g} ms, no session lagging: "
            f"{'PASS' if ok else 'FAIL'}"
        )
    for s_ in r["per_session"]:
        if s_["errors"] or s_["segments_lost"] or s_["segments_unexpected"]:
            print(
                f"  session {s_['index']}: errors {s_['errors'][:3]}, lost "
                f"{[(x['start'], x['end']) for x in s_['segments_lost'][:3]]}, unexpected "
                f"{[(x['start'], x['end']) for x in s_['segments_unexpected'][:3]]}"
            )


def print_per_session(r: dict) -> None:
    print(
        f"{'sess':>4} {'offset':>6} {'segs':>9} {'parts':>5} {'send lag max':>12} "
        f"{'eos p50/p95':>12} {'endpt p50/p95':>13} {'worst lag':>9} {'lag':>3}"
    )
    for s in r["per_session"]:
        eos = percentiles([x["eos_ms"] for x in s["segments"] if "eos_ms" in x])
        ep = percentiles([x["endpoint_ms"] for x in s["segments"]])
        print(
            f"{s['index']:4d} {s['offset_s']:6.2f} "
            f"{s['segments_received']:4d}/{s['segments_expected']:<4d} {s['partials']:5d} "
            f"{(s['send_lag_ms'] or {}).get('max', math.nan):12.1f} "
            f"{fmt_pcts(eos, ('p50', 'p95')):>12} {fmt_pcts(ep, ('p50', 'p95')):>13} "
            f"{s['worst_lag_ms']:9.0f} {'yes' if s['lagging'] else '':>3}"
        )


def summary_row(r: dict) -> list[str]:
    cpu, m, gpu = r["server"]["cpu"], r["server"]["metrics"], r["server"]["gpu"]
    lag = r["client"]["send_lag_ms"]
    return [
        str(r["sessions_n"]),
        "on" if r["partials"] else "off",
        f"{r['segments_received']}/{r['segments_expected']}",
        str(len(r["sessions_lagging"])),
        fmt_pcts(r["endpoint_ms"]),
        fmt_pcts(r["eos_ms"]),
        fmt_pcts(r["decision_ms"]),
        f"{r['partials_per_session']['p50']:.0f}" if r["partials"] else "-",
        f"{m['batch_mean']:.2f}" if m and m.get("batch_mean") else "-",
        f"{cpu['server_loop_pct']:.0f} / {cpu['server_other_pct']:.0f}"
        if "server_pct" in cpu
        else "-",
        f"{cpu['machine_busy_pct']:.0f}" if cpu else "-",
        f"{cpu['others_pct']:.0f}" if "others_pct" in cpu else "-",
        f"{lag['p99']:.1f}" if lag else "-",
        f"{gpu['util_pct']['p50']:.0f}" if gpu else "-",
    ]


SUMMARY_HEADER = [
    "sessions",
    "partials",
    "segments got/expected",
    "lagging",
    "endpoint->segment ms p50/p95/p99",
    "end of speech->segment ms p50/p95/p99",
    "same minus (min_silence-tail) p50/p95/p99",
    "partials/session",
    "mean batch",
    "server CPU % loop / model",
    "machine CPU %",
    "other processes CPU %",
    "client send lag p99 ms",
    "GPU util p50 %",
]


def print_summary(results: list[dict], bar_ms: float | None) -> None:
    print()
    print("| " + " | ".join(SUMMARY_HEADER) + " |")
    print("|" + "---:|" * len(SUMMARY_HEADER))
    for r in results:
        print("| " + " | ".join(summary_row(r)) + " |")
    if bar_ms is not None:
        for partials in sorted({r["partials"] for r in results}):
            passing = [
                r["sessions_n"]
                for r in results
                if r["partials"] == partials
                and r["endpoint_ms"]
                and r["endpoint_ms"]["p95"] < bar_ms
                and not r["sessions_lagging"]
            ]
            print(
                f"partials {'on' if partials else 'off'}: largest N with endpoint->segment p95 < "
                f"{bar_ms:g} ms and no session lagging: {max(passing) if passing else 'none'}"
            )


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    g = p.add_argument_group("server")
    g.add_argument("--url", help="a running server's ws://HOST:PORT/v1/stream (else start one)")
    g.add_argument("--server-pid", type=int, help="with --url: its pid, for CPU figures")
    g.add_argument("--model", help="quantizer checkpoint (default: a random one, --random)")
    g.add_argument("--whisper", help="Whisper .pt or name, with --model")
    g.add_argument(
        "--random",
        default="tiny",
        help="random-weight model: tiny (width 384, 1 layer; default), small (768, 2), "
        "medium (1024, 2) or WIDTHxLAYERS",
    )
    g.add_argument("--full", metavar="NAME", help="random full-size Whisper NAME (e.g. medium)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    g.add_argument("--max-batch", type=int, help="server --max-batch (default: the server's)")
    g.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `ichigo-stream serve` (repeatable, use --server-arg=-x)",
    )
    g.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the server process, e.g. OMP_NUM_THREADS=1",
    )
    g.add_argument("--startup-timeout", type=float, default=600.0)
    g = p.add_argument_group("load")
    g.add_argument("--sessions", type=int, default=64)
    g.add_argument("--sweep", help="comma-separated session counts, e.g. 16,32,64,128")
    g.add_argument("--duration", type=float, default=36.0, help="seconds of audio per session")
    g.add_argument("--speed", type=float, default=1.0, help="times real time")
    g.add_argument("--chunk-ms", type=int, default=20)
    g.add_argument("--partials", choices=("off", "on", "both"), default="off")
    g.add_argument("--partial-interval-ms", type=int, default=500)
    g.add_argument("--stagger", type=float, default=5.0, help="start offsets uniform in [0, s)")
    g.add_argument(
        "--pause",
        type=float,
        nargs=2,
        default=(0.3, 1.5),
        metavar=("MIN", "MAX"),
        help="pause after each clip, seconds, uniform (default 0.3 1.5)",
    )
    g.add_argument("--lead-in", type=float, default=1.5, help="leading silence up to s")
    g.add_argument("--speech", nargs="+", metavar="FILE", help="speech files to loop")
    g.add_argument("--min-silence-ms", type=int, help="start.vad.min_silence_ms")
    g.add_argument("--tail-ms", type=int, help="start.vad.tail_ms")
    g.add_argument(
        "--procs",
        type=int,
        default=0,
        help="client processes (0: one per 128 sessions, at most half the cores)",
    )
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("report")
    g.add_argument(
        "--lag-limit-ms",
        type=float,
        default=500.0,
        help="a session lags when a segment arrives more than this after its endpoint became "
        "decidable (scheduled time), or done more than this after stop (default 500)",
    )
    g.add_argument("--p95-bar-ms", type=float, help="print PASS/FAIL: endpoint->segment p95 < bar")
    g.add_argument("--per-session", action="store_true", help="print a row per session")
    g.add_argument("--json", type=Path, help="write every figure here")
    add("--cache", type=Path, default=Path.home() / ".cache" / "ichigo-stream" / "bench-stream")
    args = p.parse_args(argv)
    if args.full and args.model:
        p.error("--full and --model exclude each other")
    try:
        random_size(args.random)
    except argparse.ArgumentTypeError as e:
        p.error(f"--random {e}")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    return args


async def amain(args: argparse.Namespace) -> tuple[list[dict], dict]:
    counts = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.sessions]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.partials]
    vad = {}
    if args.min_silence_ms is not None:
        vad["min_silence_ms"] = args.min_silence_ms
    if args.tail_ms is not None:
        vad["tail_ms"] = args.tail_ms
    VadOptions(**vad)  # validate before starting anything
    files = speech_files(args)
    server = None
    if args.url:
        url, pid = args.url, args.server_pid
    else:
        if args.model:
            model, whisper = Path(args.model), args.whisper
        else:
            model, whisper = random_model(args)
        server = await asyncio.to_thread(ServerProcess, args, model, whisper, max(counts) + 16)
        url, pid = server.url, server.pid
    setup = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        url=url,
        server_command=server.cmd if server else None,
        cores=os.cpu_count(),
        cpu_model=next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            None,
        )
        if Path("/proc/cpuinfo").exists()
        else None,
        load_average_before=os.getloadavg(),
        args={k: str(v) for k, v in vars(args).items()},
    )
    results = []
    try:
        for n in counts:
            for partials in modes:
                spec = LoadSpec(
                    url=url,
                    clip_files=tuple(str(f) for f in files),
                    duration_s=args.duration,
                    chunk_ms=args.chunk_ms,
                    speed=args.speed,
                    partials=partials,
                    partial_interval_ms=args.partial_interval_ms,
                    pause_s=tuple(args.pause),
                    lead_in_s=args.lead_in,
                    stagger_s=args.stagger,
                    seed=args.seed,
                    vad=vad,
                    lag_limit_ms=args.lag_limit_ms,
                )
                procs = args.procs or min(math.ceil(n / 128), max(1, (os.cpu_count() or 2) // 2))
                log(
                    f"run: {n} sessions, partials {'on' if partials else 'off'}, "
                    f"{procs} client process(es)"
                )
                r = await run_load(spec, n, procs, pid, args.device)
                r["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
                r["load_average_after"] = os.getloadavg()
                print_run(r, args.p95_bar_ms)
                if args.per_session:
                    print_per_session(r)
                results.append(r)
    finally:
        if server is not None:
            await asyncio.to_thread(server.close)
    return results, setup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results, setup = asyncio.run(amain(args))
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"bench_stream: setup failed: {e}")
        return 2
    print_summary(results, args.p95_bar_ms)
    if args.json:
        args.json.write_text(json.dumps(dict(setup=setup, runs=results), indent=1, default=float))
    bad = [
        r
        for r in results
        if r["segments_lost"] or r["segments_unexpected"] or r["sessions_with_errors"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
