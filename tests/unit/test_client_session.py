"""ClientSession, the streaming client's protocol state across connections, driven sans-I/O.

No sockets, no tasks, no sleeps: time is a number passed in, the server is the messages fed
to receive(), and what the client would send is read from next_send(). These cover the
reconnect rules one edge at a time; tests/integration/test_client.py proves the same end to end
against a real server killed and restarted mid-stream.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from ichigo_stream.client_events import (
    Connected,
    Connecting,
    GaveUp,
    Reconnecting,
    event_record,
)
from ichigo_stream.client_session import (
    AWAIT_AUDIO,
    ClientOptions,
    ClientSession,
    ReconnectPolicy,
    SendAudio,
    SendFlush,
    SendStop,
    Throttle,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import (
    AuthenticationError,
    ClientError,
    ConnectionLost,
    RemoteError,
)
from ichigo_stream.messages import (
    Capabilities,
    Done,
    ErrorMessage,
    Partial,
    Ready,
    Segment,
    SpeechStart,
)
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.protocol import StartOptions
from ichigo_stream.resend_buffer import ResendBuffer

URL = "ws://server.test/v1/stream"
READY = Ready(
    1,
    "session-id",
    ModelInfo("fake.pth", "0" * 64, 2561, 2048, 25, "medium"),
    SAMPLE_RATE,
    Capabilities(),
)
GRID = 480  # the default VAD frame, 30 ms at 16 kHz
# No jitter: delays are exactly initial * multiplier ** failures.
STEADY = ReconnectPolicy(jitter=0.0, max_attempts=None, max_total_s=None)


def session(
    start: StartOptions = StartOptions(),
    reconnect: ReconnectPolicy | None = STEADY,
    **options: object,
) -> ClientSession:
    defaults: dict = {"max_realtime": None}
    config = ClientOptions(URL, start=start, reconnect=reconnect, **{**defaults, **options})
    return ClientSession(config, now=0.0, rng=random.Random(7))


def connect(s: ClientSession, now: float = 0.0) -> Connected:
    s.connect(now)
    (connected,) = s.receive(READY, now)
    assert isinstance(connected, Connected) and s.state == "streaming"
    return connected


def drain(s: ClientSession, now: float = 0.0) -> list[object]:
    """Everything the session would send now, until it needs more audio (or has no more)."""
    sent: list[object] = []
    while (action := s.next_send(now)) not in (None, AWAIT_AUDIO):
        assert not isinstance(action, Throttle), action
        sent.append(action)
    return sent


def audio_of(actions: list[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendAudio))


def pcm(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1, seed: int = 0) -> bytes:
    """Distinct int16 samples, so any shift in what is resent shows."""
    frames = round(seconds * rate)
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32767, frames * channels, dtype=np.int16).astype("<i2").tobytes()


def segment(index: int, start: float, end: float) -> Segment:
    return Segment(index, start, end, (1, 2, 3), endpoint_ms=0.0)


def lose_and_reconnect(s: ClientSession, now: float) -> tuple[list[object], Connected]:
    events = s.connection_lost(now)
    return events, connect(s, now)


# -- one connection -------------------------------------------------------------------------------


def test_one_connection_start_audio_stop_and_the_final_done() -> None:
    s = session()
    assert s.connect(0.0) == Connecting(URL, 1)
    assert s.start == StartOptions() and s.state == "connecting"
    assert s.next_send(0.0) is None  # nothing before the ready
    (connected,) = s.receive(READY, 0.0)
    assert connected == Connected(READY, 0, 0.0) and not connected.resumed
    audio = pcm(1.2)
    s.audio(audio)
    sent = drain(s)
    # max_message_s 0.5: 0.5 + 0.5 + 0.2 s, then it waits for the source.
    assert [len(a.data) for a in sent] == [16000, 16000, 6400]
    assert audio_of(sent) == audio and s.next_send(0.0) is AWAIT_AUDIO
    assert s.end_audio() == 0
    assert s.next_send(0.0) == SendStop() and s.next_send(0.0) is None
    assert s.receive(SpeechStart(0, 0.3), 1.0) == [SpeechStart(0, 0.3)]
    assert s.receive(segment(0, 0.3, 0.9), 1.0) == [segment(0, 0.3, 0.9)]
    assert s.receive(Done(1, 1.2), 1.0) == [Done(1, 1.2)]
    assert s.state == "finished" and s.error is None and s.reconnects == 0
    assert s.receive(segment(1, 1.0, 1.1), 1.0) == []  # nothing counts after the end


def test_raw_bytes_that_split_frames_go_out_as_whole_frames() -> None:
    s = session(StartOptions(channels=2))  # 4-byte frames
    connect(s)
    audio = pcm(0.01, channels=2)
    s.audio(audio[:5])
    assert audio_of(drain(s)) == audio[:4]
    s.flush()  # after the whole frames: the split one is not sent yet
    s.audio(audio[5:9])
    sent = drain(s)
    assert sent == [SendFlush(), SendAudio(audio[4:8])]
    s.audio(audio[9:11])  # a frame and a half of 4 bytes: 1 + 2 -> 8..11 is 3 bytes
    assert drain(s) == []
    assert s.end_audio() == 3  # the split last frame is dropped, never sent
    assert s.next_send(0.0) == SendStop()


def test_throttle_keeps_under_max_realtime_after_the_burst() -> None:
    s = session(max_realtime=8.0, burst_s=2.0, max_message_s=0.5)
    connect(s, now=10.0)
    s.audio(pcm(3.0))
    sent = [s.next_send(10.0) for _ in range(4)]
    assert all(isinstance(a, SendAudio) for a in sent)  # the first 2 s at any speed
    wait = s.next_send(10.0)
    assert wait == Throttle(pytest.approx(0.5 / 8.0))
    assert isinstance(s.next_send(10.0 + 0.5 / 8.0), SendAudio)
    assert s.next_send(10.0 + 0.5 / 8.0) == Throttle(pytest.approx(0.5 / 8.0))


def test_a_first_message_other_than_ready_fails_the_stream() -> None:
    s = session()
    s.connect(0.0)
    assert s.receive(Done(0, 0.0), 0.0) == []
    assert s.state == "failed" and isinstance(s.error, ClientError)
    assert "expected a ready message" in str(s.error)


def test_calls_out_of_order_are_bugs_not_states() -> None:
    s = session()
    connect(s)
    with pytest.raises(RuntimeError, match="streaming"):
        s.connect(0.0)
    with pytest.raises(RuntimeError, match="streaming"):
        s.connect_failed("nope", 0.0)


# -- resuming on the VAD frame grid --------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(16_000, 1), (44_100, 2), (48_000, 1)])
def test_a_reconnect_resumes_on_the_vad_grid_and_resends_from_there(
    rate: int, channels: int
) -> None:
    start = StartOptions(sample_rate=rate, channels=channels, offset=100.0)
    s = session(start)
    connect(s)
    audio = pcm(6.0, rate, channels)
    s.audio(audio)
    drain(s)
    # A segment ended at 103.41 s: sample 54560 of the session, the grid point before it is
    # 54240 (3.39 s), a whole frame at every rate here.
    assert s.receive(segment(0, 101.0, 103.41), 1.0) == [segment(0, 101.0, 103.41)]
    assert s.resume_offset == 103.39
    events, connected = lose_and_reconnect(s, 2.0)
    assert events == [Reconnecting(1, 0.0, "connection lost")]
    assert connected == Connected(READY, 1, 103.39) and connected.resumed
    assert s.start == replace(start, offset=103.39)
    frame = 2 * channels
    resent = audio_of(drain(s, 2.0))
    assert resent == audio[round(3.39 * rate) * frame :]


def test_at_a_rate_off_the_grid_the_resume_point_is_the_frame_before() -> None:
    """11.025 kHz with 10 ms VAD frames: a grid point is 110.25 client frames."""
    start = StartOptions(sample_rate=11_025, vad=replace(StartOptions().vad, frame_ms=10))
    s = session(start)
    connect(s)
    audio = pcm(2.0, 11_025)
    s.audio(audio)
    drain(s)
    s.receive(segment(0, 0.2, 1.005), 1.0)  # sample 16080: grid point 16000, 11025 frames
    assert s.resume_offset == 1.0
    s.receive(segment(1, 1.1, 1.2155), 1.0)  # sample 19448: grid point 19360, 13340.25 frames
    assert s.resume_offset == 13340 / 11_025
    _, connected = lose_and_reconnect(s, 2.0)
    assert connected.offset == 13340 / 11_025
    assert audio_of(drain(s, 2.0)) == audio[13340 * 2 :]


def test_flushes_before_the_resume_point_are_dropped_and_later_ones_resent_in_place() -> None:
    s = session()
    connect(s)
    audio = pcm(6.0)
    bps = 2 * SAMPLE_RATE
    s.audio(audio[: 2 * bps])
    s.flush()  # at 2 s
    s.audio(audio[2 * bps : 5 * bps])
    s.flush()  # at 5 s
    s.audio(audio[5 * bps :])
    sent = drain(s)
    flushes = [i for i, a in enumerate(sent) if isinstance(a, SendFlush)]
    assert [len(audio_of(sent[:i])) for i in flushes] == [2 * bps, 5 * bps]
    s.receive(segment(0, 0.5, 3.01), 1.0)  # resume at 3.0 s (sample 48000 is on the grid)
    assert s.resume_offset == 3.0
    lose_and_reconnect(s, 2.0)
    resent = drain(s, 2.0)
    flushes = [i for i, a in enumerate(resent) if isinstance(a, SendFlush)]
    assert [len(audio_of(resent[:i])) for i in flushes] == [2 * bps]  # 5 s - 3 s
    assert audio_of(resent) == audio[3 * bps :]


def test_the_resend_buffer_is_bounded_to_whole_grid_points_of_sent_audio() -> None:
    s = session(resend_limit_s=5.0)
    connect(s)
    audio = pcm(8.0)
    s.audio(audio)
    drain(s)
    kept_s = 8.0 - s.resume_offset
    assert 5.0 - 0.03 < kept_s <= 5.0
    assert round(s.resume_offset * SAMPLE_RATE) % GRID == 0
    s.receive(segment(0, 0.1, 1.0), 1.0)  # older than what is kept: nothing moves back
    assert 8.0 - s.resume_offset == kept_s
    _, connected = lose_and_reconnect(s, 2.0)
    assert connected.offset == s.resume_offset
    assert audio_of(drain(s, 2.0)) == audio[round(s.resume_offset * SAMPLE_RATE) * 2 :]


def test_the_bound_never_drops_audio_that_was_not_sent() -> None:
    s = session(resend_limit_s=1.0, max_message_s=0.5)
    connect(s)
    s.audio(pcm(4.0))
    s.next_send(0.0)  # 0.5 s sent, 3.5 s waiting: all kept
    assert s.resume_offset == 0.0
    for _ in range(3):
        s.next_send(0.0)
    # 2 s sent, at most 1 s of it kept: dropped up to the grid point after 1.0 s.
    assert s.resume_offset == 1.02


def test_resend_buffer_resumes_on_the_vad_frame_grid_and_stays_bounded() -> None:
    backlog = ResendBuffer(StartOptions())
    backlog.append(bytes(2 * SAMPLE_RATE * 40))  # 40 s of pcm_s16le, all sent
    backlog.acknowledge(3.41)  # a segment ended at sample 54560: the grid point before is 54240
    assert backlog.resume_offset == 3.39
    backlog.bound(backlog.end, limit_s=35.0)
    kept = (backlog.end - backlog.start) / 2 / SAMPLE_RATE
    assert 35.0 - 0.03 < kept <= 35.0 and backlog.start // 2 % 480 == 0
    backlog.acknowledge(1.0)  # never backwards
    assert backlog.resume_offset == pytest.approx(40.0 - kept)
    # 44.1 kHz stereo from offset 100 s: the grid is anchored at the offset, positions are
    # whole client frames.
    stereo = ResendBuffer(StartOptions(sample_rate=44_100, channels=2, offset=100.0))
    stereo.append(bytes(4 * 44_100 * 10))
    stereo.acknowledge(103.41)
    assert stereo.resume_offset == 103.39 and stereo.start % 4 == 0


# -- renumbering and duplicates -------------------------------------------------------------------


def test_indices_continue_across_a_reconnect() -> None:
    s = session()
    connect(s)
    s.audio(pcm(10.0))
    drain(s)
    assert s.receive(segment(0, 0.5, 1.5), 1.0)[0].segment == 0
    assert s.receive(segment(1, 2.0, 3.0), 1.0)[0].segment == 1
    assert s.receive(SpeechStart(2, 3.5), 1.0) == [SpeechStart(2, 3.5)]  # open when lost
    lose_and_reconnect(s, 2.0)
    # The new server session counts from 0: its k is the stream's 2 + k.
    assert s.receive(SpeechStart(0, 3.5), 2.0) == [SpeechStart(2, 3.5)]  # repeated: allowed
    assert s.receive(Partial(0, 3.5, 4.0, (5,)), 2.0) == [Partial(2, 3.5, 4.0, (5,))]
    assert s.receive(segment(0, 3.5, 4.5), 2.0) == [segment(2, 3.5, 4.5)]
    failed = ErrorMessage("internal", "model failed", segment=1)
    assert s.receive(failed, 2.0) == [replace(failed, segment=3)]
    assert s.receive(segment(2, 6.0, 7.0), 2.0) == [segment(4, 6.0, 7.0)]
    assert s.segments == 4


def test_a_resumed_session_repeating_a_delivered_segment_is_dropped_without_a_gap() -> None:
    s = session()
    connect(s)
    s.audio(pcm(10.0))
    drain(s)
    s.receive(segment(0, 0.5, 1.5), 1.0)
    s.receive(segment(1, 2.0, 3.01), 1.0)
    lose_and_reconnect(s, 2.0)  # resumes at 3.0 s, the grid point before 3.01 s
    assert s.receive(segment(0, 3.0, 3.01), 2.0) == []  # wholly delivered already
    assert s.receive(segment(1, 3.0, 3.2), 2.0) == [segment(2, 3.0, 3.2)]  # reaches past it
    assert s.receive(segment(2, 4.0, 5.0), 2.0) == [segment(3, 4.0, 5.0)]
    assert s.segments == 4
    s.end_audio()
    drain(s, 2.0)
    (done,) = s.receive(Done(3, 7.0), 3.0)
    assert done == Done(4, 10.0)  # delivered segments; the duplicate is not counted


# -- done -----------------------------------------------------------------------------------------


def test_a_draining_servers_early_done_ends_the_connection_not_the_stream() -> None:
    s = session()
    connect(s)
    s.audio(pcm(4.0))
    drain(s)
    s.receive(segment(0, 0.5, 1.52), 1.0)
    assert s.receive(Done(1, 4.0), 1.5) == []  # before our stop: the rest goes elsewhere
    assert s.state == "closing" and s.next_send(1.5) is None
    assert s.receive(segment(1, 2.0, 3.0), 1.5) == []  # nothing counts after its done
    events, connected = lose_and_reconnect(s, 1.6)
    assert events == [Reconnecting(1, 0.0, "the server finished early (draining)")]
    assert connected.offset == 1.5  # 1.52 s is sample 24320: grid point 24000
    s.end_audio()
    resent = drain(s, 1.6)
    assert resent[-1] == SendStop() and len(audio_of(resent)) == 2 * round(2.5 * SAMPLE_RATE)
    (done,) = s.receive(Done(1, 2.5), 2.0)
    assert done == Done(1, 4.0) and s.state == "finished" and s.reconnects == 1


def test_a_done_after_stop_that_misses_audio_is_a_drain_race() -> None:
    """The server began draining after our stop was on its way: it ignored what came after."""
    s = session()
    connect(s)
    s.audio(pcm(2.0))
    s.end_audio()
    assert drain(s)[-1] == SendStop()
    assert s.receive(Done(0, 1.5), 1.0) == []
    assert s.state == "closing"
    events = s.connection_lost(1.0)
    assert events == [Reconnecting(1, 0.0, "the server finished early (draining)")]


@pytest.mark.parametrize(
    ("rate", "shortfall_s", "finished"),
    [
        (16_000, 0.0, True),
        (16_000, 0.0001, False),  # at 16 kHz the count is exact
        (44_100, 0.004, True),  # resampled: a few samples either way are the resampler's
        (44_100, 0.006, False),
    ],
)
def test_done_after_stop_must_cover_all_audio_sent(
    rate: int, shortfall_s: float, finished: bool
) -> None:
    s = session(StartOptions(sample_rate=rate, offset=50.0))
    connect(s)
    s.audio(pcm(3.0, rate))
    s.end_audio()
    drain(s)
    events = s.receive(Done(0, 3.0 - shortfall_s), 1.0)
    assert (s.state == "finished") is finished
    assert events == ([Done(0, round(3.0 - shortfall_s, 6))] if finished else [])


def test_the_final_done_has_totals_over_all_connections() -> None:
    start = StartOptions(offset=100.0)
    s = session(start)
    connect(s)
    s.audio(pcm(6.0))
    drain(s)
    s.receive(segment(0, 100.5, 101.5), 1.0)
    s.receive(segment(1, 102.0, 103.41), 1.0)
    lose_and_reconnect(s, 2.0)
    s.receive(segment(0, 104.0, 105.0), 2.5)
    s.end_audio()
    drain(s, 2.5)
    (done,) = s.receive(Done(1, 6.0 - 3.39), 3.0)
    # audio_seconds from the first session's offset, not the timeline's zero.
    assert done == Done(3, 6.0) and s.reconnects == 1 and s.connections == 2


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fatal"),
    [
        ("bad_message", RemoteError),
        ("bad_audio", RemoteError),
        ("unsupported", RemoteError),
        ("too_large", RemoteError),
        ("too_fast", RemoteError),
        ("unauthorized", AuthenticationError),
        ("limit", None),
        ("internal", None),
        ("a_code_from_a_newer_server", None),
    ],
)
def test_each_error_code_is_fatal_or_retried(code: str, fatal: type | None) -> None:
    error = ErrorMessage(code, "what the server said")
    # While streaming:
    s = session()
    connect(s)
    events = s.receive(error, 1.0)
    if fatal is None:
        assert events == [error] and s.state == "streaming"  # the server closes next
        assert s.connection_lost(1.0) == [
            Reconnecting(2, 0.2, "connection lost")  # up for 1 s, nothing delivered: a failure
        ]
    else:
        assert events == [] and s.state == "failed"
        assert type(s.error) is fatal and s.error.code == code
        assert s.error.message == "what the server said"
    # Instead of the ready (retried: retry_initial, or after a connection that worked):
    s = session(reconnect=replace(STEADY, retry_initial=True))
    s.connect(0.0)
    events = s.receive(error, 0.0)
    if fatal is None:
        assert events == [Reconnecting(2, 0.2, f"cannot connect ({code}: what the server said)")]
    else:
        assert events == [] and type(s.error) is fatal


def test_a_segments_error_is_not_fatal() -> None:
    s = session()
    connect(s)
    failed = ErrorMessage("bad_audio", "text decoding failed", segment=0)
    assert s.receive(failed, 1.0) == [failed] and s.state == "streaming"


@pytest.mark.parametrize("status", [401, 403])
def test_an_authentication_refusal_is_never_retried(status: int) -> None:
    s = session(reconnect=replace(STEADY, retry_initial=True))
    s.connect(0.0)
    assert s.refused(status, f"HTTP {status}", 0.0) == []
    assert isinstance(s.error, AuthenticationError) and s.error.code == "unauthorized"
    assert f"HTTP {status} from {URL}" in str(s.error) and s.state == "failed"


def test_handshake_statuses_other_than_auth() -> None:
    retrying = replace(STEADY, retry_initial=True)
    s = session(reconnect=retrying)
    s.connect(0.0)
    assert s.refused(404, "HTTP 404", 0.0) == []  # no such endpoint: a wrong URL
    assert type(s.error) is ClientError and "HTTP 404" in str(s.error)
    for status in (408, 425, 429, 500, 502, 503, 504):
        s = session(reconnect=retrying)
        s.connect(0.0)
        assert s.refused(status, f"HTTP {status}", 0.0) == [
            Reconnecting(2, 0.2, f"cannot connect (HTTP {status})")
        ]


# -- the reconnect policy -------------------------------------------------------------------------


def test_the_first_connection_is_not_retried_unless_asked() -> None:
    s = session()
    s.connect(0.0)
    reason = f"cannot connect to {URL}: Connection refused"
    assert s.connect_failed("Connection refused", 0.0) == [GaveUp(reason)]
    assert isinstance(s.error, ConnectionLost) and str(s.error) == reason
    s = session(reconnect=replace(STEADY, retry_initial=True))
    s.connect(0.0)
    assert s.connect_failed("Connection refused", 0.0) == [
        Reconnecting(2, 0.2, "cannot connect (Connection refused)")
    ]
    assert s.connect(0.2) == Connecting(URL, 2)


def test_without_a_policy_nothing_is_retried() -> None:
    s = session(reconnect=None)
    connect(s)
    s.receive(segment(0, 0.1, 0.5), 1.0)
    assert s.connection_lost(1.0) == [GaveUp("connection lost; reconnecting is disabled")]
    assert isinstance(s.error, ConnectionLost)


def test_backoff_grows_and_max_attempts_gives_up() -> None:
    policy = replace(STEADY, initial_delay_s=0.1, max_delay_s=0.5, max_attempts=3)
    s = session(reconnect=replace(policy, retry_initial=True))
    now, delays = 0.0, []
    for attempt in (1, 2, 3):
        assert s.connect(now) == Connecting(URL, attempt)
        (event,) = s.connect_failed("refused", now)
        assert isinstance(event, Reconnecting) and event.attempt == attempt + 1
        delays.append(event.delay_s)
        now += event.delay_s
    assert delays == pytest.approx([0.1, 0.2, 0.4])
    s.connect(now)
    (gave_up,) = s.connect_failed("refused", now)
    assert isinstance(gave_up, GaveUp) and "after 3 failed attempt(s)" in gave_up.reason
    assert isinstance(s.error, ConnectionLost) and str(s.error) == gave_up.reason


def test_delays_are_capped_and_jittered_by_the_injected_rng() -> None:
    policy = ReconnectPolicy(initial_delay_s=1.0, max_delay_s=3.0, jitter=0.5, max_attempts=None)
    delays = [policy.delay(failures, random.Random(1)) for failures in range(6)]
    bases = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert all(0.5 * b <= d <= b for d, b in zip(delays, bases, strict=True))
    same = [policy.delay(failures, random.Random(1)) for failures in range(6)]
    assert delays == same  # the rng decides: a test can make it exact


def test_max_total_s_counts_from_the_last_progress() -> None:
    policy = replace(STEADY, max_total_s=10.0, initial_delay_s=1.0, max_delay_s=1.0)
    s = session(reconnect=policy)
    connect(s, now=0.0)
    s.receive(segment(0, 0.1, 0.5), 1.0)
    assert s.connection_lost(20.0) == [Reconnecting(1, 0.0, "connection lost")]  # progress
    now = 20.0
    while True:
        s.connect(now)
        events = s.connect_failed("refused", now)
        if isinstance(events[0], GaveUp):
            break
        now += events[0].delay_s
    assert now > 30.0 and "in 11.0 s" in events[0].reason


def test_a_connection_that_stays_up_is_progress_one_lost_at_once_is_a_failure() -> None:
    policy = replace(STEADY, stable_s=5.0)
    s = session(reconnect=policy)
    connect(s, now=0.0)
    assert s.connection_lost(5.0) == [Reconnecting(1, 0.0, "connection lost")]  # stable
    connect(s, now=5.0)
    assert s.connection_lost(6.0) == [Reconnecting(2, 0.2, "connection lost")]  # not stable
    connect(s, now=6.2)
    assert s.connection_lost(7.0) == [Reconnecting(3, 0.4, "connection lost")]
    s.connect(7.4)
    assert s.connect_failed("refused", 7.4) == [Reconnecting(4, 0.8, "cannot connect (refused)")]
    connect(s, now=8.2)
    s.audio(pcm(1.0))
    drain(s, 8.2)
    s.receive(segment(0, 0.1, 0.5), 8.5)  # progress: failures start again from 0
    assert s.connection_lost(8.6) == [Reconnecting(1, 0.0, "connection lost")]
    s.connect(8.6)
    assert s.connect_failed("refused", 8.6) == [Reconnecting(2, 0.2, "cannot connect (refused)")]


def test_a_connection_made_after_failures_counts_towards_max_attempts_until_progress() -> None:
    policy = replace(STEADY, max_attempts=2, initial_delay_s=0.1)
    s = session(reconnect=policy)
    connect(s)
    assert s.connection_lost(0.5)[0] == Reconnecting(2, 0.1, "connection lost")
    connect(s, 0.6)
    assert s.connection_lost(0.7)[0] == Reconnecting(3, 0.2, "connection lost")
    connect(s, 0.9)
    (event,) = s.connection_lost(1.0)
    assert isinstance(event, GaveUp) and "after 2 failed attempt(s)" in event.reason


# -- the events as records ------------------------------------------------------------------------


def test_connection_events_as_json_records() -> None:
    records = [
        event_record(Connecting(URL, 1)),
        event_record(Connected(READY, 1, 3.39)),
        event_record(Reconnecting(2, 0.25, "connection lost")),
        event_record(GaveUp("no")),
        event_record(segment(0, 0.1, 0.5)),
    ]
    assert [r["type"] for r in records] == [
        "connecting",
        "connected",
        "reconnecting",
        "gave_up",
        "segment",
    ]
    assert records[1]["connection"] == 1 and records[1]["offset"] == 3.39
    assert records[1]["ready"]["type"] == "ready" and records[1]["ready"]["session"] == "session-id"
    assert records[2] == {
        "type": "reconnecting",
        "attempt": 2,
        "delay_s": 0.25,
        "reason": "connection lost",
    }
    json.dumps(records)  # JSON-ready


def test_a_refusal_with_retry_after_ms_delays_the_next_attempt_once() -> None:
    # A server at capacity refuses the handshake: limit, retry_after_ms, close 1013.
    s = session(reconnect=replace(STEADY, retry_initial=True))
    s.connect(0.0)
    refusal = ErrorMessage("limit", "server at capacity: try again later", retry_after_ms=4500)
    assert s.receive(refusal, 0.0) == [
        Reconnecting(2, 4.5, "cannot connect (limit: server at capacity: try again later)")
    ]
    s.connect(4.5)
    # Refused again without it: the backoff alone (0.2 * 2), not the earlier wait.
    (event,) = s.connect_failed("refused", 4.5)
    assert event == Reconnecting(3, 0.4, "cannot connect (refused)")


def test_retry_after_ms_is_at_least_the_wait_but_never_shortens_the_backoff() -> None:
    policy = replace(STEADY, initial_delay_s=2.0, retry_initial=True)
    s = session(reconnect=policy)
    s.connect(0.0)
    (event,) = s.receive(ErrorMessage("limit", "busy", retry_after_ms=500), 0.0)
    assert isinstance(event, Reconnecting) and event.delay_s == 2.0


def test_a_session_refused_mid_stream_with_retry_after_ms_waits_before_resuming() -> None:
    s = session()
    connect(s)
    s.receive(segment(0, 0.1, 0.5), 1.0)  # progress: a plain loss reconnects at once
    evicted = ErrorMessage("limit", "the server is overloaded", retry_after_ms=3000)
    assert s.receive(evicted, 1.5) == [evicted]
    assert s.connection_lost(1.5) == [Reconnecting(1, 3.0, "connection lost")]
