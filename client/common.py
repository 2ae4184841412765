"""What the client commands (send, mic) share: the connection and session arguments."""

from __future__ import annotations

import argparse
import os

from ichigo_stream.client import DEFAULT_URL
from ichigo_stream.protocol import LLM_FORMATS

ENV_URL, ENV_TOKEN = "ICHIGO_URL", "ICHIGO_TOKEN"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """URL, auth, TLS, reconnect and what to ask the server for; flags win over ICHIGO_*."""
    add = parser.add_argument
    add("url", metavar="URL", nargs="?", help=f"server stream URL (env {ENV_URL}; {DEFAULT_URL})")
    add("--text", action="store_true", help="ask for Whisper text (a server started with --text)")
    add("--language", help="text language (default: detected)")
    add("--llm-format", choices=LLM_FORMATS, help="ask the server for segments in this format")
    add("--token", help=f"bearer token (env {ENV_TOKEN})")
    add("--insecure", action="store_true", help="wss:// without certificate verification")
    add("--no-reconnect", action="store_true", help="fail on a lost connection")


def server_url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get(ENV_URL) or DEFAULT_URL


def server_token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(ENV_TOKEN) or None
