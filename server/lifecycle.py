"""The serve process around StreamServer: start-up settings, signals, readiness, exit status.

run_server is the `serve` command's lifecycle: configure torch once -> load -> warm up ->
serve (announce readiness) -> drain on SIGTERM/SIGINT, or exit at once on a second signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import NoReturn

import torch

from ichigo_stream.loading import ModelInfo, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.server_process import ServerReady

from .app import running_server
from .config import ServerConfig
from .listener import Listener
from .signals import DrainSignals, announce, drain_when_signalled
from .worker import ModelWorker

log = logging.getLogger("ichigo_stream.server")


async def _serve_until_signalled(
    config: ServerConfig, tokenizer: IchigoTokenizer, info: ModelInfo, listener: Listener
) -> tuple[int, ModelWorker]:
    """Serve until a signal, drain; the exit status (see run_server) and the worker."""
    signals = DrainSignals()
    signals.install(asyncio.get_running_loop())
    async with running_server(config, tokenizer, info, listener) as server:
        ready = ServerReady.at(config.host, server.port, tls=bool(config.certfile), pid=os.getpid())
        try:
            announce(ready, config.ready_file)
            return await drain_when_signalled(server, signals), server.worker
        finally:
            if config.ready_file:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(config.ready_file)


def configure_torch(config: ServerConfig) -> None:
    """Process-wide torch settings, once, at start-up, before the model loads."""
    if config.threads:
        torch.set_num_threads(config.threads)


def run_server(config: ServerConfig, listener: Listener | None = None) -> NoReturn:
    """bind -> load -> warm up -> serve -> drain on SIGTERM/SIGINT -> exit the process.

    The address is bound and TLS loaded first (the listener; serve makes it before even
    importing torch), so a taken port fails before the slow load. The exit status: 0 after a
    drain; 128 + the signal's number (130 for SIGINT, 143 for SIGTERM) when a second signal cut the
    drain short, the shell's status for a process ended by a signal.
    """
    listener = listener if listener is not None else Listener(config)
    try:
        configure_torch(config)
        log.info(
            "loading %s (Whisper %s) on %s",
            config.load.model,
            config.load.whisper or "as the checkpoint names",
            config.load.device,
        )
        tokenizer, info = load_tokenizer(config.load, text=config.text, progress=log.info)
        status, worker = asyncio.run(_serve_until_signalled(config, tokenizer, info, listener))
    finally:
        listener.close()
    if worker.alive:
        # The worker is still inside a model call (a forced exit, or a batch that outlived
        # the drain timeout). Tearing the interpreter down under a running torch thread
        # aborts the process (SIGABRT, "terminate called without an active exception").
        log.warning("exiting with the model worker still busy")
    # Served and drained: every connection is closed, the worker stopped, the ready file
    # removed. End the process here rather than through the interpreter's teardown, which
    # takes most of a second with torch loaded and would count against the drain's bound
    # (--drain-timeout-s + 1 s, e.g. inside Kubernetes' grace period); it also avoids the
    # abort above.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
