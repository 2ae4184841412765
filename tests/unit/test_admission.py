"""Capacity and admission control, driven sans-I/O: batch timings and submissions in, decisions out.

No threads, no clocks: time is a number passed in. The worker feeds the same calls under its
lock (server/worker.py); tests/integration/test_overload.py checks the whole on a real server.
"""

from __future__ import annotations

import math

import pytest

from ichigo_stream_server.admission import (
    Admission,
    AdmissionControl,
    AdmissionOptions,
)
from ichigo_stream_server.capacity import Capacity, warm_up_sizes


def test_capacity_is_unknown_until_measured_then_best_batch_the_load_allows() -> None:
    capacity = Capacity(max_batch=8)
    assert not capacity.measured and capacity.windows_per_s() == math.inf
    capacity.observe(1, 0.1)  # 10 windows/s one at a time
    capacity.observe(8, 0.4)  # 20 windows/s in full batches
    assert capacity.windows_per_s() == pytest.approx(20.0)
    # Two sessions fill batches of 2 at most: 0.1 + (0.3 / 7) s per batch, interpolated.
    assert capacity.windows_per_s(2) == pytest.approx(2 / (0.1 + 0.3 / 7))
    assert capacity.windows_per_s(1) == pytest.approx(10.0)
    assert capacity.table() == pytest.approx({1: 10.0, 8: 20.0})
    assert warm_up_sizes(1) == (1,) and warm_up_sizes(8) == (1, 8)


def test_capacity_tracks_batches_while_serving() -> None:
    capacity = Capacity(max_batch=1)
    capacity.observe(1, 0.1)
    for _ in range(30):  # the device got twice as slow
        capacity.observe(1, 0.2)
    assert capacity.windows_per_s() == pytest.approx(5.0, rel=0.01)
    capacity.observe(1, math.nan)  # ignored, like a negative time
    capacity.observe(1, -1.0)
    assert capacity.windows_per_s() == pytest.approx(5.0, rel=0.01)


def control(windows_per_s: float = 10.0, **options: float) -> AdmissionControl:
    admission = AdmissionControl(1, AdmissionOptions(**options))
    admission.batch_done(1, 1 / windows_per_s)
    return admission


def speak(
    admission: AdmissionControl,
    session: str,
    rate: float,
    start: float,
    end: float,
    partials_rate: float = 0.0,
) -> None:
    """Submit `session`'s finals (and partials) at these windows/s over [start, end), in time
    order."""
    events = [(start + i / rate, "final") for i in range(round((end - start) * rate))]
    if partials_rate:
        n = round((end - start) * partials_rate)
        events += [(start + i / partials_rate, "partial") for i in range(n)]
    for at, kind in sorted(events):
        admission.submitted(session, kind, at)  # type: ignore[arg-type]


def test_sessions_are_admitted_while_their_measured_demand_fits_then_refused() -> None:
    admission = control(10.0, headroom=0.8)  # room for 8 windows/s of finals
    now = 0.0
    admitted = []
    for i in range(8):
        decision = admission.admit(f"s{i}", now)
        if not decision.admits:
            break
        admitted.append(f"s{i}")
        # The new session speaks 2 windows/s for 4 s before the next one comes.
        for s in admitted:
            speak(admission, s, 2.0, now, now + 4.0)
        now += 4.0
    assert len(admitted) == 4, admitted  # 4 x 2 = 8 windows/s: a fifth would make 10
    assert decision.demand_finals == pytest.approx(8.0, rel=0.05)
    assert decision.newcomer == pytest.approx(2.0, rel=0.05)
    assert decision.saturated and decision.retry_after_ms is not None
    assert 1000 <= decision.retry_after_ms <= 30_000
    assert admission.sessions == 4  # the refused one is not counted
    # One leaves: its demand goes at once, and there is room again.
    admission.closed("s0")
    assert admission.decide(now).admits


def test_a_burst_of_new_sessions_counts_each_at_the_newcomer_rate() -> None:
    # Nobody speaks yet: each newcomer is predicted at the prior, 1 window / 3 s of speech,
    # so a burst cannot take in more sessions than the prior fits (capacity 3 windows/s).
    admission = control(3.0, headroom=1.0, prior_windows_per_s=1 / 3)
    admitted = sum(admission.admit(f"s{i}", 0.0).admits for i in range(20))
    assert admitted == 9
    # Their first segment still to come, they count for as long as one segment can take;
    # silent past that, they cost nothing: room again.
    assert not admission.decide(20.0).admits
    assert admission.decide(AdmissionOptions().pledge_max_s + 0.1).admits


def test_below_the_floor_sessions_are_admitted_whatever_the_prediction() -> None:
    admission = control(1.0, min_sessions=3)  # one window/s: one speaking session fills it
    for i in range(3):
        assert admission.admit(f"s{i}", 0.0).admits
        speak(admission, f"s{i}", 2.0, 0.0, 10.0)
    decision = admission.admit("s3", 10.0)
    assert not decision.admits and decision.retry_after_ms == 30_000  # no room at all
    strict = control(1.0, min_sessions=0)
    assert strict.admit("s0", 0.0).admits  # the prior (1/3 window/s) fits
    speak(strict, "s0", 2.0, 0.0, 10.0)
    assert not strict.admit("s1", 10.0).admits


def test_a_silent_session_is_not_speaking_and_does_not_lower_the_newcomer_rate() -> None:
    admission = control(100.0)
    admission.admit("talker", 0.0)
    admission.admit("quiet", 0.0)
    speak(admission, "talker", 2.0, 0.0, 10.0)
    # Before its first segment the quiet one counts at the newcomer's rate (one may come).
    assert admission.decide(10.0).demand_finals == pytest.approx(4.0, rel=0.1)
    speak(admission, "talker", 2.0, 10.0, 40.0)
    decision = admission.decide(40.0)  # past the pledge: silent, not speaking
    assert admission.sessions == 2
    assert decision.newcomer == pytest.approx(2.0, rel=0.1)
    assert decision.demand_finals == pytest.approx(2.0, rel=0.1)


def test_demand_decays_when_a_session_stops_speaking() -> None:
    admission = control(100.0, time_constant_s=2.0)
    admission.admit("s", 0.0)
    speak(admission, "s", 4.0, 0.0, 20.0)
    assert admission.decide(20.0).demand_finals == pytest.approx(4.0, rel=0.1)
    assert admission.decide(30.0).demand_finals < 4.0 * math.exp(-4)
    assert admission.decide(1000.0).demand_finals == 0.0 and admission.sessions == 0  # forgotten


def test_partials_are_shed_first_to_the_share_that_fits() -> None:
    admission = control(10.0, headroom=0.8)
    admission.admit("s", 0.0)
    # finals: 6 of 10 windows/s; partials: 8 windows/s asked, 4 fit
    speak(admission, "s", 6.0, 0.0, 10.0, partials_rate=8.0)
    decision = admission.decide(10.0)
    assert decision.demand_partials == pytest.approx(8.0, rel=0.1)
    share = AdmissionControl.partial_share(decision)
    assert share == pytest.approx(0.5, rel=0.15)
    # As the worker does: each partial counted, then run or shed; the finals go on too.
    taken = 0
    for i in range(80):
        now = 10.0 + i / 8
        if i % 4 in (0, 2, 3):  # 6 finals/s
            admission.submitted("s", "final", now)
        admission.submitted("s", "partial", now)
        taken += admission.take_partial(now)
    assert 30 <= taken <= 50  # about half, spread evenly
    # Room for all of them: none is shed.
    roomy = control(100.0)
    roomy.submitted("s", "partial", 0.0)
    assert all(roomy.take_partial(i / 8) for i in range(40))


def test_no_capacity_measured_refuses_nobody_and_inf_headroom_refuses_nobody() -> None:
    unmeasured = AdmissionControl(4)
    assert all(unmeasured.admit(f"s{i}", 0.0).admits for i in range(100))
    unlimited = control(0.01, headroom=math.inf)
    assert all(unlimited.admit(f"s{i}", 0.0).admits for i in range(100))


def test_an_admission_is_a_small_frozen_value_a_proxy_can_count_newcomers_on() -> None:
    decision = Admission(True, None, 10.0, 6.0, 0.0, 1.0, 0.8)
    assert decision.with_newcomer().admits  # 7 <= 8
    refused = decision.with_newcomer().with_newcomer()
    assert not refused.admits and refused.retry_after_ms is not None  # 8 + 1 > 8
    with pytest.raises(AttributeError):
        decision.admits = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "options",
    [
        {"headroom": 0.0},
        {"time_constant_s": 0.0},
        {"min_retry_s": 5.0, "max_retry_s": 1.0},
        {"min_sessions": -1},
    ],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdmissionOptions(**options)
