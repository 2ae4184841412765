"""Event-loop cost of the audio path, per message and per audio-second: before vs after.

What it runs is the server's own message loop, `StreamServer._handle`, for one /v1/stream
session at a time over an in-memory connection (no sockets, no model: the worker is never
started, so jobs only queue, and each session cancels its own at the end). Per message that is
what the event loop does for audio: the session's checks and parse, decoding, the VAD, the
audio buffer, the actions, and the metrics. The socket layer (websockets' framing) is not in
it; it costs the same before and after.

Both code bases run in the same invocation: this checkout, and a baseline commit exported with
`git archive` (default: the last commit before the lean hot path), each in child processes
that alternate, so that a neighbour's load lands on both alike. Each child streams the same
speech (sample.wav and a pause, looped to --seconds) at --chunk-ms 20 and 100 and reports the
CPU time it took per audio-second; the per-message and per-audio-second costs come from
those two, as in docs/benchmarks.md:

    cpu(chunk) = per_message * messages_per_audio_second(chunk) + per_audio_second

Sessions per ingest core: 1 / cpu(20 ms), the real-time sessions one loop could carry
if it did nothing else.

    python benchmarks/bench_loop.py                       # s16le 16 kHz, the common case
    python benchmarks/bench_loop.py --rate 48000          # a format that is resampled
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
# The last commit of main before the lean hot path (issue 10, item 2).
BASELINE = "593fcbbadaa72e71bbdd4460b8366f4f31dd7c92"
CHUNKS_MS = (20, 100)


# -- child: one code base ------------------------------------------------------------------


class _Request:
    def __init__(self, path: str) -> None:
        self.path = path
        self.headers: dict[str, str] = {}


class _Connection:
    """An in-memory ServerConnection: yields the client's messages, swallows the replies."""

    def __init__(self, messages: list[str | bytes]) -> None:
        self.request = _Request("/v1/stream")
        self._messages = messages
        self.sent = 0

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        for message in self._messages:
            yield message

    async def send(self, message: str) -> None:
        self.sent += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def _messages(rate: int, encoding: str, chunk_ms: int, seconds: float) -> list[str | bytes]:
    import numpy as np
    import soundfile as sf

    from ichigo_stream.assets import sample_path
    from ichigo_stream.audio import resample

    speech, sr = sf.read(sample_path(), dtype="float32")
    one = np.concatenate([resample(speech, sr, rate), np.zeros(rate, dtype=np.float32)])
    audio = np.tile(one, math.ceil(seconds * rate / len(one)))[: round(seconds * rate)]
    if encoding == "pcm_s16le":
        raw = np.clip(np.rint(audio * 32768), -32768, 32767).astype("<i2").tobytes()
    else:
        raw = audio.astype("<f4").tobytes()
    step = rate * chunk_ms // 1000 * (2 if encoding == "pcm_s16le" else 4)
    start = {"type": "start", "sample_rate": rate, "encoding": encoding, "channels": 1}
    chunks: list[str | bytes] = [raw[i : i + step] for i in range(0, len(raw), step)]
    return [json.dumps(start), *chunks, json.dumps({"type": "stop"})]


async def _one_session(server: object, messages: list[str | bytes]) -> float:
    connection = _Connection(messages)
    begin = time.thread_time()
    await server._handle(connection)  # type: ignore[attr-defined]
    cpu = time.thread_time() - begin
    if connection.sent < 2:  # ready, ..., done: anything less is a failed session
        raise RuntimeError(f"the session ended early ({connection.sent} messages sent)")
    return cpu


async def _child(spec: dict) -> dict:
    import ichigo_stream
    import ichigo_stream_server
    from ichigo_stream.messages import SessionLimits
    from ichigo_stream.model_info import ModelInfo
    from ichigo_stream_server.app import StreamServer
    from ichigo_stream_server.config import ServerConfig

    unlimited = SessionLimits(
        max_realtime=math.inf,
        realtime_burst_s=math.inf,
        max_messages_per_s=math.inf,
        max_windows_per_s=math.inf,
        windows_burst=math.inf,
    )
    info = ModelInfo("bench.pth", "0" * 64, 2561, 2048, 25, "medium")
    tokenizer = SimpleNamespace(device=SimpleNamespace(type="cpu"))  # never run: no worker
    server = StreamServer(ServerConfig(limits=unlimited), tokenizer, info)  # type: ignore[arg-type]
    server._loop = asyncio.get_running_loop()
    out: dict[str, list[float]] = {}
    for chunk_ms in spec["chunks_ms"]:
        messages = _messages(spec["rate"], spec["encoding"], chunk_ms, spec["seconds"])
        await _one_session(server, messages)  # warm: imports, caches, allocator
        cpu = [await _one_session(server, messages) for _ in range(spec["sessions"])]
        out[str(chunk_ms)] = [c / spec["seconds"] for c in cpu]
    modules = [ichigo_stream.__file__, ichigo_stream_server.__file__]
    return {"modules": modules, "cpu_per_audio_s": out}


# -- parent: both code bases, alternately ----------------------------------------------------


def _export(commit: str, into: Path) -> Path:
    tree = into / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "ichigo_stream", "server"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    # The name the server application is installed under (pyproject's package-dir).
    (tree / "server").rename(tree / "ichigo_stream_server")
    return tree


def _run_child(tree: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for module in result["modules"]:
        if not Path(module).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"the child imported {module}, not the tree {tree}")
    return result


def _costs(cpu: dict[str, float], rate: int) -> tuple[float, float]:
    """(per message, per audio-second) in seconds, from the CPU per audio-second at 20, 100 ms."""
    lo, hi = CHUNKS_MS
    per_message = (cpu[str(lo)] - cpu[str(hi)]) / (1000 / lo - 1000 / hi)
    return per_message, cpu[str(hi)] - per_message * 1000 / hi


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    p.add_argument("--seconds", type=float, default=60.0, help="audio per session")
    p.add_argument("--sessions", type=int, default=3, help="sessions per child and chunk size")
    p.add_argument("--rounds", type=int, default=4, help="children per code base, alternating")
    p.add_argument("--rate", type=int, default=16000, help="the client's sample rate")
    p.add_argument("--encoding", default="pcm_s16le", choices=("pcm_s16le", "pcm_f32le"))
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(json.loads(args.child)))))
        return

    spec = {
        "chunks_ms": list(CHUNKS_MS),
        "rate": args.rate,
        "encoding": args.encoding,
        "seconds": args.seconds,
        "sessions": args.sessions,
    }
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _export(args.baseline, Path(tmp)), "after": REPO}
        samples: dict[str, dict[str, list[float]]] = {n: {} for n in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for chunk, values in _run_child(tree, spec)["cpu_per_audio_s"].items():
                    samples[name].setdefault(chunk, []).extend(values)
    print(
        f"{args.encoding} {args.rate} Hz mono, {args.seconds:g} s of speech per session, "
        f"{args.rounds} x {args.sessions} sessions per code base and chunk size (best of each); "
        f"before = {args.baseline[:12]}, after = this checkout. CPU of the loop:"
    )
    print(
        "| code | CPU per audio-s, 20 ms chunks | 100 ms chunks | per message | "
        "per audio-second | sessions per core (20 ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    report: dict[str, dict] = {"spec": spec, "baseline": args.baseline, "samples": samples}
    for name in trees:
        cpu = {chunk: min(v) for chunk, v in samples[name].items()}
        per_message, per_second = _costs(cpu, args.rate)
        sessions = 1 / cpu[str(CHUNKS_MS[0])]
        report[name] = {"per_message_s": per_message, "per_audio_s": per_second, "cpu": cpu}
        print(
            f"| {name} | {cpu['20'] * 1e3:.2f} ms | {cpu['100'] * 1e3:.2f} ms | "
            f"{per_message * 1e6:.1f} us | {per_second * 1e3:.2f} ms | {sessions:.0f} |"
        )
    b, a = report["before"], report["after"]
    print(
        f"after / before: per message {a['per_message_s'] / b['per_message_s']:.2f}, "
        f"per audio-second {a['per_audio_s'] / b['per_audio_s']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
