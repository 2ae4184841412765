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

# This is the command line. The work is in the flat modules beside it, which Python finds
# because a script's own folder comes first on its import path: stream_server.py prepares the
# model and starts the server, stream_load.py generates the load, stream_samplers.py samples
# the server's side, stream_analysis.py turns timings into figures, stream_report.py prints
# them, stream_run.py runs a sweep of runs, and speech.py owns the sentences.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import speech
from stream_load import LoadSpec, speech_files
from stream_report import log, print_summary
from stream_run import SweepOptions, run_sweep
from stream_samplers import metrics_url
from stream_server import (
    ServerOptions,
    ServerStartError,
    random_model,
    random_size,
    start_server,
)

from ichigo_stream.segmentation import SegmentationError, VadOptions


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
    g.add_argument(
        "--protocol",
        choices=("stream", "realtime", "both"),
        default="stream",
        help="the endpoint the sessions use: /v1/stream, /v1/realtime (OpenAI Realtime "
        "transcription events), or each run on both",
    )
    g.add_argument(
        "--text",
        action="store_true",
        help="ask for text (a server started here gets --text; a --url server needs it)",
    )
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
    except ValueError as e:
        p.error(f"--random {e}")
    if args.protocol != "stream" and args.tail_ms is not None:
        p.error("--tail-ms has no /v1/realtime equivalent (the server derives the tail)")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    try:  # before starting anything
        VadOptions(**vad_overrides(args))
    except SegmentationError as e:
        p.error(str(e))
    return args


def vad_overrides(args: argparse.Namespace) -> dict[str, int]:
    """start.vad: only the fields given, so the server's defaults stay the server's."""
    vad = {}
    if args.min_silence_ms is not None:
        vad["min_silence_ms"] = args.min_silence_ms
    if args.tail_ms is not None:
        vad["tail_ms"] = args.tail_ms
    return vad


def cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    lines = cpuinfo.read_text().splitlines()
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), None)


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Prepare speech and server, run the sweep, stop the server: (runs, setup)."""
    counts = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.sessions]
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.partials]
    vad = vad_overrides(args)
    files = speech_files([Path(p) for p in args.speech or ()], args.cache)
    with contextlib.ExitStack() as stack:  # stops the server we start, however the run ends
        server_command = None
        if args.url:
            url, pid, murl = args.url, args.server_pid, metrics_url(args.url)
        else:
            if args.model:
                model, whisper = Path(args.model), args.whisper
            else:
                model, whisper = random_model(args.cache, args.random, args.full)
            options = ServerOptions(
                model=model,
                whisper=None if whisper is None else str(whisper),
                device=args.device,
                dtype=args.dtype,
                max_sessions=max(counts) + 16,
                max_batch=args.max_batch,
                extra_args=(*args.server_arg, *(["--text"] if args.text else [])),
                env=tuple(tuple(kv.split("=", 1)) for kv in args.server_env),
                start_timeout_s=args.startup_timeout,
            )
            ready, server_command = start_server(options, stack)
            url, pid, murl = ready.url, ready.pid, ready.metrics_url
        setup = dict(
            date=time.strftime("%Y-%m-%d %H:%M:%S"),
            command=" ".join([Path(sys.executable).name, *sys.argv]),
            url=url,
            server_command=server_command,
            cores=os.cpu_count(),
            cpu_model=cpu_model(),
            load_average_before=os.getloadavg(),
            args={k: str(v) for k, v in vars(args).items()},
            # The sentences' fingerprint (speech.py), when they were spoken.
            speech_sha256=None
            if args.speech or not speech.have_espeak()
            else speech.input_sha256("stream"),
        )
        spec = LoadSpec(
            url=url,
            clip_files=tuple(str(f) for f in files),
            duration_s=args.duration,
            chunk_ms=args.chunk_ms,
            speed=args.speed,
            partials=False,  # set per run by the sweep
            partial_interval_ms=args.partial_interval_ms,
            pause_s=tuple(args.pause),
            lead_in_s=args.lead_in,
            stagger_s=args.stagger,
            seed=args.seed,
            vad=vad,
            lag_limit_ms=args.lag_limit_ms,
            text=args.text,
        )
        sweep = SweepOptions(
            counts=tuple(counts),
            partials=modes,
            protocols=("stream", "realtime") if args.protocol == "both" else (args.protocol,),
            procs=args.procs,
            device=args.device,
            p95_bar_ms=args.p95_bar_ms,
            per_session=args.per_session,
        )
        results = asyncio.run(run_sweep(spec, sweep, pid, murl))
    return results, setup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results, setup = run(args)
    except (OSError, subprocess.CalledProcessError, ServerStartError) as e:
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
