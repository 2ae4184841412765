"""Raw session timings -> figures: segments checked against the offline VAD, latencies, lags.

A session's analysis runs where the session ran (in its client process), so only these
figures, not the audio, travel back to the parent.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from stream_realtime import realtime_latencies

from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.segmentation import Span, segment_vad

if TYPE_CHECKING:
    from stream_load import LoadSpec

PCTS = (50, 95, 99)


def percentiles(values: Any, qs: tuple[int, ...] = PCTS) -> dict[str, float] | None:
    """{'p50': .., 'p95': .., 'p99': .., 'max': .., 'n': ..}, or None when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None
    out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    out["n"] = int(arr.size)
    return out


def analyse_session(rec: dict, pcm: np.ndarray, spec: LoadSpec) -> dict:
    """Raw timings + the offline segmentation of the audio sent -> the session's results."""
    opts = spec.vad_options
    chunk = spec.chunk_ms * SAMPLE_RATE // 1000
    sent, due, stop_sent = rec.pop("sent"), rec.pop("due"), rec.pop("stop_sent")
    model = rec.pop("model", None)
    n_sent = int(np.count_nonzero(~np.isnan(sent)))
    # A silence endpoint is decided at the end of the first VAD frame with min_silence after
    # the last voiced frame (frames lie on a grid from sample 0); the segment ends `tail` after
    # that voiced frame. So the decision sample is `wait` after `end` (510 - 200 ms by default).
    frame = opts.frame_samples
    wait = math.ceil(opts.min_silence_samples / frame) * frame - opts.tail_samples

    def sent_at(sample: int) -> tuple[float, float] | None:
        """(actual, scheduled) send time of the chunk holding `sample`; None past the audio."""
        i = sample // chunk
        return (sent[i], due[i]) if 0 <= i < n_sent else None

    if n_sent * chunk >= len(pcm) and stop_sent is not None:
        expected = segment_vad(pcm, opts)
    else:  # cut short: the segments the audio sent had closed before it stopped
        expected = [s for s in segment_vad(pcm[: n_sent * chunk], opts) if s.reason != "finish"]
    segments, partials, errors = [], [], list(rec["errors"])
    speech_starts, done, done_at = 0, None, None
    # /v1/realtime's own figures (stream_realtime): per item, first delta and completed.
    first_delta, after_stop = realtime_latencies(rec.pop("realtime", {}), sent_at)
    for arrival, msg in rec.pop("messages"):
        kind = msg.get("type")
        if kind == "segment":
            segments.append((arrival, msg))
        elif kind == "partial":
            end = round(msg["end"] * SAMPLE_RATE)
            at = sent_at(end - 1)
            partials.append((arrival - at[0]) * 1000 if at else math.nan)
        elif kind == "speech_start":
            speech_starts += 1
        elif kind == "error" and not rec.get("refused"):
            errors.append(f"{msg.get('code')}: {msg.get('message')}")
        elif kind == "done":
            done, done_at = msg, arrival
    by_span = {(s.start, s.end): s for s in expected}
    rows, received_spans = [], set()
    for arrival, msg in segments:
        start, end = round(msg["start"] * SAMPLE_RATE), round(msg["end"] * SAMPLE_RATE)
        received_spans.add((start, end))
        ref: Span | None = by_span.get((start, end))
        row = dict(
            segment=msg["segment"],
            start=msg["start"],
            end=msg["end"],
            tokens=len(msg["tokens"]),
            endpoint_ms=msg["endpoint_ms"],
            reason=ref.reason if ref else None,
        )
        eos = sent_at(end - 1)
        decision = sent_at(end + wait - 1) if ref is not None and ref.reason == "silence" else None
        if eos is not None and decision is not None:
            row["eos_ms"] = (arrival - eos[0]) * 1000
            row["decision_ms"] = (arrival - decision[0]) * 1000
            row["timeline_lag_ms"] = (arrival - decision[1]) * 1000
        rows.append(row)
    lost = [asdict(s) for s in expected if (s.start, s.end) not in received_spans]
    unexpected = [r for r in rows if r["reason"] is None]
    send_lag = (sent[:n_sent] - due[:n_sent]) * 1000
    done_ms = (done_at - stop_sent) * 1000 if done_at is not None and stop_sent else None
    refused = rec.get("refused")
    if refused is not None and rec.get("close_code") != 1013:
        errors.append(f"refused, then closed with code {rec.get('close_code')}, not 1013")
    elif refused is not None:
        pass  # refused at the door (limit, 1013): counted apart, not an error
    elif rec.get("close_code") not in (1000, None) or (
        rec.get("close_code") is None and not errors
    ):
        errors.append(f"closed with code {rec.get('close_code')}")
    if refused is not None:
        pass
    elif done is None and not errors:
        errors.append("no done message")
    elif done is not None and done.get("segments") != len(segments):
        errors.append(f"done says {done.get('segments')} segments, {len(segments)} received")
    # Lagging: behind real time. Partials are best effort (the server sheds them under load),
    # so their latency is reported but does not count here.
    timeline = [r["timeline_lag_ms"] for r in rows if "timeline_lag_ms" in r]
    worst = max([*timeline, done_ms or 0.0, 0.0])
    rec.update(
        chunks_sent=n_sent,
        send_lag_ms=percentiles(send_lag),
        segments_expected=len(expected),
        segments_received=len(rows),
        segments_lost=lost,
        segments_unexpected=unexpected,
        speech_starts=speech_starts,
        partials=len(partials),
        partial_latency_ms=percentiles([p for p in partials if not math.isnan(p)]),
        done_ms=done_ms,
        first_delta_ms=first_delta,
        completed_after_stop_ms=after_stop,
        errors=errors,
        segments=rows,
        worst_lag_ms=worst,
        lagging=worst > spec.lag_limit_ms,
    )
    rec["_send_lag"] = send_lag
    rec["_partial_ms"] = np.asarray(partials)
    rec["_model"] = model
    return rec


def summarise(
    spec: LoadSpec,
    n: int,
    procs: int,
    wall: float,
    groups: list[dict],
    sessions: list[dict],
    metrics: dict,
    server_cpu: dict,
    gpu_stats: dict | None,
    queue: list[float],
) -> dict:
    """One run's figures: the sessions' results pooled, with the client's and server's side."""
    rows = [r for s in sessions for r in s["segments"]]

    def col(key: str) -> list[float]:
        return [r[key] for r in rows if key in r]

    send_lag = np.concatenate([s.pop("_send_lag") for s in sessions] or [np.zeros(0)])
    partial_ms = np.concatenate([s.pop("_partial_ms") for s in sessions] or [np.zeros(0)])
    loop_lag = np.concatenate([g["loop_lag_ms"] for g in groups])
    client_cpu = sum(g["cpu_s"] for g in groups)
    client_wall = max(g["wall_s"] for g in groups)
    lost = sum(len(s["segments_lost"]) for s in sessions)
    unexpected = sum(len(s["segments_unexpected"]) for s in sessions)
    errored = [s["index"] for s in sessions if s["errors"]]
    refused = [s["refused"] for s in sessions if s.get("refused")]
    done = [s["done_ms"] for s in sessions if s["done_ms"] is not None]
    result = dict(
        sessions_n=n,
        protocol=spec.protocol,
        text=spec.text,
        partials=spec.partials,
        model=next((g["model"] for g in groups if g["model"]), None),
        wall_s=wall,
        audio_s_per_session=spec.duration_s,
        segments_expected=sum(s["segments_expected"] for s in sessions),
        segments_received=sum(s["segments_received"] for s in sessions),
        segments_lost=lost,
        segments_unexpected=unexpected,
        sessions_with_errors=errored,
        # Turned away by admission control (limit, 1013): how many, how fast, retry_after_ms.
        sessions_refused=len(refused),
        refusal_answer_ms=percentiles([r["answer_ms"] for r in refused]),
        retry_after_ms=percentiles([r["retry_after_ms"] or 0 for r in refused]),
        sessions_lagging=[s["index"] for s in sessions if s["lagging"]],
        eos_ms=percentiles(col("eos_ms")),
        decision_ms=percentiles(col("decision_ms")),
        # VAD endpoints while streaming; segments closed by stop or the 30 s cap separately.
        endpoint_ms=percentiles([r["endpoint_ms"] for r in rows if r["reason"] == "silence"]),
        endpoint_ms_other=percentiles([r["endpoint_ms"] for r in rows if r["reason"] != "silence"]),
        timeline_lag_ms=percentiles(col("timeline_lag_ms")),
        done_ms=percentiles(done),
        first_delta_ms=percentiles([x for s in sessions for x in s.pop("first_delta_ms")]),
        completed_after_stop_ms=percentiles(
            [x for s in sessions for x in s.pop("completed_after_stop_ms")]
        ),
        partials_per_session=percentiles([s["partials"] for s in sessions], (50,)),
        partial_latency_ms=percentiles(partial_ms[~np.isnan(partial_ms)]),
        client=dict(
            procs=procs,
            send_lag_ms=percentiles(send_lag),
            loop_lag_ms=percentiles(loop_lag),
            cpu_pct=100 * client_cpu / client_wall if client_wall else None,
            connect_ms=percentiles([s["connect_ms"] for s in sessions if "connect_ms" in s]),
        ),
        server=dict(
            metrics=metrics,
            cpu=server_cpu,
            queue_depth=percentiles(queue, (50, 95)),
            gpu=gpu_stats,
        ),
        per_session=sessions,
    )
    return result
