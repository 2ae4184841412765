"""Live speech -> Ichigo sound-token prompts -> an agent loop.

Each speech segment the server finds becomes one user turn in the text Ichigo LLMs read
(<|sound_start|><|sound_NNNN|>...<|sound_end|>). The "agent" here is a stub: it only prints
the chat messages it would send to an Ichigo LLM; swap `agent_turn` for a real call (e.g.
an OpenAI-compatible server running Ichigo-llama3.1).

    ichigo-stream serve &                        # in another terminal
    python docs/examples/agent_loop.py           # the bundled sample, paced like live speech
    python docs/examples/agent_loop.py talk.wav
    python docs/examples/agent_loop.py --mic     # needs `pip install sounddevice` (the mic extra)

A lost connection or a restarted server is survived: the client reconnects and resends the
audio after the last segment it received, so no utterance is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import load_audio
from ichigo_stream.client import DEFAULT_URL, ClientOptions, Segment, StartOptions, stream

SAMPLE_RATE = 16_000
CHUNK = SAMPLE_RATE // 10  # 100 ms, what a live source would send
SAMPLE = sample_path()
SYSTEM = "You are a helpful voice assistant. The user speaks in sound tokens."


async def file_audio(path: Path) -> AsyncIterator[np.ndarray]:
    """A file at real-time pace: the agent sees segments when a listener would."""
    audio, started = load_audio(path), time.monotonic()
    for at in range(0, len(audio), CHUNK):
        await asyncio.sleep(max(0.0, started + at / SAMPLE_RATE - time.monotonic()))
        yield audio[at : at + CHUNK]


async def mic_audio() -> AsyncIterator[np.ndarray]:
    import sounddevice as sd

    loop, queue = asyncio.get_running_loop(), asyncio.Queue[np.ndarray]()

    def callback(data: np.ndarray, frames: int, when: object, status: object) -> None:
        # PortAudio's thread: hand the block to the event loop, never block here.
        loop.call_soon_threadsafe(queue.put_nowait, data[:, 0].copy())

    with sd.InputStream(SAMPLE_RATE, CHUNK, channels=1, dtype="float32", callback=callback):
        print("listening; Ctrl-C to stop")
        while True:
            yield await queue.get()


def agent_turn(history: list[dict[str, str]], prompt: str) -> None:
    """Stub: a real agent would send `history` to an Ichigo LLM and append its reply."""
    history.append({"role": "user", "content": prompt})
    shown = prompt if len(prompt) <= 120 else f"{prompt[:60]}...{prompt[-50:]}"
    print(f"  would send {len(history)} message(s) to an Ichigo LLM; the new one: {shown}")
    history.append({"role": "assistant", "content": "(the LLM's reply would go here)"})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=SAMPLE)
    parser.add_argument("--mic", action="store_true", help="the microphone instead of a file")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--token")
    args = parser.parse_args()

    # The server renders the tokens as the LLM reads them ("ichigo-rle" for Ichigo v0.5);
    # Segment.to_ichigo() / to_ichigo_rle() do the same client-side.
    options = ClientOptions(args.url, token=args.token, start=StartOptions(llm_format="ichigo"))
    audio = mic_audio() if args.mic else file_audio(args.file)
    history = [{"role": "system", "content": SYSTEM}]
    async for event in stream(audio, options):
        if isinstance(event, Segment):
            print(f"[{event.start:.2f}-{event.end:.2f} s] {len(event.tokens)} tokens")
            agent_turn(history, event.llm or event.to_ichigo())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
