"""Server configuration: command line (or ICHIGO_* environment variables) -> frozen ServerConfig."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ichigo_stream.model_info import DEFAULT_MODEL, DTYPE_NAMES, LoadOptions
from ichigo_stream.session import SessionLimits


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    load: LoadOptions = field(default_factory=LoadOptions)
    text: bool = False  # load Whisper's decoder so sessions may ask for text
    max_batch: int | None = None  # None: 1 on CPU, 32 on a GPU (pipeline.default_batch_size)
    threads: int | None = None  # torch intra-op threads for the model; None: torch's default
    max_wait_ms: float = 2.0
    max_sessions: int = 256
    token: str | None = None
    allow_origins: tuple[str, ...] = ()  # empty: any Origin (or none) is accepted
    certfile: str | None = None
    keyfile: str | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    drain_timeout_s: float = 30.0
    ready_file: str | None = None  # where to announce readiness (docs/protocol.md)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"ICHIGO_{name.upper()}", default)


def _number(
    kind: type[int] | type[float], low: float, high: float = math.inf, *, open_low: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number of `kind` in [low, high] ((low, high] if open_low); NaN never.

    inf passes where high allows it: --max-realtime inf or --max-session-s inf mean no limit.
    """
    bounds = f"{'>' if open_low else '>='} {low:g}" + (
        f" and <= {high:g}" if high < math.inf else ""
    )

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not (low < value if open_low else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` options; each also reads ICHIGO_<NAME> from the environment (CLI wins).

    Defaults stay strings: argparse converts and checks them only when `serve` runs, so a
    bad ICHIGO_* value is a usage error of `serve`, not a crash of every subcommand.
    """
    add = parser.add_argument
    count = _number(int, 1)
    positive = _number(float, 0, open_low=True)
    add("--host", default=_env("host", "127.0.0.1"))
    add(
        "--port", type=_number(int, 0, 65535), default=_env("port", "8765"), help="0: any free port"
    )
    add("--model", default=_env("model", DEFAULT_MODEL), help="quantizer: HF REPO:FILE or a path")
    add("--whisper", default=_env("whisper"), help="Whisper name or .pt (default: from the model)")
    add("--device", default=_env("device", "cpu"), help="cpu or cuda[:N]")
    add("--dtype", default=_env("dtype", "float32"), choices=DTYPE_NAMES)
    add(
        "--text",
        action="store_true",
        default=_env("text", "") == "1",
        help="load Whisper's decoder for text",
    )
    add(
        "--max-batch",
        type=count,
        default=_env("max_batch"),
        help="clips per encoder batch (default 1 on CPU, where batching costs more per clip, "
        "32 on CUDA)",
    )
    add(
        "--threads",
        type=count,
        default=_env("threads"),
        help="CPU threads for the model (default: torch's; leave a core to the event loop)",
    )
    add(
        "--max-wait-ms",
        type=_number(float, 0),
        default=_env("max_wait_ms", "2"),
        help="how long a batch waits for more clips to join it",
    )
    add("--max-sessions", type=count, default=_env("max_sessions", "256"))
    add("--token", default=_env("token"), help="require this bearer token (header or ?token=)")
    add(
        "--allow-origin",
        nargs="+",
        default=(_env("allow_origin") or "").split(),
        metavar="ORIGIN",
        help="accept browser connections only from these origins (clients sending no Origin "
        "header, i.e. non-browser clients, are not affected)",
    )
    add("--certfile", default=_env("certfile"), help="TLS certificate (serve wss://)")
    add("--keyfile", default=_env("keyfile"), help="TLS private key")
    add(
        "--max-realtime",
        type=positive,
        default=_env("max_realtime", "10"),
        help="refuse audio arriving faster than this many times real time",
    )
    add(
        "--realtime-burst-s",
        type=positive,
        default=_env("realtime_burst_s", "30"),
        help="audio a session may send at any speed before --max-realtime applies",
    )
    add(
        "--max-pending-segments",
        type=count,
        default=_env("max_pending_segments", "32"),
        help="segments of one session waiting for the model before it is refused (1013)",
    )
    add("--max-message-kb", type=count, default=_env("max_message_kb", "1024"))
    add("--max-session-s", type=positive, default=_env("max_session_s", "14400"))
    add("--idle-timeout-s", type=positive, default=_env("idle_timeout_s", "60"))
    drain = _number(float, 0, 86_400)  # finite: the worker thread is joined with what is left
    add("--drain-timeout-s", type=drain, default=_env("drain_timeout_s", "30"))
    add(
        "--ready-file",
        default=_env("ready_file"),
        metavar="PATH",
        help="once listening and warmed up, write the ready JSON object here (atomically); "
        "removed on exit",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if bool(args.certfile) != bool(args.keyfile):
        raise SystemExit("ichigo-stream serve: error: --certfile and --keyfile go together")
    return ServerConfig(
        host=args.host,
        port=args.port,
        load=LoadOptions(
            model=args.model, whisper=args.whisper, device=args.device, dtype=args.dtype
        ),
        text=args.text,
        max_batch=args.max_batch,
        threads=args.threads,
        max_wait_ms=args.max_wait_ms,
        max_sessions=args.max_sessions,
        token=args.token or None,
        allow_origins=tuple(args.allow_origin),
        certfile=args.certfile,
        keyfile=args.keyfile,
        limits=SessionLimits(
            max_message_bytes=args.max_message_kb * 1024,
            max_realtime=args.max_realtime,
            realtime_burst_s=args.realtime_burst_s,
            max_pending_segments=args.max_pending_segments,
            max_session_s=args.max_session_s,
            idle_timeout_s=args.idle_timeout_s,
        ),
        drain_timeout_s=args.drain_timeout_s,
        ready_file=args.ready_file,
    )
