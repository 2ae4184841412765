"""Server configuration: the `serve` options -> frozen ServerConfig.

The ICHIGO_* variables reach these options through the command line's one environment rule
(ichigo_stream.config), applied while parsing; nothing here reads the environment for an
option, and the defaults below are the real built-in ones (so `serve --help` shows them).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ichigo_stream.cli_common import (
    add_model_arguments,
    add_vad_arguments,
    device_arg,
    load_options,
    vad_options,
)
from ichigo_stream.config import environment_value
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.options import LoadOptions
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.session import SessionLimits

from .admission import AdmissionOptions

MIB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    load: LoadOptions = field(default_factory=LoadOptions)
    text: bool = False  # load Whisper's decoder so sessions may ask for text
    # Text tokens decoded per segment at most (the caption prefix included); None: Whisper's
    # own cap, 224 (n_text_ctx // 2). Each token is one decoder step for the whole batch.
    max_text_tokens: int | None = None
    max_batch: int | None = None  # None: 1 on CPU, 32 on a GPU (pipeline.default_batch_size)
    threads: int | None = None  # torch intra-op threads for the model; None: torch's default
    max_wait_ms: float = 2.0
    max_sessions: int = 256
    token: str | None = None  # the secret clients must present (serve --auth-token)
    # The secret /metrics asks for (serve --metrics-token); None: --auth-token's, if any.
    metrics_token: str | None = None
    allow_origins: tuple[str, ...] = ()  # empty: any Origin (or none) is accepted
    certfile: str | None = None
    keyfile: str | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    drain_timeout_s: float = 30.0
    ready_file: str | None = None  # where to announce readiness (docs/protocol.md)
    # VAD settings of a session whose start has no vad object (and of the fields it omits).
    vad: VadOptions = field(default_factory=VadOptions)
    # Audio held by jobs waiting for the model, all sessions together (serve --max-held-audio-mb).
    max_held_audio_bytes: float = 512 * MIB
    # Admission control (serve --admission-headroom): the share of the measured capacity
    # that the predicted demand of the open sessions' finals may use.
    admission: AdmissionOptions = field(default_factory=AdmissionOptions)
    # Ingest processes (serve --workers): 1 is the single-process server; more run
    # server.supervisor's process model (README, "Process model").
    workers: int = 1
    # One model process per entry in multi-process mode (serve --devices); () means load.device.
    devices: tuple[str, ...] = ()

    @property
    def multiprocess(self) -> bool:
        """Whether serve runs the supervisor, ingest and model processes (server.supervisor)."""
        return self.workers > 1 or len(self.devices) > 1

    @property
    def model_devices(self) -> tuple[str, ...]:
        """The device of each model process."""
        return self.devices or (self.load.device,)


# Ingest processes at most by default: past that the one model process, not the event loops,
# is the bottleneck (one loop holds ~250 sessions with 20 ms chunks, docs/benchmarks.md).
MAX_DEFAULT_WORKERS = 8


def default_workers(devices: tuple[str, ...], cpu_count: int | None) -> int:
    """--workers when not given: 1 when every model runs on the CPU (the model needs the cores
    more than the event loop does: one loop serves more sessions than a CPU model can), else
    a process per core left after one per model process, at most MAX_DEFAULT_WORKERS."""
    if all(device == "cpu" for device in devices):
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, (cpu_count or 1) - len(devices)))


def devices_arg(text: str) -> tuple[str, ...]:
    """--devices: comma-separated devices (cpu, cuda, cuda:N), one model process each."""
    parts = tuple(part.strip() for part in text.split(","))
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected DEVICE[,DEVICE...], got {text!r}")
    return tuple(device_arg(part) for part in parts)


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
    """The `serve` options; each may also come from ICHIGO_<OPTION> (ichigo_stream.config)."""
    add = parser.add_argument
    count = _number(int, 1)
    positive = _number(float, 0, open_low=True)
    add(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1)",
    )
    add(
        "--port",
        type=_number(int, 0, 65535),
        default=8765,
        metavar="PORT",
        help="port to listen on; 0: any free port (default: 8765)",
    )
    add_model_arguments(parser)  # --model, --whisper, --device, --dtype: as every command
    add("--text", action="store_true", help="load Whisper's decoder for text")
    add(
        "--max-text-tokens",
        type=_number(int, 1, 224),
        default=None,
        metavar="N",
        help="decode at most N text tokens a segment, caption prefix included: bounds the "
        "decoder's steps a batch (default: Whisper's 224)",
    )
    add(
        "--max-batch",
        type=count,
        metavar="N",
        help="clips per encoder batch (default: 1 on CPU, where batching costs more per clip, "
        "32 on CUDA)",
    )
    add(
        "--threads",
        type=count,
        metavar="N",
        help="CPU threads for the model (default: torch's; leave a core to the event loop)",
    )
    add(
        "--max-wait-ms",
        type=_number(float, 0),
        default=2.0,
        metavar="MS",
        help="how long a batch waits for more clips to join it (default: 2)",
    )
    add(
        "--max-sessions",
        type=count,
        default=256,
        metavar="N",
        help="open sessions at most; more are refused with 1013 (default: 256)",
    )
    # Not --token: ICHIGO_TOKEN is the clients' credential (send/mic --token), and a server
    # must not pick up a client's setting as its secret. --token stays as an alias.
    add(
        "--auth-token",
        "--token",
        metavar="SECRET",
        help="require this bearer token (header or ?token=); env ICHIGO_AUTH_TOKEN "
        "(default: none, every client is accepted)",
    )
    add(
        "--metrics-token",
        metavar="SECRET",
        help="require this bearer token for /metrics (header or ?token=) (default: the "
        "--auth-token, if any; none: /metrics is open)",
    )
    add(
        "--allow-origin",
        nargs="+",
        default=(),
        metavar="ORIGIN",
        help="accept browser connections only from these origins (clients sending no Origin "
        "header, i.e. non-browser clients, are not affected) (default: any origin)",
    )
    add(
        "--certfile",
        metavar="PATH",
        help="TLS certificate, with --keyfile: serve wss:// and https:// (default: plain ws://)",
    )
    add("--keyfile", metavar="PATH", help="TLS private key (default: none)")
    add(
        "--max-realtime",
        type=positive,
        default=10.0,
        metavar="X",
        help="refuse audio arriving faster than X times real time; inf: no limit (default: 10)",
    )
    add(
        "--realtime-burst-s",
        type=positive,
        default=30.0,
        metavar="S",
        help="audio a session may send at any speed before --max-realtime applies (default: 30)",
    )
    add(
        "--max-pending-segments",
        type=count,
        default=32,
        metavar="N",
        help="segments of one session waiting for the model before it is refused (1013) "
        "(default: 32)",
    )
    add(
        "--max-message-kb",
        type=count,
        default=1024,
        metavar="KB",
        help="largest WebSocket message a client may send, KiB (default: 1024)",
    )
    add(
        "--max-messages-per-s",
        type=positive,
        default=500.0,
        metavar="N",
        help="WebSocket messages a session may send a second, in bursts of a second's worth "
        "(an empty audio message counts as 10); more is too_fast, 1008; inf: no limit "
        "(default: 500)",
    )
    add(
        "--max-session-s",
        type=positive,
        default=14400.0,
        metavar="S",
        help="longest session, seconds of audio; inf: no limit (default: 14400)",
    )
    add(
        "--idle-timeout-s",
        type=positive,
        default=60.0,
        metavar="S",
        help="close a session that sends nothing for this long (default: 60)",
    )
    add(
        "--max-windows-per-s",
        type=positive,
        default=3.0,
        metavar="W",
        help="encoder windows (one per segment, whatever its length) a session may cost per "
        "second of its audio before it is refused (too_fast); inf: no limit (default: 3)",
    )
    add(
        "--windows-burst",
        type=positive,
        default=30.0,
        metavar="W",
        help="windows a session may cost at any rate before --max-windows-per-s applies "
        "(default: 30)",
    )
    add(
        "--max-held-audio-mb",
        type=positive,
        default=512.0,
        metavar="MB",
        help="audio of segments waiting for the model, all sessions together, MiB: above half "
        "of it partials are shed, above 3/4 new sessions are refused, above it the session "
        "holding most is refused (1013); inf: no limit (default: 512)",
    )
    add(
        "--admission-headroom",
        type=positive,
        default=AdmissionOptions.headroom,
        metavar="H",
        help="admit a new session only while the open sessions' predicted demand, its own "
        "included, fits within H x the model's measured capacity (encoder windows/s); else "
        "refuse it (limit, 1013, retry_after_ms); inf: never refuse for capacity "
        f"(default: {AdmissionOptions.headroom:g})",
    )
    add(
        "--workers",
        type=count,
        metavar="N",
        help="ingest processes (WebSockets, sessions, VAD) sharing the port; 1: one process "
        "with the model in it (default: 1 on CPU, else one per core left after the model "
        f"processes, at most {MAX_DEFAULT_WORKERS})",
    )
    add(
        "--devices",
        type=devices_arg,
        metavar="DEVICES",
        help="one model process per device, e.g. cuda:0,cuda:1 (implies the multi-process "
        "server); a session's jobs always go to the same one (default: --device)",
    )
    drain = _number(float, 0, 86_400)  # finite: the worker thread is joined with what is left
    add(
        "--drain-timeout-s",
        type=drain,
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, how long open sessions get to finish (default: 30)",
    )
    add(
        "--ready-file",
        metavar="PATH",
        help="once listening and warmed up, write the ready JSON object here (atomically); "
        "removed on exit (default: none)",
    )
    add_vad_arguments(
        parser.add_argument_group(
            "VAD defaults",
            "for sessions whose start message has no vad object, and for the fields a vad "
            "object leaves out (docs/protocol.md)",
        )
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The parsed `serve` command line (environment already applied) as a ServerConfig."""
    if bool(args.certfile) != bool(args.keyfile):
        raise SystemExit("ichigo-stream serve: error: --certfile and --keyfile go together")
    if args.auth_token is None and environment_value("--token") is not None:
        # ICHIGO_TOKEN used to set the server's secret too: starting without one because it
        # was renamed would open a server its operator meant to protect.
        raise IchigoStreamError(
            "ICHIGO_TOKEN is the clients' credential and no longer sets the server's secret: "
            "set ICHIGO_AUTH_TOKEN (or --auth-token SECRET), or pass --auth-token '' to serve "
            "without one"
        )
    devices = args.devices or ()
    return ServerConfig(
        host=args.host,
        port=args.port,
        load=load_options(args),
        text=args.text,
        max_text_tokens=args.max_text_tokens,
        max_batch=args.max_batch,
        threads=args.threads,
        max_wait_ms=args.max_wait_ms,
        max_sessions=args.max_sessions,
        token=args.auth_token or None,
        metrics_token=args.metrics_token or None,
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
            max_windows_per_s=args.max_windows_per_s,
            windows_burst=args.windows_burst,
            max_messages_per_s=args.max_messages_per_s,
        ),
        max_held_audio_bytes=args.max_held_audio_mb * MIB,
        admission=AdmissionOptions(headroom=args.admission_headroom),
        drain_timeout_s=args.drain_timeout_s,
        ready_file=args.ready_file,
        vad=vad_options(args),
        workers=args.workers or default_workers(devices or (args.device,), os.cpu_count()),
        devices=devices,
    )
