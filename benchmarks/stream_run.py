"""One measured run (the samplers around N client sessions), and a sweep of runs on one server."""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, replace

from stream_analysis import summarise
from stream_load import LoadSpec, run_clients
from stream_report import log, print_per_session, print_run
from stream_samplers import CpuSampler, GpuSampler, metrics_diff, queue_sampler, scrape, wait_idle


@dataclass(frozen=True)
class SweepOptions:
    """Which runs to make, and what to print after each."""

    counts: tuple[int, ...]  # sessions per run
    partials: tuple[bool, ...]  # each count runs once per value (on /v1/stream)
    protocols: tuple[str, ...] = ("stream",)  # "stream" and/or "realtime": each count on each
    procs: int = 0  # client processes; 0: one per 128 sessions, at most half the cores
    device: str = "cpu"  # the server's: GPU utilisation is sampled on cuda
    p95_bar_ms: float | None = None
    per_session: bool = False

    def procs_for(self, n: int) -> int:
        return self.procs or min(math.ceil(n / 128), max(1, (os.cpu_count() or 2) // 2))


async def run_load(
    spec: LoadSpec, n: int, procs: int, server_pid: int | None, device: str, metrics_url: str
) -> dict:
    """N sessions, with the server's metrics, CPU, queue and GPU sampled while they run."""
    await wait_idle(metrics_url)
    await asyncio.sleep(1.0)
    before = await asyncio.to_thread(scrape, metrics_url)
    cpu = CpuSampler(server_pid)
    gpu = GpuSampler(device) if device.startswith("cuda") else None
    if gpu:
        gpu.start()
    queue: list[float] = []
    monitors = [
        asyncio.create_task(cpu.run()),
        asyncio.create_task(queue_sampler(metrics_url, queue)),
    ]
    t0 = time.monotonic()
    groups = await run_clients(spec, n, procs)
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
    after = await asyncio.to_thread(scrape, metrics_url)
    sessions = sorted((s for g in groups for s in g["sessions"]), key=lambda s: s["index"])
    metrics = metrics_diff(before, after)
    return summarise(spec, n, procs, wall, groups, sessions, metrics, server_cpu, gpu_stats, queue)


async def run_sweep(
    base: LoadSpec, sweep: SweepOptions, server_pid: int | None, metrics_url: str
) -> list[dict]:
    """Every (count, partials) run in turn against the same server; each printed as it ends."""
    results = []
    runs = [
        (n, protocol, partials)
        for n in sweep.counts
        for protocol in sweep.protocols
        # /v1/realtime has no partials switch: the server computes partials for text deltas.
        for partials in (sweep.partials if protocol == "stream" else (base.text,))
    ]
    for n, protocol, partials in runs:
        spec = replace(base, partials=partials, protocol=protocol)
        procs = sweep.procs_for(n)
        log(
            f"run: {n} sessions on /v1/{protocol}, partials {'on' if partials else 'off'}, "
            f"{procs} client process(es)"
        )
        r = await run_load(spec, n, procs, server_pid, sweep.device, metrics_url)
        r["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        r["load_average_after"] = os.getloadavg()
        print_run(r, sweep.p95_bar_ms)
        if sweep.per_session:
            print_per_session(r)
        results.append(r)
    return results
