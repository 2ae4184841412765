"""Prometheus text exposition of the server's counters, gauges and histograms (no dependency)."""

from __future__ import annotations

import bisect
from collections import Counter as _Tally
from collections.abc import Callable, Sequence

from ichigo_stream.messages import ErrorMessage, Partial, Segment, ServerMessage

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


class ServerMetrics:
    """Everything /metrics reports; updated on the event loop, read on the event loop."""

    def __init__(self) -> None:
        self.sessions_total = 0
        self.audio_seconds_in = 0.0
        self.segments_out = 0
        self.partials_out = 0
        self.errors = _Tally[str]()
        self.endpoint_latency_ms = Histogram(LATENCY_BUCKETS_MS)

    def observe_message(self, message: ServerMessage) -> None:
        """Count one message handed to a socket, by its type."""
        if isinstance(message, Segment):
            self.segments_out += 1
            self.endpoint_latency_ms.observe(message.endpoint_ms)
        elif isinstance(message, Partial):
            self.partials_out += 1
        elif isinstance(message, ErrorMessage):
            self.errors[message.code] += 1

    def render(
        self,
        gauges: dict[str, tuple[str, float]],
        counters: dict[str, tuple[str, float]],
        histograms: dict[str, tuple[str, Histogram]],
    ) -> str:
        """The exposition; gauges, counters and histograms kept elsewhere (the worker's) first."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, body: Callable[[], list[str]]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *body()])

        for name, (help_text, value) in gauges.items():
            metric(name, "gauge", help_text, lambda value=value, name=name: [f"{name} {value:g}"])
        for name, (help_text, value) in counters.items():
            metric(name, "counter", help_text, lambda value=value, name=name: [f"{name} {value:g}"])
        for name, (help_text, histogram) in histograms.items():
            metric(name, "histogram", help_text, lambda h=histogram, name=name: h.lines(name))
        metric(
            "ichigo_sessions_total",
            "counter",
            "WebSocket sessions accepted.",
            lambda: [f"ichigo_sessions_total {self.sessions_total}"],
        )
        metric(
            "ichigo_audio_seconds_total",
            "counter",
            "Seconds of audio received (16 kHz timeline).",
            lambda: [f"ichigo_audio_seconds_total {self.audio_seconds_in:g}"],
        )
        metric(
            "ichigo_segments_total",
            "counter",
            "Segment messages sent.",
            lambda: [f"ichigo_segments_total {self.segments_out}"],
        )
        metric(
            "ichigo_partials_total",
            "counter",
            "Partial messages sent.",
            lambda: [f"ichigo_partials_total {self.partials_out}"],
        )
        metric(
            "ichigo_errors_total",
            "counter",
            "Error messages sent, by code.",
            lambda: [
                f'ichigo_errors_total{{code="{code}"}} {n}'
                for code, n in sorted(self.errors.items())
            ],
        )
        metric(
            "ichigo_endpoint_latency_ms",
            "histogram",
            "Endpoint decision to segment message, ms.",
            lambda: self.endpoint_latency_ms.lines("ichigo_endpoint_latency_ms"),
        )
        return "\n".join(lines) + "\n"
