"""What the client commands (send, mic, demo) share: connection arguments and the --speed type.

Values from ICHIGO_URL, ICHIGO_TOKEN, ... arrive through the command line's one environment
rule (ichigo_stream.config) while parsing; nothing here reads the environment.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol
from urllib.parse import urlsplit

from ichigo_stream.cli_common import add_vad_arguments, vad_options
from ichigo_stream.client import DEFAULT_URL, ClientOptions, ReconnectPolicy
from ichigo_stream.client_session import stream_url
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.protocol import LLM_FORMATS, StartOptions
from ichigo_stream.segmentation import VadOptions


def speed_arg(text: str) -> float:
    """--speed: times real time, >= 0; 0 or inf mean as fast as the server allows."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # `not` so that NaN fails too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_speed_argument(parser: argparse.ArgumentParser) -> None:
    """--speed, as send and demo pace a file."""
    parser.add_argument(
        "--speed",
        type=speed_arg,
        default=1.0,
        metavar="X",
        help="pace at X times real time; 0 or inf: as fast as allowed (default: 1)",
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """URL, auth, TLS, reconnect, what to ask the server for, and the session's VAD."""
    # The URL is an option, so ICHIGO_URL follows the one rule; the positional URL stays as
    # the short spelling (positionals never come from the environment, and one of the two
    # may be given, not both).
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "url_argument",
        metavar="URL",
        nargs="?",
        help="server stream URL, ws(s)://HOST:PORT/v1/stream (same as --url)",
    )
    where.add_argument(
        "--url", default=DEFAULT_URL, metavar="URL", help="server stream URL (default: %(default)s)"
    )
    add = parser.add_argument
    add("--text", action="store_true", help="ask for Whisper text (a server started with --text)")
    add("--language", metavar="LANG", help="text language (default: detected)")
    add(
        "--llm-format",
        choices=LLM_FORMATS,
        help="ask the server for segments in this format too (default: none, tokens only)",
    )
    add(
        "--token",
        metavar="SECRET",
        help="bearer token the server asks for (its --auth-token) (default: none)",
    )
    add("--insecure", action="store_true", help="wss:// without certificate verification")
    add("--no-reconnect", action="store_true", help="fail on a lost connection")
    add_vad_arguments(
        parser.add_argument_group(
            "VAD", "the server's segmentation of this session, sent in the start message"
        )
    )


def check_stream_url(url: str) -> str:
    """The URL, if it can be a stream URL; else an error that shows the right one.

    Caught before connecting: an http(s) scheme (the page's URL), no scheme, and no path
    (ws://HOST:PORT). Another path is left to the server (a proxy may map it); its 404 or
    200 answer names the right URL too (ichigo_stream.client_session).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "://" not in url or scheme not in ("ws", "wss", "http", "https"):
        problem = "not a WebSocket URL"
    elif scheme in ("http", "https"):
        problem = f"{scheme}:// is the browser page's scheme, not the stream's"
    elif parts.path in ("", "/"):
        problem = "no path"
    else:
        return url
    raise IchigoStreamError(f"{url}: {problem}: the stream is at {stream_url(url)}")


def server_url(args: argparse.Namespace) -> str:
    """The URL given as an argument, else --url (from the command line, ICHIGO_URL or default),
    checked by check_stream_url."""
    return check_stream_url(args.url_argument or args.url)


class SessionRequest(Protocol):
    """The fields send's and mic's options share: where to connect, what start asks for."""

    url: str
    token: str | None
    insecure: bool
    text: bool
    language: str | None
    llm_format: str | None
    partials: bool
    reconnect: bool
    vad: VadOptions


def connection_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed SessionRequest fields but partials (send and mic spell that flag apart)."""
    return {
        "url": server_url(args),
        "token": args.token or None,
        "insecure": args.insecure,
        "text": args.text,
        "language": args.language,
        "llm_format": args.llm_format,
        # checked while parsing: a bad value is a usage error, not a close from the server
        "vad": vad_options(args),
        "reconnect": not args.no_reconnect,
    }


def client_options(request: SessionRequest, policy: ReconnectPolicy) -> ClientOptions:
    """The library client's options for a command's request; `policy` unless --no-reconnect."""
    return ClientOptions(
        url=request.url,
        token=request.token,
        ssl=False if request.insecure else None,
        start=StartOptions(
            partials=request.partials,
            text=request.text,
            language=request.language,
            llm_format=request.llm_format,
            vad=request.vad,
        ),
        reconnect=policy if request.reconnect else None,
    )
