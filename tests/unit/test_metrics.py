"""/metrics: its families parse as Prometheus text and as OpenMetrics, and no two collide."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from ichigo_stream.messages import ErrorMessage
from ichigo_stream_server.admission import Admission
from ichigo_stream_server.metrics import BATCH_BUCKETS, Histogram, ServerMetrics


def page(*, openmetrics: bool) -> str:
    metrics = ServerMetrics()
    metrics.sessions_total = 3
    metrics.audio_seconds_in = 12.5
    metrics.endpoint_latency_ms.observe(7.0)
    metrics.observe_message(ErrorMessage("limit", "too fast"))
    batch = Histogram(BATCH_BUCKETS)
    batch.observe(2)
    return metrics.render_server(
        open_sessions=1,
        queue_depth=0,
        worker_healthy=True,
        partials_shed=4,
        jobs_failed=0,
        batch_size=batch,
        openmetrics=openmetrics,
    )


def test_openmetrics_parses_with_unique_families() -> None:
    text = page(openmetrics=True)
    assert text.endswith("# EOF\n")
    families = list(openmetrics_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    by_name = {f.name: f for f in families}
    assert by_name["ichigo_sessions_open"].type == "gauge"
    assert by_name["ichigo_sessions_open"].samples[0].value == 1
    assert by_name["ichigo_sessions"].type == "counter"
    assert by_name["ichigo_sessions"].samples[0].name == "ichigo_sessions_total"
    assert by_name["ichigo_sessions"].samples[0].value == 3
    assert by_name["ichigo_errors"].samples[0].labels == {"code": "limit"}
    assert by_name["ichigo_endpoint_latency_ms"].type == "histogram"


def test_prometheus_text_keeps_its_names_and_no_family_collides() -> None:
    text = page(openmetrics=False)
    assert "ichigo_sessions_total 3" in text.splitlines()
    assert "# TYPE ichigo_sessions_total counter" in text.splitlines()
    assert "# EOF" not in text
    families = list(prometheus_families(text))
    # The parser names a counter's family without _total, as OpenMetrics does: a gauge called
    # ichigo_sessions would collide with the counter ichigo_sessions_total here.
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    assert {"ichigo_sessions", "ichigo_sessions_open", "ichigo_batch_size"} <= set(names)


def test_a_colliding_family_is_refused() -> None:
    with pytest.raises(ValueError, match="ichigo_sessions"):
        ServerMetrics().render({"ichigo_sessions": ("open", 1)}, {}, {})


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_capacity_demand_and_refusals_parse_in_both_formats(openmetrics: bool) -> None:
    metrics = ServerMetrics()
    metrics.sessions_total = 5  # admitted
    metrics.refusals["capacity"] += 2
    metrics.refusals["memory"] += 1
    text = metrics.render_server(
        open_sessions=5,
        queue_depth=3,
        worker_healthy=True,
        partials_shed=0,
        jobs_failed=0,
        batch_size=Histogram(BATCH_BUCKETS),
        held_budget_bytes=float("inf"),
        admission=Admission(False, 2500, 12.5, 9.75, 4.0, 1.5, 0.8),
        openmetrics=openmetrics,
    )
    parse = openmetrics_families if openmetrics else prometheus_families
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }
    assert samples[("ichigo_capacity_windows_per_second", ())] == 12.5
    assert samples[("ichigo_demand_windows_per_second", ())] == 9.75
    assert samples[("ichigo_partial_demand_windows_per_second", ())] == 4.0
    assert samples[("ichigo_newcomer_windows_per_second", ())] == 1.5
    assert samples[("ichigo_saturated", ())] == 1
    assert samples[("ichigo_sessions_total", ())] == 5
    assert samples[("ichigo_refusals_total", (("reason", "capacity"),))] == 2
    assert samples[("ichigo_refusals_total", (("reason", "memory"),))] == 1
    # No limit is +Inf, the spelling both formats define.
    assert "ichigo_held_audio_budget_bytes +Inf" in text.splitlines()
    assert samples[("ichigo_held_audio_budget_bytes", ())] == float("inf")
