"""What is measured beside the sessions: the server's /metrics, its CPU, the machine's, the GPU."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from stream_analysis import percentiles


def metrics_url(ws_url: str) -> str:
    """The /metrics address of the server at a ws(s):// stream URL (for --url)."""
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
    """What the server counted between two scrapes: batches, jobs, segments, errors."""
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
        # Admission control's estimate at the end of the run (windows/s; None: an older server).
        capacity=after.get("ichigo_capacity_windows_per_second"),
    )


def _ticks(path: str) -> float | None:
    """CPU seconds (user + system) of a /proc/.../stat; None when it is gone."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux's /proc/PID/task/PID/children)."""
    tree = [pid]
    for parent in tree:  # grows while it is walked: breadth first
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        tree += [int(child) for child in children]
    return tree


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
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
            # The server's process tree: `serve --workers N` is a supervisor, N ingest
            # processes (their main threads are the event loops) and the model process(es)
            # (whose main thread idles: the model runs on the worker's thread).
            tree = _process_tree(self.pid)
            mains = [_ticks(f"/proc/{p}/task/{p}/stat") for p in tree]
            wholes = [_ticks(f"/proc/{p}/stat") for p in tree]
            main = sum(t for t in mains if t is not None) if mains[0] is not None else None
            whole = sum(t for t in wholes if t is not None) if wholes[0] is not None else None
            if len(tree) == 1:
                try:
                    import psutil

                    times = psutil.Process(self.pid).cpu_times()
                    whole = times.user + times.system
                except Exception:
                    pass
            if main is not None and whole is not None:
                out.update(main=main, whole=whole, processes=len(tree))
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


async def queue_sampler(url: str, out: list[float], period: float = 1.0) -> None:
    """Append the server's queue depth to `out` every `period` s, until cancelled."""
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
            or values.get("ichigo_sessions_open", 0) + values.get("ichigo_queue_depth", 0) == 0
        ):
            return
        await asyncio.sleep(0.5)
