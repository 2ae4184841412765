"""The `ichigo-stream serve` subcommand: arguments -> ServerConfig -> run_server."""

from __future__ import annotations

import argparse
import logging

from ichigo_stream.cli_common import Command, require_model_extra

from .config import add_serve_arguments, config_from_args
from .listener import Listener

SERVE_EPILOG = """\
endpoints on the same port:
  ws(s)://HOST:PORT/v1/stream   the streaming protocol (docs/protocol.md)
  GET /livez (alias /healthz)   200 while the model worker answers (liveness)
  GET /readyz                   200 while taking sessions, 503 once draining (readiness)
  GET /metrics                  Prometheus text (behind --metrics-token or --auth-token)
  GET /                         the browser page
lifecycle: load -> warm up -> serve -> on SIGTERM/SIGINT stop accepting, finish every open
segment, send done, close, exit (status 0) within --drain-timeout-s, close handshakes
included (a client that never answers the close frame is cut off). A second SIGTERM/SIGINT
during the drain closes every session with 1001 at once and exits with 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT).
readiness: once listening and warmed up, the server prints one JSON line on stdout,
  {"event":"ready","url":"ws://127.0.0.1:8765/v1/stream","host":"127.0.0.1","port":8765,
   "pid":...,"page_url":...,"healthz_url":...,"metrics_url":...,"protocol":1}
and, with --ready-file PATH, writes the same object (without "event") to PATH, atomically,
removing it on exit. Its log goes to stderr. (docs/protocol.md, "Server readiness")
processes: --workers 1 (the default on CPU) serves from this one process; --workers N > 1
(or several --devices) makes it a supervisor of N ingest processes (WebSockets, sessions,
VAD) sharing the port and one model process per device; a dead ingest process is
replaced (its clients resume), a dead model process ends the server with status 70.
the server's secret: --auth-token SECRET or ICHIGO_AUTH_TOKEN (ICHIGO_TOKEN is the clients'
credential: serve refuses to start on it alone rather than run without a secret).
options from the environment, e.g. ICHIGO_PORT=9000, ICHIGO_TEXT=1,
ICHIGO_ALLOW_ORIGIN="https://a.example https://b.example".
"""


def _run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every configuration error before anything loads
    require_model_extra("serve")
    # The port and the TLS files before anything slow (importing torch, loading the model).
    listener = Listener(config, shared=config.multiprocess)
    try:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        if config.multiprocess:
            from .supervisor import run_supervisor  # torch-free: the model processes load it

            return run_supervisor(config, listener)
        from .lifecycle import run_server  # imports torch: only when serving

        return run_server(config, listener)
    finally:
        listener.close()


SERVE_COMMAND = Command(
    "serve",
    "serve live speech -> tokens over WebSockets (protocol v1)",
    add_serve_arguments,
    _run_serve,
    SERVE_EPILOG,
)
