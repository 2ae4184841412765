"""Admission control on a real server past its capacity (issue 10, item 3).

The model is the tiny random one made to cost exactly WINDOW_COST_S per window (warm-up
included, so the capacity the server measures is what it then gets: 1 / WINDOW_COST_S
windows/s, however loaded the machine).
Sessions arrive one every ARRIVAL_S, each streaming the sample at SPEED x real time with
short segments (~8 windows/s each): far more than the model can serve together. Those the
predicted demand leaves no room for must get `limit` with `retry_after_ms` and close 1013
within REFUSAL_MS of their handshake; the admitted ones' endpoint -> segment p95 must stay
under P95_BOUND_MS; /readyz must say 503 while the server is saturated and 200 once the
sessions are gone, and a new session is admitted again then.

Without admission control (--admission-headroom inf) the same run admits all of them and the
queue grows for as long as they speak: p95 1.8 s here (measured on the 2-core dev machine),
and it grows with the length of the run (docs/benchmarks.md, "past capacity").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import numpy as np
import pytest
import soundfile as sf
import torch
from models import ModelFiles
from prometheus_client.parser import text_string_to_metric_families
from streaming import Outcome, WireClient, http_get

from ichigo_stream.assets import sample_path
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.geometry import TokenGeometry
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.options import LoadOptions
from ichigo_stream.session import SessionLimits
from ichigo_stream_server.admission import AdmissionOptions
from ichigo_stream_server.app import running_server
from ichigo_stream_server.config import ServerConfig

WINDOW_COST_S = 0.025  # model time per window: ~40 windows/s, whatever the tiny model costs
SPEED = 4.0  # x real time: the sample's 12.7 s in ~3.2 s
SHORT_SEGMENTS = {"vad": {"max_segment_s": 0.5, "preroll_ms": 0}}  # ~2 windows/s of speech
SESSIONS = 8  # ~64 windows/s asked of ~40
ARRIVAL_S = 0.5
HEADROOM = 0.8
REFUSAL_MS = 100  # the bound: a refusal comes at once
# Admitted finals wait behind at most ~headroom x capacity of work: a few windows, ~100 ms;
# the bound leaves room for a loaded machine, and the run without admission is far over it.
P95_BOUND_MS = 1000
Model = tuple[IchigoTokenizer, ModelInfo]


class CostPerWindow:
    """The real tokenizer, except that a window costs exactly WINDOW_COST_S and gives zeros:
    a known cost however loaded the machine is (the tokens are not what is tested here;
    tests/integration/test_server.py checks them)."""

    def __init__(self, inner: IchigoTokenizer) -> None:
        self.inner = inner

    def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        time.sleep(WINDOW_COST_S * len(clips))
        n_tokens = TokenGeometry().n_tokens
        return [torch.zeros(n_tokens(len(clip)), dtype=torch.long) for clip in clips]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def model(tiny_model_files: ModelFiles) -> Model:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    tokenizer, info = load_tokenizer(options)
    return CostPerWindow(tokenizer), info  # type: ignore[return-value]


def sample() -> bytes:
    pcm, rate = sf.read(sample_path(), dtype="int16")
    assert rate == SAMPLE_RATE
    return pcm.tobytes()


async def session(port: int, audio: bytes) -> tuple[Outcome, float]:
    """One session: its outcome, and ms from its handshake to the server's first answer."""
    client = await WireClient.connect(port)
    opened = time.perf_counter()
    await client.send_json({"type": "start", **SHORT_SEGMENTS})
    first = await client.wait_for(lambda m: m["type"] in ("ready", "error"), timeout=10)
    answered_ms = 1000 * (time.perf_counter() - opened)
    if first["type"] == "ready":
        await client.send_audio(audio, (3200,), realtime=SPEED)
        await client.stop()
    return await client.finish(60), answered_ms


def metric(page: str, name: str) -> float:
    samples = {s.name: s.value for f in text_string_to_metric_families(page) for s in f.samples}
    return samples[name]


@pytest.mark.timeout(90)
def test_past_capacity_new_sessions_are_refused_and_admitted_ones_keep_their_latency(
    model: Model,
) -> None:
    audio = sample()
    limits = SessionLimits(max_windows_per_s=math.inf, windows_burst=math.inf)
    config = ServerConfig(
        port=0,
        max_batch=1,
        limits=limits,
        drain_timeout_s=10,
        # No floor: every admission is the prediction's (server/admission.py).
        admission=AdmissionOptions(headroom=HEADROOM, min_sessions=0),
    )

    async def main() -> tuple[list[tuple[Outcome, float]], list[int], int, str, Outcome]:
        async with running_server(config, *model) as server:
            readiness: list[int] = []

            async def watch_ready() -> None:
                while True:
                    readiness.append((await http_get(server.port, "/readyz"))[0])
                    await asyncio.sleep(0.1)

            watcher = asyncio.create_task(watch_ready())
            tasks = []
            for _ in range(SESSIONS):
                tasks.append(asyncio.create_task(session(server.port, audio)))
                await asyncio.sleep(ARRIVAL_S)
            results = await asyncio.gather(*tasks)
            watcher.cancel()
            _, _, page = await http_get(server.port, "/metrics")
            after = (await http_get(server.port, "/readyz"))[0]
            # Room again: a new session is admitted (and given a short clip to finish).
            again, _ = await session(server.port, audio[: 2 * SAMPLE_RATE])
            return results, readiness, after, page, again

    results, readiness, ready_after, page, again = asyncio.run(main())
    admitted = [(o, ms) for o, ms in results if not o.errors]
    refused = [(o, ms) for o, ms in results if o.errors]
    latencies = [m["endpoint_ms"] for o, _ in admitted for m in o.of_type("segment")]
    p95 = float(np.percentile(latencies, 95))
    print(
        f"admitted {len(admitted)}, refused {len(refused)}, p95 {p95:.0f} ms "
        f"(max {max(latencies):.0f}), refusals after {[round(ms) for _, ms in refused]} ms, "
        f"capacity {metric(page, 'ichigo_capacity_windows_per_second'):.1f} windows/s"
    )
    assert admitted and refused, [o.summary() for o, _ in results]
    for outcome, answered_ms in refused:
        (error,) = outcome.errors
        assert error["code"] == "limit" and outcome.close_code == 1013, outcome.summary()
        assert isinstance(error["retry_after_ms"], int) and error["retry_after_ms"] >= 1000
        assert answered_ms < REFUSAL_MS, outcome.summary()
        assert outcome.messages == [error]  # nothing else: no ready, no segment
    for outcome, _ in admitted:
        assert outcome.close_code == 1000 and outcome.done is not None, outcome.summary()
        assert len(outcome.segments) >= 10, outcome.summary()  # short segments: many windows
    assert p95 < P95_BOUND_MS, latencies
    assert 503 in readiness, readiness  # saturated while the admitted sessions spoke
    assert ready_after == 200 and not again.errors and again.close_code == 1000, again.summary()
    # The metrics say what happened, in text Prometheus' parser reads.
    assert metric(page, "ichigo_sessions_total") == len(admitted)
    refusals = [
        s
        for f in text_string_to_metric_families(page)
        for s in f.samples
        if s.name == "ichigo_refusals_total"
    ]
    assert [(s.labels, s.value) for s in refusals] == [({"reason": "capacity"}, len(refused))]
    capacity = metric(page, "ichigo_capacity_windows_per_second")
    assert 0.5 / WINDOW_COST_S < capacity <= 1 / WINDOW_COST_S
    assert metric(page, "ichigo_saturated") == 0  # every session is gone
