"""One load-test session on /v1/realtime (OpenAI Realtime transcription events).

It streams the same audio on the same real-time schedule as stream_load.run_session does on
/v1/stream, 16 kHz PCM16 as base64 `input_audio_buffer.append` events, and records what the
analysis reads in /v1/stream's terms (speech_start, segment from `ichigo.tokens.completed`,
a done once every committed item has completed), so segments are checked against the offline
VAD exactly as there. On top it keeps each item's arrival times: the first text delta, the
speech_stopped event and the completed event (stream_analysis turns them into latencies).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ichigo_stream.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from stream_load import LoadSpec

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def realtime_url(url: str) -> str:
    """The server's /v1/realtime beside the /v1/stream URL the load test was given."""
    base = url.split("?", 1)[0]
    return base[: -len("/v1/stream")] + "/v1/realtime" if base.endswith("/v1/stream") else base


def session_update(spec: LoadSpec) -> dict[str, Any]:
    """16 kHz PCM (no resampling, as on /v1/stream), the VAD overrides as OpenAI's fields,
    and the tokens extension (its start and end let the analysis check every segment)."""
    turn: dict[str, Any] = {"type": "server_vad"}
    if "min_silence_ms" in spec.vad:
        turn["silence_duration_ms"] = spec.vad["min_silence_ms"]
    return {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "turn_detection": turn,
                }
            },
            "ichigo": {"tokens": True},
        },
    }


async def run_realtime_session(spec: LoadSpec, index: int, pcm: np.ndarray, offset: float) -> dict:
    """Stream one session on the real-time schedule; raw timings and messages, v1-shaped."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    chunk = spec.chunk_ms * SAMPLE_RATE // 1000
    n_chunks = math.ceil(len(pcm) / chunk)
    data = pcm.astype("<i2").tobytes()
    items: dict[str, dict[str, float]] = {}  # item id -> arrival times by event
    rec: dict[str, Any] = dict(
        index=index,
        offset_s=offset,
        audio_s=len(pcm) / SAMPLE_RATE,
        messages=[],
        errors=[],
        close_code=None,
        sent=np.full(n_chunks, np.nan),
        due=np.full(n_chunks, np.nan),
        stop_sent=None,
        realtime=items,
    )
    sent, due, messages = rec["sent"], rec["due"], rec["messages"]
    finished = asyncio.Event()  # all audio sent and every committed item answered
    counts = {"started": 0, "committed": 0, "answered": 0, "segments": 0}
    await asyncio.sleep(offset)
    t_connect = loop.time()
    try:
        ws = await asyncio.wait_for(
            connect(realtime_url(spec.url), max_size=None, compression=None, ping_interval=None),
            spec.connect_timeout_s,
        )
    except Exception as e:
        rec["errors"].append(f"connect: {type(e).__name__}: {e}")
        return rec

    def settled() -> bool:
        return (
            rec["stop_sent"] is not None
            and counts["started"] == counts["committed"] == counts["answered"]
        )

    def on_event(arrival: float, event: dict[str, Any]) -> None:
        kind = event.get("type")
        item = items.setdefault(event.get("item_id", ""), {})
        if kind == "input_audio_buffer.speech_started":
            counts["started"] += 1
            item["started"] = arrival
            item["audio_start_ms"] = event["audio_start_ms"]
            messages.append((arrival, {"type": "speech_start", "segment": counts["started"] - 1}))
        elif kind == "input_audio_buffer.speech_stopped":
            item["stopped"] = arrival
        elif kind == "input_audio_buffer.committed":
            counts["committed"] += 1
            item.setdefault("stopped", arrival)  # a commit without speech_stopped (the cap)
        elif kind == DELTA:
            item.setdefault("first_delta", arrival)
        elif kind in (COMPLETED, FAILED):
            item["completed"] = arrival
            if kind == FAILED:
                counts["answered"] += 1  # its tokens may never come: an error of the run
                rec["errors"].append(f"failed: {event.get('error')}")
        elif kind == "ichigo.tokens.completed":
            stopped = item.get("stopped", arrival)
            segment = dict(
                type="segment",
                segment=counts["segments"],
                start=event["start"],
                end=event["end"],
                tokens=event["tokens"],
                # The client's view of the server's endpoint -> segment time.
                endpoint_ms=(arrival - stopped) * 1000,
            )
            counts["segments"] += 1
            # An item is answered with its tokens, the last of its events (after completed).
            counts["answered"] += 1
            messages.append((arrival, segment))
        elif kind == "error":
            error = event.get("error", {})
            messages.append((arrival, {"type": "error", **error}))
        if settled():
            finished.set()

    async def sender() -> None:
        for i in range(n_chunks):
            delay = due[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = loop.time()
            audio = base64.b64encode(data[i * chunk * 2 : (i + 1) * chunk * 2]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        rec["stop_sent"] = loop.time()
        if settled():
            finished.set()

    async def receiver() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                on_event(loop.time(), json.loads(raw))
        finished.set()  # closed by the server: nothing more will come

    async with ws:
        reader: asyncio.Task[None] | None = None
        try:
            created = json.loads(await asyncio.wait_for(ws.recv(), spec.connect_timeout_s))
            await ws.send(json.dumps(session_update(spec)))
            updated = json.loads(await asyncio.wait_for(ws.recv(), spec.connect_timeout_s))
            t0 = loop.time()
            rec["connect_ms"] = (t0 - t_connect) * 1000
            if (created.get("type"), updated.get("type")) != ("session.created", "session.updated"):
                rec["errors"].append(f"expected session.created/updated, got {created} {updated}")
                return rec
            due[:] = t0 + np.arange(n_chunks) * (spec.chunk_ms / 1000 / spec.speed)
            reader = asyncio.create_task(receiver())
            await sender()
            await asyncio.wait_for(finished.wait(), len(pcm) / SAMPLE_RATE / spec.speed + 900)
            # What /v1/stream's done would say, when the last item was answered.
            last = max((t for _, t in _completions(items)), default=loop.time())
            messages.append((last, {"type": "done", "segments": counts["segments"]}))
        except (ConnectionClosed, OSError, TimeoutError, ValueError) as e:
            rec["errors"].append(f"{type(e).__name__}: {e}")
        finally:
            await ws.close()
            if reader is not None:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader
        rec["close_code"] = ws.close_code
    return rec


def _completions(items: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    return [(k, v["completed"]) for k, v in items.items() if "completed" in v]


def realtime_latencies(
    items: dict[str, dict[str, float]], sent_at: Any
) -> tuple[list[float], list[float]]:
    """(first delta ms, completed-after-speech-stop ms) per item.

    first delta: from sending the sample at the item's audio_start_ms to its first text delta;
    completed after stop: from the speech_stopped event's arrival to the completed event's.
    """
    first_delta, after_stop = [], []
    for item in items.values():
        if "first_delta" in item and "audio_start_ms" in item:
            at = sent_at(round(item["audio_start_ms"] * SAMPLE_RATE / 1000))
            if at is not None:
                first_delta.append((item["first_delta"] - at[0]) * 1000)
        if "completed" in item and "stopped" in item:
            after_stop.append((item["completed"] - item["stopped"]) * 1000)
    return first_delta, after_stop
