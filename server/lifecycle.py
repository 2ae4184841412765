"""The serve process around StreamServer: start-up settings, signals, readiness, exit status.

run_server is the `serve` command's lifecycle: configure torch once -> load -> warm up ->
serve (announce readiness) -> drain on SIGTERM/SIGINT, or exit at once on a second signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import NoReturn

import torch

from ichigo_stream.cli_common import EXIT_OK, PROG
from ichigo_stream.loading import ModelInfo, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.server_process import ServerReady

from .app import running_server
from .config import ServerConfig
from .listener import Listener
from .worker import ModelWorker

log = logging.getLogger("ichigo_stream.server")


class _Signals:
    """SIGTERM/SIGINT on the event loop: the first asks for a drain, a second forces exit."""

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.force = asyncio.Event()
        self.forced_by: int | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        if not self.drain.is_set():
            self.drain.set()
        elif self.forced_by is None:
            self.forced_by = signum
            log.warning("second %s: closing every session now", signal.Signals(signum).name)
            self.force.set()


async def _serve_until_signalled(
    config: ServerConfig, tokenizer: IchigoTokenizer, info: ModelInfo, listener: Listener
) -> tuple[int, ModelWorker]:
    """Serve until a signal, drain; the exit status (see run_server) and the worker."""
    signals = _Signals()
    signals.install(asyncio.get_running_loop())
    async with running_server(config, tokenizer, info, listener) as server:
        ready = ServerReady.at(config.host, server.port, tls=bool(config.certfile), pid=os.getpid())
        try:
            _announce(ready, config.ready_file)
            await signals.drain.wait()
            log.info("draining %d session(s)", len(server.connections))
            drain = asyncio.create_task(server.drain())
            forced = asyncio.create_task(signals.force.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            if drain.done():
                forced.cancel()
                drain.result()
                return EXIT_OK, server.worker
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await server.force_close()
            assert signals.forced_by is not None
            return 128 + signals.forced_by, server.worker
        finally:
            if config.ready_file:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(config.ready_file)


def _announce(ready: ServerReady, ready_file: str | None) -> None:
    """Readiness, machine-readable (docs/protocol.md, "Server readiness"): the ready file and
    one JSON line on stdout; for people, the log line and the page's URL on stderr."""
    log.info("serving %s (page %s)", ready.url, ready.page_url)
    if ready_file:
        ready.write(ready_file)
    print(ready.event_line(), flush=True)
    print(
        f"{PROG} serve: ready: open {ready.page_url} in a browser; stream to {ready.url}",
        file=sys.stderr,
        flush=True,
    )


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
