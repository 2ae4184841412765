"""A serving process's signals, drain and readiness announcement (torch-free): shared by the
single-process server (server.lifecycle) and multi-process mode (server.supervisor, whose
ingest processes drain, and which announces readiness once they are all ready).

The first SIGTERM/SIGINT drains (StreamServer.drain: finish open segments, send done, close
within --drain-timeout-s); a second one during the drain closes every session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ichigo_stream.cli_common import EXIT_OK, PROG
from ichigo_stream.server_process import ServerReady

if TYPE_CHECKING:
    from .app import StreamServer

log = logging.getLogger("ichigo_stream.server")


class DrainSignals:
    """SIGTERM/SIGINT on the event loop: the first asks for a drain, a second forces exit."""

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.force = asyncio.Event()
        self.forced_by: int | None = None

    def install(
        self,
        loop: asyncio.AbstractEventLoop,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        for signum in signals:
            loop.add_signal_handler(signum, self.received, signum)

    def received(self, signum: int) -> None:
        if not self.drain.is_set():
            self.drain.set()
        elif self.forced_by is None:
            self.forced_by = signum
            log.warning("second %s: closing every session now", signal.Signals(signum).name)
            self.force.set()


async def drain_when_signalled(server: StreamServer, signals: DrainSignals) -> int:
    """Wait for the first signal, drain; the exit status: 0 after the drain, 128 + the
    signal's number when a second signal cut it short."""
    await signals.drain.wait()
    log.info("draining %d session(s)", len(server.connections))
    drain = asyncio.create_task(server.drain())
    forced = asyncio.create_task(signals.force.wait())
    await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
    if drain.done():
        forced.cancel()
        drain.result()
        return EXIT_OK
    drain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await drain
    await server.force_close()
    assert signals.forced_by is not None
    return 128 + signals.forced_by


def announce(ready: ServerReady, ready_file: str | None) -> None:
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
