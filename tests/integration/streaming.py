"""A real WebSocket client for the server tests: stream PCM in any chunking, paced or not.

Everything the server sends is collected by a background reader, so a test can wait for a
particular message mid-stream (speech_start before a flush, say) and still get the whole
conversation and the close code at the end. No protocol logic lives here beyond building
messages: the tests judge what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ichigo_stream.audio import pcm16_to_float32
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.protocol import STREAM_PATH

# (start, end, tokens): what a segment is judged by; the same shape for the offline jsonl.
Seg = tuple[float, float, tuple[int, ...]]
Message = dict[str, Any]


# -- audio -> messages --------------------------------------------------------------------------


def encode_pcm(pcm: np.ndarray, encoding: str = "pcm_s16le", channels: int = 1) -> bytes:
    """16 kHz int16 samples as the wire bytes of `encoding`, the mono signal on every channel.

    int16 / 32768 (pcm16_to_float32) is exact in float32, and the mean of equal channels is
    the channel itself, so every encoding here carries exactly the samples of the int16 file.
    """
    if pcm.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {pcm.dtype}")
    if encoding == "pcm_s16le":
        samples: np.ndarray = pcm.astype("<i2")
    elif encoding == "pcm_f32le":
        samples = pcm16_to_float32(pcm).astype("<f4")
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return np.repeat(samples, channels).tobytes()  # interleaved frames


def bytes_per_second(encoding: str = "pcm_s16le", channels: int = 1) -> int:
    return SAMPLE_RATE * channels * (2 if encoding == "pcm_s16le" else 4)


def split_bytes(data: bytes, sizes: Iterable[int | None]) -> list[bytes]:
    """Cut data into messages of the given sizes, cycled; None takes all that is left."""
    chunks: list[bytes] = []
    at = 0
    for size in itertools.cycle(sizes):
        if at >= len(data):
            break
        end = len(data) if size is None else at + size
        chunks.append(data[at:end])
        at = end
    return chunks


def random_sizes(seed: int, lo: int, hi: int, multiple: int) -> Iterator[int]:
    """Endless random message sizes in [lo, hi], multiples of `multiple` (whole frames)."""
    rng = random.Random(seed)
    while True:
        yield rng.randint(lo // multiple, hi // multiple) * multiple


# -- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One connection, start to close: every message the server sent, then how it closed."""

    messages: list[Message]
    close_code: int | None
    close_reason: str

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def segments(self) -> list[Seg]:
        return [(m["start"], m["end"], tuple(m["tokens"])) for m in self.of_type("segment")]

    @property
    def errors(self) -> list[Message]:
        return self.of_type("error")

    @property
    def done(self) -> Message | None:
        done = self.of_type("done")
        return done[0] if done else None

    def summary(self) -> str:
        """The conversation without token lists, for assertion messages."""
        short = [
            {k: v for k, v in m.items() if k not in ("tokens", "model")} for m in self.messages
        ]
        return f"close {self.close_code} {self.close_reason!r} after {short}"


def stream_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}{STREAM_PATH}" + (f"?{query}" if query else "")


class WireClient:
    """A raw protocol v1 client over a real socket: the tests' view of the wire, messages as
    plain JSON dicts read in the background (ichigo_stream.client.StreamClient is the real one,
    typed, reconnecting; tests of the server must not depend on it)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()
        self._eof = False
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        token: str | None = None,
        query: str = "",
        origin: str | None = None,
    ) -> WireClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        ws = await connect(
            stream_url(port, query),
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            compression=None,
            max_size=None,
            proxy=None,  # a proxy from the environment must not carry loopback traffic
            open_timeout=30,
            close_timeout=30,
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                # The server only ever sends JSON text; anything else fails the test's checks.
                message = json.loads(raw) if isinstance(raw, str) else {"type": "<binary>"}
                async with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            async with self._changed:
                self._eof = True  # before the task counts as done: waiters wake to this
                self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._eof

    # -- sending: each returns False once the connection is closed, so a sender just stops --

    async def send(self, message: str | bytes) -> bool:
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            return False
        return True

    async def send_json(self, message: Message) -> bool:
        return await self.send(json.dumps(message))

    async def start(self, **options: Any) -> Message:
        """Send start; the ready message, or an AssertionError showing what came instead."""
        await self.send_json({"type": "start", **options})
        return await self.wait_for(lambda m: m["type"] == "ready")

    async def send_audio(
        self,
        data: bytes,
        sizes: Iterable[int | None] = (3200,),
        *,
        realtime: float | None = None,
        rate: int = 2 * SAMPLE_RATE,
    ) -> int:
        """Send data cut by `sizes`; paced at `realtime` x real time (rate bytes/s) if given.

        Pacing follows the clock from the first message, so a late send is caught up rather
        than drifting. Returns the bytes sent before the connection closed (or all).
        """
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        for chunk in split_bytes(data, sizes):
            if realtime is not None:
                await asyncio.sleep(max(0.0, t0 + sent / (rate * realtime) - loop.time()))
            if not await self.send(chunk):
                break
            sent += len(chunk)
        return sent

    async def flush(self) -> bool:
        return await self.send_json({"type": "flush"})

    async def stop(self) -> bool:
        return await self.send_json({"type": "stop"})

    # -- receiving ------------------------------------------------------------------------------

    def find(self, predicate: Callable[[Message], bool]) -> Message | None:
        return next((m for m in self.messages if predicate(m)), None)

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 30) -> Message:
        """The first message (already received or still to come) that satisfies predicate."""

        async def found() -> Message | None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.find(predicate) or self.closed)
            return self.find(predicate)

        try:
            message = await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            summary = self.outcome().summary()
            raise AssertionError(f"no such message within {timeout} s: {summary}") from None
        if message is None:
            raise AssertionError(f"closed without such a message: {self.outcome().summary()}")
        return message

    def outcome(self) -> Outcome:
        return Outcome(list(self.messages), self.ws.close_code, self.ws.close_reason or "")

    async def finish(self, timeout: float = 60) -> Outcome:
        """Wait for the server to close the connection; everything it sent, and the close code."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            raise AssertionError(
                f"not closed within {timeout} s: {self.outcome().summary()}"
            ) from None
        return self.outcome()

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await self._reader

    def abort(self) -> None:
        """Drop the TCP connection with no close frame, as a crashed or vanished client does."""
        assert self.ws.transport is not None
        self.ws.transport.abort()


async def run_session(
    port: int,
    data: bytes,
    sizes: Iterable[int | None] = (3200,),
    *,
    realtime: float | None = None,
    rate: int = 2 * SAMPLE_RATE,
    start: Message | None = None,
    timeout: float = 60,
    **connect_options: Any,
) -> Outcome:
    """One whole session: start, all the audio, stop, and everything up to the close."""
    client = await WireClient.connect(port, **connect_options)
    await client.start(**(start or {}))
    await client.send_audio(data, sizes, realtime=realtime, rate=rate)
    await client.stop()
    return await client.finish(timeout)


# -- checks ---------------------------------------------------------------------------------------


def assert_finished_cleanly(
    outcome: Outcome, expected: Sequence[Seg], audio_seconds: float
) -> None:
    """ready, the expected segments in order (each after its speech_start), done, close 1000."""
    summary = outcome.summary()
    assert outcome.messages and outcome.messages[0]["type"] == "ready", summary
    assert not outcome.errors, summary
    assert outcome.segments == list(expected), summary
    segment_messages = outcome.of_type("segment")
    assert [m["segment"] for m in segment_messages] == list(range(len(expected))), summary
    for message in segment_messages:
        started = [
            i
            for i, m in enumerate(outcome.messages)
            if m["type"] == "speech_start" and m["segment"] == message["segment"]
        ]
        assert len(started) == 1, summary
        assert outcome.messages[started[0]]["start"] == message["start"], summary
        assert started[0] < outcome.messages.index(message), summary
        assert message["endpoint_ms"] >= 0, summary
    assert outcome.messages[-1] == {
        "type": "done",
        "segments": len(expected),
        "audio_seconds": round(audio_seconds, 6),
    }, summary
    assert outcome.close_code == 1000, summary


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """A plain HTTP/1.1 GET over a raw socket: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    response_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        response_headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), response_headers, body
