"""/v1/listen over real sockets: Deepgram's own Python SDK against our server on port 0.

The official `deepgram-sdk` live client, its environment pointed at the server, streams
espeak-ng speech and must get what it gets from Deepgram: interim and final Results,
SpeechStarted, UtteranceEnd, Results from_finalize after Finalize, and Metadata then a normal
close after CloseStream, every message parsed into the SDK's own types. Bad input gets
Deepgram's behaviour (HTTP 400 before the upgrade; Error then close 1008/1009 with DATA-0000),
and leaves a concurrent session untouched. The token extension is checked against /v1/stream's
segments for the same audio. The random tiny model's text is gibberish, but deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from models import ModelFiles
from streaming import WireClient, run_session
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ichigo_stream.audio import to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.listen_protocol import LISTEN_PATH
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.options import LoadOptions
from ichigo_stream.session import SessionLimits
from ichigo_stream_server.app import StreamServer, running_server
from ichigo_stream_server.config import ServerConfig

Model = tuple[IchigoTokenizer, ModelInfo]
TOKEN = "listen-secret"
CHUNK = 3200  # bytes: 100 ms of 16 kHz linear16
# Times real time: slow enough that partials (each a model run) come back while their
# segment is still open, on a loaded machine too.
PACE = 1.5
LIMITS = SessionLimits(max_message_bytes=64 * 1024)
STREAM_QUERY = {
    "interim_results": "true",
    "vad_events": "true",
    "utterance_end_ms": "1000",
    "language": "en-US",  # Whisper decodes "en" (and skips language detection)
    "punctuate": "true",  # one of Deepgram's options we accept and ignore
}
# Sessions that test no transcripts run on a server without --text: no text decoding cost.
TOKENS_ONLY = {"ichigo_tokens": "true"}


@pytest.fixture(scope="module")
def model(tiny_model_files: ModelFiles) -> Model:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options, text=True)


def serve(model: Model, **config: Any) -> contextlib.AbstractAsyncContextManager[StreamServer]:
    tokenizer, info = model
    options: dict[str, Any] = {
        "port": 0, "drain_timeout_s": 10.0, "text": True, "token": TOKEN, "limits": LIMITS,
        # The random decoder never ends a text by itself: 12 tokens keep each decoding (and
        # so the partials' captions) quick on a CPU.
        "max_text_tokens": 12,
        **config,
    }  # fmt: skip
    return running_server(ServerConfig(**options), tokenizer, info)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)


@pytest.fixture(scope="module")
def phrases(speak: Callable[..., np.ndarray]) -> list[np.ndarray]:
    return [
        to_pcm16(speak("Tokens arrive while you speak.")),
        to_pcm16(speak("A short pause follows.")),
        to_pcm16(speak("And then a long one.")),
    ]


@pytest.fixture(scope="module")
def pcm(phrases: list[np.ndarray]) -> bytes:
    """Two utterances, 1.6 s of silence after the first and 0.8 s after the second: enough
    for UtteranceEnd (1000 ms, from the end of a segment's tail) after the first only.
    Two, not more: the random model's text decoding takes seconds a segment on a CPU."""
    a, b, _ = phrases
    return np.concatenate([a, silence(1.6), b, silence(0.8)]).tobytes()


# -- the SDK's side -------------------------------------------------------------------------------


@dataclass
class SdkRun:
    """Everything Deepgram's live client received, parsed by the SDK, and how it closed."""

    messages: list[Any] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def results(self, *, final: bool) -> list[ListenV1Results]:
        return [m for m in self.of(ListenV1Results) if bool(m.is_final) == final]


def environment(port: int) -> DeepgramClientEnvironment:
    """Deepgram's environment, every base URL pointed at our server."""
    http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


def sdk_session(
    port: int,
    steps: Callable[[Any, SdkRun], None],
    *,
    extra: dict[str, str] | None = None,
    **options: Any,
) -> SdkRun:
    """One live connection of the (synchronous) SDK client: `steps` sends, a thread reads."""
    client = DeepgramClient(api_key=TOKEN, environment=environment(port))
    run = SdkRun()
    request_options = {"additional_query_parameters": extra or {}}
    with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=SAMPLE_RATE,
        request_options=request_options, **options,
    ) as socket:  # fmt: skip
        socket.on(EventType.MESSAGE, run.messages.append)
        socket.on(EventType.ERROR, run.errors.append)
        reader = threading.Thread(target=socket.start_listening, daemon=True)
        reader.start()
        steps(socket, run)
        reader.join(60)
        assert not reader.is_alive(), "the server did not close the connection"
        run.close_code = socket._websocket.close_code
        run.close_reason = socket._websocket.close_reason
    return run


def send_paced(socket: Any, data: bytes, pace: float = PACE) -> None:
    t0 = time.monotonic()
    for at in range(0, len(data), CHUNK):
        time.sleep(max(0.0, t0 + at / (2 * SAMPLE_RATE * pace) - time.monotonic()))
        socket.send_media(data[at : at + CHUNK])


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def transcript(results: ListenV1Results) -> str:
    return results.channel.alternatives[0].transcript


def stream_all(pcm: bytes) -> Callable[[Any, SdkRun], None]:
    def steps(socket: Any, run: SdkRun) -> None:
        send_paced(socket, pcm)
        socket.send_close_stream()

    return steps


@dataclass(frozen=True)
class StreamOutcome:
    run: SdkRun
    v1_segments: list[dict[str, Any]]  # /v1/stream's segments for the same audio
    audio_seconds: float


@pytest.fixture(scope="module")
def streamed(model: Model, pcm: bytes) -> StreamOutcome:
    """The whole clip through the SDK (with the token extension), and through /v1/stream."""

    async def main() -> StreamOutcome:
        async with serve(model) as server:
            run = await asyncio.to_thread(
                sdk_session,
                server.port,
                stream_all(pcm),
                extra={"ichigo_tokens": "true"},
                **STREAM_QUERY,
            )
            # tokens only: text would double the decoding time (the unit tests check that
            # the transcript is the v1 segment's text)
            v1 = await run_session(server.port, pcm, token=TOKEN)
        return StreamOutcome(run, v1.of_type("segment"), len(pcm) / 2 / SAMPLE_RATE)

    return asyncio.run(main())


# -- the stream ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_sdk_gets_results_speech_started_utterance_end_and_metadata(
    streamed: StreamOutcome,
) -> None:
    run, segments = streamed.run, streamed.v1_segments
    assert not run.errors, run.errors
    assert len(segments) == 2
    finals = run.results(final=True)
    assert [(r.start, round(r.start + r.duration, 6)) for r in finals] == [
        (s["start"], s["end"]) for s in segments
    ]
    assert all(r.speech_final and not r.from_finalize for r in finals)
    assert all(transcript(r) for r in finals)  # the random model's gibberish, never empty
    # the extension: /v1/stream's tokens, segment for segment
    assert [r.ichigo["tokens"] for r in finals] == [s["tokens"] for s in segments]
    # interim Results come first, each within a segment that a final then completes
    interims = run.results(final=False)
    assert interims, "no interim Results"
    for interim in interims:
        final = next(r for r in finals if r.start == interim.start)
        assert run.messages.index(interim) < run.messages.index(final)
        assert transcript(final).startswith(transcript(interim))
    started = run.of(ListenV1SpeechStarted)
    assert [m.timestamp for m in started] == [s["start"] for s in segments]
    utterance_ends = run.of(ListenV1UtteranceEnd)
    assert [m.last_word_end for m in utterance_ends] == [segments[0]["end"]]
    metadata = run.messages[-1]
    assert isinstance(metadata, ListenV1Metadata)
    assert metadata.request_id == finals[0].metadata.request_id
    assert metadata.duration == round(streamed.audio_seconds, 6)
    assert (run.close_code, run.close_reason) == (1000, "")


@pytest.mark.timeout(120)
def test_interim_results_carry_the_growing_caption(model: Model, phrases: list[np.ndarray]) -> None:
    """Interim transcripts (the partials' captions) grow within a segment and lead into its
    final transcript.

    With endpointing off, the segment stays open through the trailing silence, so the
    partials' text (seconds of decoding a segment for the random model on a CPU) is still
    sent when it comes late; Finalize ends the segment once some has come.
    """
    clip = np.concatenate([phrases[0], silence(4.0)]).tobytes()

    def steps(socket: Any, run: SdkRun) -> None:
        send_paced(socket, clip, pace=1.0)
        # the segment is still open: late partial results (text) are still sent
        wait_until(lambda: any(transcript(r) for r in run.results(final=False)), timeout=30)
        socket.send_finalize()
        wait_until(lambda: any(r.from_finalize for r in run.of(ListenV1Results)), timeout=90)
        socket.send_close_stream()

    async def main() -> SdkRun:
        async with serve(model) as server:
            return await asyncio.to_thread(
                sdk_session, server.port, steps, endpointing="false", language="en",
                interim_results="true",
            )  # fmt: skip

    run = asyncio.run(main())
    (final,) = run.results(final=True)
    texts = [transcript(r) for r in run.results(final=False)]
    assert texts and texts[-1], "no interim text"
    for shorter, longer in zip(texts, [*texts[1:], transcript(final)], strict=True):
        assert longer.startswith(shorter)


@pytest.mark.timeout(60)
def test_finalize_flushes_and_close_stream_ends(model: Model, phrases: list[np.ndarray]) -> None:
    half = phrases[0][: len(phrases[0]) // 2].tobytes()

    def steps(socket: Any, run: SdkRun) -> None:
        send_paced(socket, half)
        socket.send_keep_alive()
        socket.send_finalize()
        wait_until(lambda: any(r.from_finalize for r in run.of(ListenV1Results)))
        socket.send_close_stream()

    async def main() -> SdkRun:
        async with serve(model, text=False) as server:
            return await asyncio.to_thread(
                sdk_session, server.port, steps, extra=TOKENS_ONLY, endpointing="false"
            )

    run = asyncio.run(main())
    assert not run.errors, run.errors
    (flushed,) = run.results(final=True)
    assert flushed.from_finalize and not flushed.speech_final
    assert flushed.start + flushed.duration == pytest.approx(len(half) / 2 / SAMPLE_RATE)
    assert isinstance(run.messages[-1], ListenV1Metadata)
    assert run.messages[-1].duration == pytest.approx(len(half) / 2 / SAMPLE_RATE)
    assert (run.close_code, run.close_reason) == (1000, "")


# -- auth and the handshake -----------------------------------------------------------------------


async def _handshake_status(
    port: int, query: str = "ichigo_tokens=true", **connect_options: Any
) -> int:
    url = f"ws://127.0.0.1:{port}{LISTEN_PATH}" + (f"?{query}" if query else "")
    try:
        async with connect(url, proxy=None, open_timeout=30, **connect_options) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            async for _ in ws:
                pass
            assert ws.close_code == 1000
            return 101
    except InvalidStatus as e:
        return e.response.status_code


@dataclass(frozen=True)
class Refused:
    status: int
    body: dict[str, Any]


async def _refused(port: int, query: str) -> Refused:
    url = f"ws://127.0.0.1:{port}{LISTEN_PATH}?{query}"
    headers = {"Authorization": f"Token {TOKEN}"}
    with pytest.raises(InvalidStatus) as raised:
        async with connect(url, additional_headers=headers, proxy=None, open_timeout=30):
            pass
    response = raised.value.response
    assert response.headers["Content-Type"] == "application/json"
    return Refused(response.status_code, json.loads(response.body))


@pytest.mark.timeout(60)
def test_auth_forms_and_bad_queries_at_the_handshake(model: Model) -> None:
    async def main() -> None:
        async with serve(model, text=False) as server:
            port = server.port
            assert await _handshake_status(port) == 401
            token = {"additional_headers": {"Authorization": f"Token {TOKEN}"}}
            bearer = {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}}
            wrong = {"additional_headers": {"Authorization": "Token nope"}}
            assert await _handshake_status(port, **token) == 101
            assert await _handshake_status(port, **bearer) == 101
            assert await _handshake_status(port, **wrong) == 401
            # browsers: the key as a subprotocol, and "token" answered back
            url = f"ws://127.0.0.1:{port}{LISTEN_PATH}?ichigo_tokens=true"
            async with connect(url, subprotocols=["token", TOKEN], proxy=None) as ws:
                assert ws.subprotocol == "token"
            for query, name in [
                ("encoding=opus", "encoding"),
                ("sample_rate=7000", "sample_rate"),
                ("channels=3", "channels"),
                ("utterance_end_ms=500", "utterance_end_ms"),
                ("interim_results=maybe", "interim_results"),
            ]:
                refused = await _refused(port, query)
                assert refused.status == 400
                assert refused.body["err_code"] == "Bad Request"
                assert name in refused.body["err_msg"] and refused.body["request_id"]
            # the SDK's own connect is refused too (7.17 wraps only the legacy websockets
            # exception in its ApiError: with websockets >= 14, InvalidStatus comes through)
            with pytest.raises((ApiError, InvalidStatus)) as raised:
                await asyncio.to_thread(sdk_session, port, stream_all(b""), channels=3)
            error = raised.value
            status = (
                error.status_code if isinstance(error, ApiError) else error.response.status_code
            )
            assert status == 400

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_server_without_text_serves_tokens_only(model: Model, phrases: list[np.ndarray]) -> None:
    clip = np.concatenate([phrases[0], silence(1.0)]).tobytes()

    async def main() -> tuple[Refused, SdkRun]:
        async with serve(model, text=False) as server:
            refused = await _refused(server.port, "interim_results=true")
            run = await asyncio.to_thread(
                sdk_session, server.port, stream_all(clip), extra={"ichigo_tokens": "true"}
            )
            return refused, run

    refused, run = asyncio.run(main())
    assert refused.status == 400 and "--text" in refused.body["err_msg"]
    (final,) = run.results(final=True)
    assert transcript(final) == "" and final.ichigo["tokens"]


# -- bad input ------------------------------------------------------------------------------------


async def _listen_client(port: int, query: str = "") -> WireClient:
    url = f"ws://127.0.0.1:{port}{LISTEN_PATH}" + (f"?{query}" if query else "")
    headers = {"Authorization": f"Token {TOKEN}"}
    ws = await connect(
        url, additional_headers=headers, proxy=None, max_size=None, open_timeout=30,
        close_timeout=30, compression=None,
    )  # fmt: skip
    return WireClient(ws)


BAD_INPUTS: dict[str, tuple[str | bytes, str, int]] = {
    "malformed JSON": ('{"type": "KeepAlive"', "bad_message", 1008),
    "unknown control": ('{"type": "Flush"}', "bad_message", 1008),
    "odd byte count": (b"\x00" * 3201, "bad_audio", 1008),
    "oversized message": (b"\x00" * (LIMITS.max_message_bytes + 2), "too_large", 1009),
}


@pytest.mark.timeout(90)
def test_bad_input_gets_error_and_close_and_spares_another_session(
    model: Model, phrases: list[np.ndarray]
) -> None:
    clip = np.concatenate([phrases[0], silence(1.0), phrases[1], silence(1.0)]).tobytes()

    async def good(port: int) -> list[dict[str, Any]]:
        client = await _listen_client(port, "ichigo_tokens=true")
        await client.send_audio(clip, (CHUNK,), realtime=4.0)
        await client.send_json({"type": "CloseStream"})
        outcome = await client.finish()
        assert outcome.close_code == 1000, outcome.summary()
        return [m for m in outcome.messages if m["type"] == "Results"]

    async def bad(port: int, data: str | bytes) -> tuple[list[dict[str, Any]], int, str]:
        client = await _listen_client(port, "ichigo_tokens=true")
        await client.send_audio(phrases[0].tobytes()[:32000], (CHUNK,), realtime=4.0)
        await client.send(data)
        outcome = await client.finish()
        return outcome.messages, outcome.close_code or 0, outcome.close_reason

    async def main() -> tuple[list[dict[str, Any]], list, list[dict[str, Any]]]:
        async with serve(model, text=False) as server:
            solo = await good(server.port)
            together = await asyncio.gather(
                good(server.port), *(bad(server.port, b[0]) for b in BAD_INPUTS.values())
            )
            return solo, list(together[1:]), together[0]

    solo, bad_outcomes, accompanied = asyncio.run(main())
    assert accompanied == [
        {**m, "metadata": {**m["metadata"], "request_id": accompanied[0]["metadata"]["request_id"]}}
        for m in solo
    ]
    for (name, (_, code, close)), (messages, close_code, reason) in zip(
        BAD_INPUTS.items(), bad_outcomes, strict=True
    ):
        error = messages[-1]
        assert error["type"] == "Error" and error["code"] == code, (name, messages)
        assert (close_code, reason) == (close, "DATA-0000"), name


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK connects with websockets' defaults, which honour proxy variables: loopback
    traffic must not go through one."""
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    yield


@pytest.mark.timeout(60)
def test_keep_alive_holds_an_idle_session_and_silence_ends_it(model: Model) -> None:
    """Deepgram's NET-0001: neither audio nor KeepAlive within the idle timeout."""
    limits = SessionLimits(max_message_bytes=LIMITS.max_message_bytes, idle_timeout_s=1.5)

    async def main() -> tuple[float, Any]:
        async with serve(model, text=False, limits=limits) as server:
            client = await _listen_client(server.port, "ichigo_tokens=true")
            loop = asyncio.get_running_loop()
            started = loop.time()
            while loop.time() - started < 4.0:  # well past the timeout, kept alive
                await client.send_json({"type": "KeepAlive"})
                await asyncio.sleep(0.3)
            assert not client.closed, client.outcome().summary()
            quiet_since = loop.time()
            outcome = await client.finish(timeout=30)
            return loop.time() - quiet_since, outcome

    waited, outcome = asyncio.run(main())
    assert (outcome.close_code, outcome.close_reason) == (1011, "NET-0001"), outcome.summary()
    assert outcome.messages[-1]["variant"] == "LimitError"
    assert 1.5 <= waited < 20
