"""An ingest process of multi-process mode: WebSockets, sessions and VAD, no model.

The supervisor spawns N of them. Each binds the served port with SO_REUSEPORT (the kernel
spreads new connections over the N), runs an ordinary StreamServer whose worker is a
WorkerProxy to the model process(es), and drains on SIGTERM like the single-process server
(server.signals), the supervisor forwarding it. It imports no torch: it starts in a fraction
of a second and holds no model memory.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ichigo_stream.model_info import ModelInfo

from .app import StreamServer
from .config import ServerConfig
from .listener import Listener
from .shared_audio import AudioRing
from .signals import DrainSignals, drain_when_signalled
from .worker_proxy import EvictionCallback, ResultCallback, WorkerProxy

log = logging.getLogger("ichigo_stream.ingest")


@dataclass(frozen=True)
class IngestSpec:
    """What the supervisor hands an ingest process (picklable: the 'spawn' start method)."""

    config: ServerConfig
    info: ModelInfo  # the model processes', announced to clients
    port: int  # the port the supervisor holds (the real one, also with --port 0)
    # Each model process's address and authkey, and the name of this process's AudioRing for
    # it (the supervisor made them).
    links: tuple[tuple[str, bytes, str], ...]
    index: int


def run_ingest_process(spec: IngestSpec, ready: Connection) -> None:
    """The ingest process's main (the target the supervisor spawns); exits with the drain's
    status (0, or 128 + the signal's number when a second SIGTERM forced it)."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(name)s[ingest {spec.index}] %(levelname)s %(message)s",
    )
    # Ctrl-C reaches the whole process group: the supervisor forwards what it decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = asyncio.run(_serve(spec, ready))
    logging.shutdown()
    os._exit(status)  # as run_server: no slow interpreter teardown inside the drain's bound


async def _serve(spec: IngestSpec, ready: Connection) -> int:
    loop = asyncio.get_running_loop()
    signals = DrainSignals()
    signals.install(loop, (signal.SIGTERM,))
    parent = multiprocessing.parent_process()
    if parent is not None:
        # The supervisor gone (SIGKILL, say): drain rather than serve on, unsupervised.
        def parent_gone() -> None:
            loop.remove_reader(parent.sentinel)  # readable from now on: once is enough
            signals.received(signal.SIGTERM)

        loop.add_reader(parent.sentinel, parent_gone)
    listener = Listener(spec.config, shared=True, port=spec.port)
    rings = [AudioRing.attach(name) for _, _, name in spec.links]
    links = [(address, key, rings[i]) for i, (address, key, _) in enumerate(spec.links)]

    def make_worker(on_result: ResultCallback, on_evicted: EvictionCallback) -> WorkerProxy:
        return WorkerProxy(links, on_result, on_evicted)

    server = StreamServer(spec.config, None, spec.info, make_worker=make_worker)
    try:
        await server.start(listener)
        ready.send(("ready", os.getpid()))
        ready.close()
        return await drain_when_signalled(server, signals)
    finally:
        listener.close()
        for ring in rings:
            ring.close()
