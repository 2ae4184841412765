"""Live captions end to end: a real server (tiny random model, text on, partials on), the
sample streamed in several chunkings at once; every partial's text is a prefix of the next
partial's and of its segment's final text. Random weights make gibberish, deterministically."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import soundfile as sf
from models import ModelFiles
from streaming import Outcome, WireClient, encode_pcm, random_sizes, split_bytes

from ichigo_stream.assets import sample_path
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream_server.app import running_server
from ichigo_stream_server.config import ServerConfig
from ichigo_stream_server.worker import ModelWorker

START: dict[str, Any] = {
    "text": True,
    "partials": True,
    "partial_interval_ms": 1200,
    "language": "en",
}
# Message sizes: 100 ms, random 20..300 ms, and 1 s (bytes of 16 kHz int16).
CHUNKINGS = ((3200,), random_sizes(7, 640, 9600, 2), (32_000,))


async def worker_idle(worker: ModelWorker) -> None:
    """Until the worker has nothing queued or running (seen twice: a batch just taken is
    neither queued nor yet marked busy)."""
    idle_seen = 0
    while idle_seen < 2:
        idle = worker.queue_depth == 0 and worker._busy_since is None
        idle_seen = idle_seen + 1 if idle else 0
        await asyncio.sleep(0.02)


async def lockstep_session(port: int, worker: ModelWorker, data: bytes, sizes: Any) -> Outcome:
    """A session whose client sends its next message only once the worker is idle: every
    partial's result comes back while its segment is open, however slow the machine (paced
    audio would have a loaded machine shed most partials, and test nothing)."""
    client = await WireClient.connect(port)
    await client.start(**START)
    for chunk in split_bytes(data, sizes):
        await client.send(chunk)
        await worker_idle(worker)
    await client.stop()
    return await client.finish(240)


def check_captions(outcome: Outcome) -> int:
    """The caption contract; returns how many partials carried non-empty text."""
    summary = outcome.summary()
    assert not outcome.errors and outcome.close_code == 1000, summary
    finals = {m["segment"]: m["text"] for m in outcome.of_type("segment")}
    previous: dict[int, str] = {}
    nonempty = 0
    for partial in outcome.of_type("partial"):
        text, segment = partial["text"], partial["segment"]
        assert isinstance(text, str), summary
        assert text.startswith(previous.get(segment, "")), summary  # it only grows
        assert finals[segment].startswith(text), summary  # the final text continues it
        previous[segment] = text
        nonempty += bool(text)
    return nonempty


@pytest.mark.timeout(300)
def test_partial_text_only_grows_and_the_final_text_continues_it(
    tiny_model_files: ModelFiles,
) -> None:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    tokenizer, info = load_tokenizer(options, text=True)
    pcm, _ = sf.read(sample_path(), dtype="int16")
    data = encode_pcm(pcm)
    # Random weights never say EOT, so each decoding would run Whisper's full 224 steps and
    # most partials would be shed as stale on a loaded machine: 12 text tokens
    # (serve --max-text-tokens) are plenty to test the contract, which does not depend on
    # the length.
    config = ServerConfig(port=0, text=True, max_batch=8, max_text_tokens=12)

    async def main() -> list[Outcome]:
        async with running_server(config, tokenizer, info) as server:
            return await asyncio.gather(
                *(lockstep_session(server.port, server.worker, data, sizes) for sizes in CHUNKINGS)
            )

    outcomes = asyncio.run(main())
    # Every chunking shows some caption (lockstep: no partial is lost to a slow machine).
    assert all(check_captions(outcome) > 0 for outcome in outcomes), [o.summary() for o in outcomes]
    # The same segments in every chunking (their texts continue each session's own captions,
    # so they may differ).
    first = outcomes[0].of_type("segment")
    assert len(first) == 3
    for outcome in outcomes[1:]:
        assert [(m["start"], m["end"]) for m in outcome.of_type("segment")] == [
            (m["start"], m["end"]) for m in first
        ]
