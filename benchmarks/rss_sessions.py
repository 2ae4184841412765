"""RSS of a `serve` process with N sessions at rest, then each holding waiting work.

Starts `ichigo-stream serve` (any model; the README's figures used `--model random`), opens
N sessions, sends each 2 s of silence (RSS "at rest"), then SECONDS of continuous speech at
60x real time with endpoints only at the segment cap (`min_silence_ms` 60000: every segment a
full `max_segment_s` window of waiting audio), and reads the server's RSS and peak RSS
(VmHWM) from /proc. Usage:

    python benchmarks/rss_sessions.py [--sessions 16] [--seconds 780] [-- SERVE ARGS...]

780 s of the sample makes ~28 waiting 30 s segments a session: within the cap of 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

from ichigo_stream.assets import sample_path
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.server_process import ServerProcess


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


async def session(port: int, silence: bytes, speech: bytes, rested: asyncio.Event) -> None:
    """One session: start, silence, wait for the others, speech (until refused)."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None, proxy=None) as ws:
        await ws.send(json.dumps({"type": "start", "vad": {"min_silence_ms": 60_000}}))
        await ws.recv()  # ready
        await ws.send(silence)
        await rested.wait()
        loop, step = asyncio.get_running_loop(), 32_000  # 1 s messages
        t0 = loop.time()
        for i in range(0, len(speech), step):
            await asyncio.sleep(max(0.0, t0 + i / (2 * SAMPLE_RATE * 60) - loop.time()))
            try:
                await ws.send(speech[i : i + step])
            except Exception:
                return  # refused: the server closed it
        await asyncio.sleep(2.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=780.0)
    parser.add_argument("serve_args", nargs="*", help="after --: for serve (e.g. --model ...)")
    args = parser.parse_args()
    serve_args = ["--port", "0", "--max-realtime", "inf", *args.serve_args]
    server = ServerProcess(serve_args, start_timeout_s=600)
    await asyncio.to_thread(server.start)
    try:
        pid, port = server.process.pid, server.ready.port
        idle = rss_mib(pid)
        pcm, _ = sf.read(sample_path(), dtype="int16")
        speech = np.resize(pcm, round(args.seconds * SAMPLE_RATE)).tobytes()
        silence = bytes(4 * SAMPLE_RATE)
        rested = asyncio.Event()
        tasks = [
            asyncio.create_task(session(port, silence, speech, rested))
            for _ in range(args.sessions)
        ]
        await asyncio.sleep(3.0)
        at_rest = rss_mib(pid)
        rested.set()
        await asyncio.gather(*tasks)
        peak = rss_mib(pid, "VmHWM")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = response.read().decode().splitlines()
        counts = [m for m in metrics if m.startswith(("ichigo_sessions_evicted", "ichigo_errors"))]
        n = args.sessions
        print(
            f"RSS idle {idle:.0f} MiB; {n} sessions at rest {at_rest:.0f} MiB "
            f"(+{(at_rest - idle) / n:.2f} MiB each); holding work: peak {peak:.0f} MiB "
            f"(+{(peak - idle) / n:.1f} MiB each); {counts}"
        )
    finally:
        server.stop(10, signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main())
