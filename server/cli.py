"""The `ichigo-stream serve` subcommand: arguments -> ServerConfig -> run_server."""

from __future__ import annotations

import argparse
import logging

from ichigo_stream.cli_common import EXIT_OK, Command

from .config import add_serve_arguments, config_from_args

SERVE_EPILOG = """\
endpoints on the same port:
  ws(s)://HOST:PORT/v1/stream   the streaming protocol (docs/protocol.md)
  GET /healthz                  200 while the model worker answers
  GET /metrics                  Prometheus text
  GET /                         the browser page
lifecycle: load -> warm up -> serve -> on SIGTERM/SIGINT stop accepting, finish every open
segment, send done, close, exit within --drain-timeout-s.
the server's secret: --auth-token SECRET or ICHIGO_AUTH_TOKEN (ICHIGO_TOKEN is the clients'
credential: serve refuses to start on it alone rather than run without a secret).
options from the environment, e.g. ICHIGO_PORT=9000, ICHIGO_TEXT=1,
ICHIGO_ALLOW_ORIGIN="https://a.example https://b.example".
"""


def _run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every configuration error before anything loads
    from .app import run_server  # imports torch: only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_server(config)
    return EXIT_OK


SERVE_COMMAND = Command(
    "serve",
    "serve live speech -> tokens over WebSockets (protocol v1)",
    add_serve_arguments,
    _run_serve,
    SERVE_EPILOG,
)
