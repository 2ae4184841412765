"""Prometheus text exposition of the server's counters, gauges and histograms (no dependency)."""

from __future__ import annotations

import bisect
import math
from collections import Counter as _Tally
from collections.abc import Sequence
from dataclasses import dataclass, field

from ichigo_stream.messages import ErrorMessage, Partial, Segment, ServerMessage

from .admission import Admission

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Fixed buckets: its size never depends on how many values it has seen."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def copy(self) -> Histogram:
        twin = Histogram(self.buckets)
        twin.counts, twin.total, twin.count = list(self.counts), self.total, self.count
        return twin

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip([*self.buckets, "+Inf"], self.counts, strict=True):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return [*out, f"{name}_sum {self.total:g}", f"{name}_count {self.count}"]


@dataclass
class WorkerStats:
    """What /metrics reports of the worker: counters and a fixed-bucket histogram.

    Its size is constant however long the server runs. It is written under the worker's
    lock; readers take ModelWorker.stats_snapshot(), a consistent copy. Torch-free (here, not
    in server.worker), as the ingest processes of multi-process mode receive it too.
    """

    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    jobs_done: int = 0
    jobs_failed: int = 0
    partials_shed: int = 0
    texts_decoded: int = 0
    held_bytes: int = 0  # audio of waiting jobs
    sessions_evicted: int = 0  # sessions dropped to keep within the held-audio budget

    @property
    def batches(self) -> int:
        return self.batch_size.count


class ServerMetrics:
    """Everything /metrics reports; updated on the event loop, read on the event loop."""

    def __init__(self) -> None:
        self.sessions_total = 0
        self.audio_seconds_in = 0.0
        self.segments_out = 0
        self.partials_out = 0
        self.errors = _Tally[str]()
        self.refusals = _Tally[str]()  # sessions turned away at connection time, by reason
        self.window_budget_rejections = 0  # sessions closed for costing too many windows
        self.endpoint_latency_ms = Histogram(LATENCY_BUCKETS_MS)

    def copy(self) -> ServerMetrics:
        """A snapshot (multi-process mode sends one to the model process every second)."""
        twin = ServerMetrics()
        twin.merge(self)
        return twin

    def merge(self, other: ServerMetrics) -> None:
        """Add other's counts to these (several ingest processes' into one page)."""
        self.sessions_total += other.sessions_total
        self.audio_seconds_in += other.audio_seconds_in
        self.segments_out += other.segments_out
        self.partials_out += other.partials_out
        self.errors.update(other.errors)
        self.refusals.update(other.refusals)
        self.window_budget_rejections += other.window_budget_rejections
        mine, theirs = self.endpoint_latency_ms, other.endpoint_latency_ms
        mine.counts = [a + b for a, b in zip(mine.counts, theirs.counts, strict=True)]
        mine.total += theirs.total
        mine.count += theirs.count

    def observe_message(self, message: ServerMessage) -> None:
        """Count one message handed to a socket, by its type."""
        if isinstance(message, Segment):
            self.segments_out += 1
            self.endpoint_latency_ms.observe(message.endpoint_ms)
        elif isinstance(message, Partial):
            self.partials_out += 1
        elif isinstance(message, ErrorMessage):
            self.errors[message.code] += 1

    def render_server(
        self,
        *,
        open_sessions: int,
        queue_depth: int,
        worker_healthy: bool,
        partials_shed: int,
        jobs_failed: int,
        batch_size: Histogram,
        held_bytes: float = 0,
        held_budget_bytes: float = float("inf"),
        sessions_evicted: int = 0,
        admission: Admission | None = None,
        openmetrics: bool = False,
    ) -> str:
        """The whole /metrics page: these values (the connections' and the worker's), then ours."""
        gauges = {
            "ichigo_sessions_open": ("Open WebSocket sessions.", open_sessions),
            "ichigo_queue_depth": ("Jobs waiting for the model worker.", queue_depth),
            "ichigo_worker_healthy": ("1 while the model worker answers.", int(worker_healthy)),
            "ichigo_held_audio_bytes": ("Audio held by jobs waiting for the model.", held_bytes),
            "ichigo_held_audio_budget_bytes": (
                "--max-held-audio-mb in bytes (+Inf: no limit).",
                held_budget_bytes,
            ),
        }
        if admission is not None:
            gauges |= {
                "ichigo_capacity_windows_per_second": (
                    "Encoder windows/s the model sustains at the batch size the load allows "
                    "(measured at warm-up, tracked while serving; +Inf: not measured).",
                    admission.capacity,
                ),
                "ichigo_demand_windows_per_second": (
                    "Predicted encoder windows/s of the open sessions' finals.",
                    admission.demand_finals,
                ),
                "ichigo_partial_demand_windows_per_second": (
                    "Predicted encoder windows/s of the open sessions' partials (shed first).",
                    admission.demand_partials,
                ),
                "ichigo_newcomer_windows_per_second": (
                    "Predicted encoder windows/s of one more session's finals.",
                    admission.newcomer,
                ),
                "ichigo_saturated": (
                    "1 while a new session would be refused for capacity (/readyz 503).",
                    int(admission.saturated),
                ),
            }
        counters = {
            "ichigo_partials_shed_total": ("Partial jobs dropped under load.", partials_shed),
            "ichigo_model_jobs_failed_total": ("Model jobs that raised.", jobs_failed),
            "ichigo_sessions_evicted_total": (
                "Sessions refused (1013) for holding the most audio over the budget.",
                sessions_evicted,
            ),
        }
        histograms = {"ichigo_batch_size": ("Clips per encoder batch.", batch_size)}
        return self.render(gauges, counters, histograms, openmetrics=openmetrics)

    def render(
        self,
        gauges: dict[str, tuple[str, float]],
        counters: dict[str, tuple[str, float]],
        histograms: dict[str, tuple[str, Histogram]],
        *,
        openmetrics: bool = False,
    ) -> str:
        """The exposition; gauges, counters and histograms kept elsewhere (the worker's) first.

        Prometheus text 0.0.4 by default; OpenMetrics 1.0 (counter families named without
        `_total`, a closing `# EOF`) with openmetrics=True. Counter names are given with their
        `_total` sample suffix. No two families share a name in either format: a counter
        `X_total` is family X, so no gauge may be called X (families() checks it).
        """
        lines: list[str] = []
        for family in self.families(gauges, counters, histograms):
            name = family.name if openmetrics or family.kind != "counter" else family.sample
            lines += [f"# HELP {name} {family.help}", f"# TYPE {name} {family.kind}"]
            lines += family.lines
        if openmetrics:
            lines.append("# EOF")
        return "\n".join(lines) + "\n"

    def families(
        self,
        gauges: dict[str, tuple[str, float]],
        counters: dict[str, tuple[str, float]],
        histograms: dict[str, tuple[str, Histogram]],
    ) -> list[Family]:
        """Every metric family, in exposition order; a family name used twice is a bug."""
        out: list[Family] = []
        for name, (help_text, value) in gauges.items():
            out.append(Family(name, "gauge", help_text, [f"{name} {_number(value)}"]))
        own_counters = {
            **counters,
            "ichigo_sessions_total": (
                "WebSocket sessions accepted (admitted).",
                self.sessions_total,
            ),
            "ichigo_audio_seconds_total": (
                "Seconds of audio received (16 kHz timeline).",
                self.audio_seconds_in,
            ),
            "ichigo_segments_total": ("Segment messages sent.", self.segments_out),
            "ichigo_partials_total": ("Partial messages sent.", self.partials_out),
            "ichigo_window_budget_rejections_total": (
                "Sessions refused (too_fast) for costing too many encoder windows.",
                self.window_budget_rejections,
            ),
        }
        for name, (help_text, value) in own_counters.items():
            out.append(Family(_counter_family(name), "counter", help_text, [f"{name} {value:g}"]))
        out.append(
            Family(
                "ichigo_errors",
                "counter",
                "Error messages sent, by code.",
                [
                    f'ichigo_errors_total{{code="{code}"}} {n}'
                    for code, n in sorted(self.errors.items())
                ],
            )
        )
        out.append(
            Family(
                "ichigo_refusals",
                "counter",
                "Connections refused at opening, by reason (sessions, memory, capacity, draining).",
                [
                    f'ichigo_refusals_total{{reason="{reason}"}} {n}'
                    for reason, n in sorted(self.refusals.items())
                ],
            )
        )
        all_histograms = {
            **histograms,
            "ichigo_endpoint_latency_ms": (
                "Endpoint decision to segment message, ms.",
                self.endpoint_latency_ms,
            ),
        }
        for name, (help_text, histogram) in all_histograms.items():
            out.append(Family(name, "histogram", help_text, histogram.lines(name)))
        names = [f.name for f in out]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metric families collide: {', '.join(duplicates)}")
        return out


def _number(value: float) -> str:
    """A sample value as the exposition formats spell it (+Inf, not Python's inf)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def _counter_family(sample: str) -> str:
    if not sample.endswith("_total"):
        raise ValueError(f"counter {sample!r} must end in _total")
    return sample.removesuffix("_total")


@dataclass(frozen=True)
class Family:
    """One metric family: its name (a counter's without `_total`), type, help and samples."""

    name: str
    kind: str  # gauge, counter or histogram
    help: str
    lines: list[str]

    @property
    def sample(self) -> str:
        """The name Prometheus text 0.0.4 declares: a counter's with its `_total`."""
        return f"{self.name}_total" if self.kind == "counter" else self.name
