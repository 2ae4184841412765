"""/v1/realtime against the official `openai` SDK: a real server on port 0, the tiny model.

The SDK's realtime client is pointed at the server by base_url exactly as an agent developer
would point it at OpenAI (`client.realtime.connect(...)`), and every event is read back with
the SDK's own parser too. Bad input goes through a raw WebSocket (the SDK only sends valid
events) while another session streams speech next to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from models import ModelFiles
from openai import AsyncOpenAI, AuthenticationError, BadRequestError, PermissionDeniedError
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    RealtimeErrorEvent,
    SessionCreatedEvent,
)
from streaming import WireClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ichigo_stream.audio import resample, to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.options import LoadOptions
from ichigo_stream.session import SessionLimits
from ichigo_stream_server.app import StreamServer, running_server
from ichigo_stream_server.config import ServerConfig

RATE = 24_000
UNLIMITED = SessionLimits(max_realtime=1e6, realtime_burst_s=1e6)
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
Event = dict[str, Any]


@pytest.fixture(scope="module")
def model(tiny_model_files: ModelFiles) -> Any:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options, text=True)


@pytest.fixture(scope="module")
def utterances(speak: Callable[..., np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two short espeak-ng utterances as 16 kHz float32."""
    return speak("Hello there."), speak("Tokens for the model.")


def pcm24(audio: np.ndarray) -> bytes:
    return to_pcm16(resample(audio, SAMPLE_RATE, RATE)).astype("<i2").tobytes()


def silence24(seconds: float) -> bytes:
    return bytes(2 * round(seconds * RATE))


@contextlib.asynccontextmanager
async def serve(model: Any, **config: Any) -> AsyncIterator[StreamServer]:
    tokenizer, info = model
    # max_text_tokens: the random decoder never ends a text by itself; 12 tokens keep each
    # decoding (and so the partials' captions) quick on a CPU.
    options: dict[str, Any] = {
        "port": 0, "drain_timeout_s": 10.0, "limits": UNLIMITED, "max_text_tokens": 12,
    }  # fmt: skip
    async with running_server(ServerConfig(**{**options, **config}), tokenizer, info) as server:
        yield server


def sdk(port: int, api_key: str = "sk-none") -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)


def chunks(data: bytes, size: int = 4800) -> list[str]:
    """base64 appends of `size` bytes (100 ms at 24 kHz)."""
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


async def collect(conn: Any, until: Callable[[list[Event]], bool], timeout: float = 120) -> list:
    """Raw events from an SDK connection (each also parsed by the SDK) until `until` holds."""
    events: list[Event] = []

    async def read() -> None:
        while not until(events):
            raw = await conn.recv_bytes()
            event = json.loads(raw)
            parsed = conn.parse_event(raw)
            event["_sdk"] = type(parsed).__name__
            events.append(event)

    await asyncio.wait_for(read(), timeout)
    return events


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def items_done(n: int, kind: str = COMPLETED) -> Callable[[list[Event]], bool]:
    """n items answered: `completed`, or the extension's tokens (which follow it)."""
    return lambda events: len(of_type(events, kind)) >= n


# -- the SDK's realtime client -----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_openai_sdk_gets_every_utterance_and_tokens_equal_v1(
    model: Any, utterances: tuple[np.ndarray, np.ndarray]
) -> None:
    first, second = utterances
    audio = silence24(0.3) + pcm24(first) + silence24(1.0) + pcm24(second) + silence24(1.2)

    async def main() -> tuple[list[Event], list[Event]]:
        async with serve(model, text=True) as server:
            client = sdk(server.port)
            async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
                await conn.session.update(
                    session={
                        "type": "transcription",
                        "audio": {
                            "input": {
                                "format": {"type": "audio/pcm", "rate": RATE},
                                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                                "turn_detection": {"type": "server_vad"},
                            }
                        },
                        "ichigo": {"tokens": True, "llm_format": "ichigo"},
                    }
                )
                for piece in chunks(audio):
                    await conn.input_audio_buffer.append(audio=piece)
                events = await collect(conn, items_done(2, "ichigo.tokens.completed"))
            # The same audio on /v1/stream: its segments are what the extension must carry.
            v1 = await WireClient.connect(server.port)
            await v1.start(sample_rate=RATE)
            await v1.send_audio(audio, (4800,))
            await v1.stop()
            outcome = await v1.finish(120)
            return events, outcome.of_type("segment")

    events, segments = asyncio.run(main())
    assert (
        events[0]["type"] == "session.created" and events[0]["_sdk"] == SessionCreatedEvent.__name__
    )
    assert events[1]["type"] == "session.updated"
    assert not of_type(events, "error")
    started = of_type(events, "input_audio_buffer.speech_started")
    committed = of_type(events, "input_audio_buffer.committed")
    completed = of_type(events, COMPLETED)
    assert len(started) == len(committed) == len(completed) == 2
    ids = [e["item_id"] for e in started]
    assert [e["item_id"] for e in committed] == [e["item_id"] for e in completed] == ids
    assert committed[1]["previous_item_id"] == ids[0]
    sdk_types = {
        "input_audio_buffer.speech_started": InputAudioBufferSpeechStartedEvent,
        "input_audio_buffer.committed": InputAudioBufferCommittedEvent,
        DELTA: ConversationItemInputAudioTranscriptionDeltaEvent,
        COMPLETED: ConversationItemInputAudioTranscriptionCompletedEvent,
    }
    for event in events:
        if event["type"] in sdk_types:
            assert event["_sdk"] == sdk_types[event["type"]].__name__, event["type"]
    for item_id, done in zip(ids, completed, strict=True):
        deltas = [e["delta"] for e in of_type(events, DELTA) if e["item_id"] == item_id]
        assert deltas and "".join(deltas) == done["transcript"] and done["transcript"]
        kinds = [e["type"] for e in events if e.get("item_id") == item_id]
        assert kinds.index("input_audio_buffer.committed") < kinds.index(COMPLETED)
    tokens = of_type(events, "ichigo.tokens.completed")
    assert [(e["start"], e["end"], e["tokens"]) for e in tokens] == [
        (s["start"], s["end"], s["tokens"]) for s in segments
    ]
    for s, t in zip(started, tokens, strict=True):
        assert s["audio_start_ms"] == round(t["start"] * 1000)
    assert all(e["llm"].startswith("<|sound_start|>") for e in tokens)


@pytest.mark.timeout(300)
def test_caption_deltas_arrive_while_the_speaker_talks(
    model: Any, utterances: tuple[np.ndarray, np.ndarray]
) -> None:
    """Text deltas (the partials' captions) come before the item is committed."""
    first, _ = utterances
    long_speech = np.concatenate([first, first, first])
    audio = pcm24(long_speech) + silence24(1.2)

    async def main() -> list[Event]:
        async with serve(model, text=True) as server, sdk(server.port).realtime.connect() as conn:
            await conn.session.update(session={"type": "transcription"})
            for piece in chunks(audio):
                await conn.input_audio_buffer.append(audio=piece)
                # Real time (4800 bytes: 100 ms at 24 kHz): each partial's caption is
                # decoded while the speaker still talks, as in live captioning.
                await asyncio.sleep(0.1)
            return await collect(conn, items_done(1))

    events = asyncio.run(main())
    item_id = of_type(events, COMPLETED)[0]["item_id"]
    positions = [i for i, e in enumerate(events) if e["type"] == DELTA and e["item_id"] == item_id]
    committed_at = next(
        i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.committed"
    )
    assert positions and positions[0] < committed_at


@pytest.mark.timeout(300)
def test_manual_commits_one_item_per_commit(
    model: Any, utterances: tuple[np.ndarray, np.ndarray]
) -> None:
    first, second = utterances

    async def main() -> list[Event]:
        async with serve(model) as server, sdk(server.port).realtime.connect() as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {"input": {"turn_detection": None}},
                    "ichigo": {"tokens": True},
                }
            )
            for utterance in (first, second):
                for piece in chunks(pcm24(utterance) + silence24(0.8)):
                    await conn.input_audio_buffer.append(audio=piece)
                await conn.input_audio_buffer.commit()
            await conn.input_audio_buffer.commit()  # nothing left: an error, not an item
            return await collect(
                conn,
                lambda ev: (
                    len(of_type(ev, "ichigo.tokens.completed")) >= 2 and bool(of_type(ev, "error"))
                ),
            )

    events = asyncio.run(main())
    committed = of_type(events, "input_audio_buffer.committed")
    assert len(committed) == 2 and len(of_type(events, COMPLETED)) == 2
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    assert not of_type(events, "input_audio_buffer.speech_started")
    (error,) = of_type(events, "error")
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["_sdk"] == RealtimeErrorEvent.__name__
    tokens = of_type(events, "ichigo.tokens.completed")
    lengths = [len(u) / SAMPLE_RATE + 0.8 for u in (first, second)]
    assert tokens[0]["start"] == 0.0 and tokens[1]["start"] == tokens[0]["end"]
    # Each item holds its commit's audio (less the resampler's few ms still in flight).
    assert tokens[0]["end"] == pytest.approx(lengths[0], abs=0.04)
    assert tokens[1]["end"] == pytest.approx(sum(lengths), abs=0.04)


# -- bad input: OpenAI's error shape; the session goes on; others are untouched -----------------


async def raw_session(port: int, **options: Any) -> ClientConnection:
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    ws = await connect(url, max_size=None, compression=None, proxy=None, **options)
    created = json.loads(await ws.recv())
    assert created["type"] == "session.created"
    return ws


async def answer(ws: ClientConnection, event: Event | str | bytes) -> Event:
    """The error an event gets (the speech events in between are skipped)."""
    await ws.send(event if isinstance(event, str | bytes) else json.dumps(event))
    while (reply := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "error":
        pass
    return reply


def append(data: bytes) -> Event:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}


@pytest.mark.timeout(300)
def test_bad_input_gets_openai_errors_and_another_session_is_untouched(
    model: Any, utterances: tuple[np.ndarray, np.ndarray]
) -> None:
    first, second = utterances
    good_audio = pcm24(first) + silence24(1.0) + pcm24(second) + silence24(1.2)
    bad_events: list[tuple[Event | str | bytes, str, str | None]] = [
        (
            {"type": "input_audio_buffer.commit", "event_id": "e0"},
            "input_audio_buffer_commit_empty",
            None,
        ),
        (append(pcm24(first)[:9600]), "", None),  # before any session.update: accepted
        ('{"type": "input_audio_buffer.append",', "invalid_json", None),
        ({"type": "response.create", "event_id": "e2"}, "invalid_value", "type"),
        (
            {"type": "input_audio_buffer.append", "audio": "@@not-base64@@", "event_id": "e3"},
            "invalid_value",
            "audio",
        ),
        ({**append(b"\x01\x02\x03"), "event_id": "e4"}, "invalid_value", "audio"),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"rate": 96000}}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
    ]

    async def good_session(port: int) -> list[Event]:
        async with sdk(port).realtime.connect() as conn:
            await conn.session.update(session={"type": "transcription", "ichigo": {"tokens": True}})
            for piece in chunks(good_audio):
                await conn.input_audio_buffer.append(audio=piece)
                await asyncio.sleep(0.01)
            return await collect(conn, items_done(2, "ichigo.tokens.completed"))

    async def bad_session(port: int) -> tuple[list[Event], Event, int | None]:
        ws = await raw_session(port)
        errors = []
        for event, code, _ in bad_events:
            if code:
                errors.append(await answer(ws, event))
            else:
                # OpenAI takes audio before any session.update (its defaults: 24 kHz, VAD).
                await ws.send(json.dumps(event))
        # Still open and still transcribing after all of that.
        await ws.send(json.dumps(append(pcm24(first)[9600:] + silence24(1.0))))
        completed = None
        while completed is None:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            completed = event if event["type"] == COMPLETED else None
        # 20 MiB in one event: past the WebSocket's hard limit, the connection ends (1009).
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(append(bytes(20 << 20))))
            while True:
                await asyncio.wait_for(ws.recv(), 60)
        return errors, completed, ws.close_code

    async def main() -> tuple[list[Event], tuple[list[Event], Event, int | None], list[Event]]:
        async with serve(model) as server:  # no text: the errors are the point, not the words
            good, bad = await asyncio.gather(good_session(server.port), bad_session(server.port))
            # A session opened after all that still works: nothing was left broken.
            return good, bad, await good_session(server.port)

    good, (errors, completed, close_code), after = asyncio.run(main())
    refused = [(event, code, param) for event, code, param in bad_events if code]
    for error, (event, code, param) in zip(errors, refused, strict=True):
        assert error["type"] == "error" and error["event_id"].startswith("event_")
        assert set(error["error"]) == {"type", "code", "message", "param", "event_id"}
        assert error["error"]["code"] == code, error
        assert (
            error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"
        )
        if isinstance(event, dict) and "event_id" in event:
            assert error["error"]["event_id"] == event["event_id"]
    assert completed["content_index"] == 0
    assert close_code == 1009
    for events in (good, after):
        assert not of_type(events, "error")
        assert len(of_type(events, "ichigo.tokens.completed")) == len(of_type(events, COMPLETED))
        assert len(of_type(events, COMPLETED)) == 2
    assert [e["tokens"] for e in of_type(good, "ichigo.tokens.completed")] == [
        e["tokens"] for e in of_type(after, "ichigo.tokens.completed")
    ]


# -- auth: the SDK's bearer key, and the browser's subprotocol form ----------------------------


@pytest.mark.timeout(120)
def test_auth_by_bearer_key_and_browser_subprotocol(model: Any) -> None:
    async def main() -> None:
        async with serve(model, token="s3cret") as server:
            async with sdk(server.port, api_key="s3cret").realtime.connect() as conn:
                event = json.loads(await conn.recv_bytes())
                assert event["type"] == "session.created"
            with pytest.raises(
                (AuthenticationError, BadRequestError, PermissionDeniedError, InvalidStatus)
            ):
                async with sdk(server.port, api_key="wrong").realtime.connect() as conn:
                    await conn.recv_bytes()
            # Browsers cannot set headers: OpenAI's JS offers the key as a subprotocol.
            offered = ["realtime", "openai-insecure-api-key.s3cret", "openai-beta.realtime-v1"]
            ws = await raw_session(server.port, subprotocols=offered)
            assert ws.subprotocol == "realtime"
            await ws.close()
            with pytest.raises(InvalidStatus) as refused:
                await raw_session(
                    server.port, subprotocols=["realtime", "openai-insecure-api-key.x"]
                )
            assert refused.value.response.status_code == 401

    asyncio.run(main())
