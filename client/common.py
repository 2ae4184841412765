"""What the client commands (send, mic, demo) share: connection arguments and the --speed type.

Values from ICHIGO_URL, ICHIGO_TOKEN, ... arrive through the command line's one environment
rule (ichigo_stream.config) while parsing; nothing here reads the environment.
"""

from __future__ import annotations

import argparse

from ichigo_stream.client import DEFAULT_URL
from ichigo_stream.protocol import LLM_FORMATS


def speed_arg(text: str) -> float:
    """--speed: times real time, >= 0; 0 or inf mean as fast as the server allows."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # `not` so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """URL, auth, TLS, reconnect and what to ask the server for."""
    # The URL is an option, so ICHIGO_URL follows the one rule; the positional URL stays as
    # the short spelling (positionals never come from the environment, and one of the two
    # may be given, not both).
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "url_argument", metavar="URL", nargs="?", help="server stream URL (same as --url)"
    )
    where.add_argument(
        "--url", default=DEFAULT_URL, help=f"server stream URL (default {DEFAULT_URL})"
    )
    add = parser.add_argument
    add("--text", action="store_true", help="ask for Whisper text (a server started with --text)")
    add("--language", help="text language (default: detected)")
    add("--llm-format", choices=LLM_FORMATS, help="ask the server for segments in this format")
    add("--token", help="bearer token the server asks for (its --auth-token)")
    add("--insecure", action="store_true", help="wss:// without certificate verification")
    add("--no-reconnect", action="store_true", help="fail on a lost connection")


def server_url(args: argparse.Namespace) -> str:
    """The URL given as an argument, else --url (from the command line, ICHIGO_URL or default)."""
    return args.url_argument or args.url
