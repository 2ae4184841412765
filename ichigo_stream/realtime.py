"""OpenAI Realtime transcription (`/v1/realtime`) as a sans-I/O session over ServerSession.

RealtimeSession owns one v1 ServerSession: client events become v1 messages fed through
ServerSession.handle (append -> Audio, commit -> Flush, clear -> discard_open), and the v1
messages it answers with become OpenAI events (speech_start -> speech_started, the endpoint
-> speech_stopped + committed, partial text -> transcription deltas, segment -> completed).
VAD, jobs, limits and the model worker are therefore those of /v1/stream, and the tokens of
the ichigo.* extension events are /v1/stream's segments for the same audio. Submit and
Cancel pass through untouched. realtime_events.py reads and builds the events themselves.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from dataclasses import dataclass, replace
from typing import Any

from .actions import Action, Cancel, Close, Count, Job, JobResult, Send, Submit
from .constants import SAMPLE_RATE
from .errors import ProtocolError
from .manual_segmentation import ManualSegmenter
from .messages import (
    Audio,
    Capabilities,
    Done,
    ErrorMessage,
    Flush,
    Partial,
    Ready,
    Segment,
    SpeechStart,
    Start,
)
from .model_info import ModelInfo
from .protocol import StartOptions
from .realtime_events import (
    MIN_COMMIT_MS,
    RealtimeConfig,
    RealtimeError,
    RealtimeEvent,
    apply_beta_update,
    apply_session_update,
    beta_session_object,
    error_fields,
    session_object,
)
from .segmentation import Span, VadOptions, VadSegmenter
from .session import ServerSession, size_in_bytes

BYTES_PER_SAMPLE = 2  # audio/pcm is 16-bit little-endian mono
CONTENT_INDEX = 0  # the one content part (input_audio) of every item
# The v1 error codes of fatal errors that are the server's fault, not the client's.
SERVER_ERROR_CODES = ("internal",)


@dataclass
class _Item:
    """One conversation item: the audio of one v1 segment, and the text sent for it."""

    id: str
    segment: int
    text_sent: str = ""


class RealtimeSession:
    """One /v1/realtime connection (SessionMachine): open -> (streaming) -> closed."""

    def __init__(
        self,
        session_id: str,
        model: ModelInfo,
        capabilities: Capabilities,
        now: float,
        *,
        vad_defaults: VadOptions | None = None,
    ) -> None:
        self.id = session_id
        self.capabilities = capabilities
        self.limits = capabilities.limits
        self.config = RealtimeConfig(vad=vad_defaults or VadOptions())
        self.closed = False
        self._inner = ServerSession(
            session_id,
            model,
            capabilities,
            now,
            vad_defaults=vad_defaults,
            segmenter=self._segmenter,
            on_segment_closed=self._segment_closed,
        )
        self._event_ids = itertools.count(1)
        self._item_ids = itertools.count(1)
        self._items: dict[int, _Item] = {}  # by v1 segment index, until completed or failed
        self._open: _Item | None = None  # the item whose speech started and is not committed
        self._previous_item_id: str | None = None
        self._just_closed: list[tuple[int, Span]] = []  # endpoints not yet announced
        self._uncommitted_bytes = 0  # appended since the last commit (manual mode)

    @property
    def started(self) -> bool:
        """Audio has begun: the inner v1 session has its start (and its audio layout)."""
        return self._inner.state != "awaiting_start"

    @property
    def audio_seconds(self) -> float:
        return self._inner.audio_seconds

    # -- SessionMachine --------------------------------------------------------------------

    def opened(self, now: float) -> list[Action]:
        """The connection is up: OpenAI's first server event, with the default session."""
        return [self._event("session.created", session=session_object(self._wire_id, self.config))]

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        if self.closed or self._inner.state == "closed":
            return []
        self._inner.last_message_at = now  # session.update and clear count as activity too
        try:
            self._inner.count_message(data, now)  # the message-rate limit of /v1/stream
        except ProtocolError as e:
            return self.fail(e)
        client_event_id: str | None = None
        try:
            event = self._parse(data)
            raw_id = event.get("event_id")
            client_event_id = raw_id if isinstance(raw_id, str) else None
            return self._dispatch(event, now)
        except RealtimeError as e:
            fields = error_fields(e.code, e.message, e.param, client_event_id)
            return [self._event("error", **fields)]

    def job_done(self, job: Job, result: JobResult, now: float) -> list[Action]:
        return self._translate(self._inner.job_done(job, result, now))

    def check_timeouts(self, now: float) -> list[Action]:
        return self._translate(self._inner.check_timeouts(now))

    def shutdown(self, now: float) -> list[Action]:
        return self._translate(self._inner.shutdown(now))

    def fail(self, error: ProtocolError) -> list[Action]:
        return self._translate(self._inner.fail(error))

    def connection_lost(self, now: float) -> list[Action]:
        self.closed = True
        return self._inner.connection_lost(now)

    # -- client events ---------------------------------------------------------------------

    def _parse(self, data: str | bytes) -> dict[str, Any]:
        if not isinstance(data, str):
            raise RealtimeError(
                "invalid_json",
                "binary messages are not events: send audio as input_audio_buffer.append",
            )
        limit = self.limits.max_message_bytes
        size = size_in_bytes(data, limit)
        if size > limit:
            # Dropped, as OpenAI drops an event it refuses: the session goes on.
            raise RealtimeError("message_too_large", f"event of {size} bytes exceeds {limit}", None)
        try:
            event = json.loads(data)
        except ValueError as e:
            raise RealtimeError("invalid_json", f"events must be JSON objects: {e}") from None
        except RecursionError:
            raise RealtimeError("invalid_json", "event nested too deeply") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RealtimeError(
                "missing_required_parameter", 'events must be objects with a "type" string', "type"
            )
        return event

    def _dispatch(self, event: dict[str, Any], now: float) -> list[Action]:
        kind = event["type"]
        if kind == "session.update":
            config = apply_session_update(self.config, event.get("session"))
            return self._configure(config, "session.updated", session_object)
        if kind == "transcription_session.update":
            config = apply_beta_update(self.config, event.get("session"))
            return self._configure(config, "transcription_session.updated", beta_session_object)
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"), now)
        if kind == "input_audio_buffer.commit":
            return self._commit(now)
        if kind == "input_audio_buffer.clear":
            return self._clear(now)
        raise RealtimeError(
            "invalid_value",
            f"event type {kind!r} unsupported: this transcription session takes session.update, "
            "transcription_session.update and input_audio_buffer.append/commit/clear",
            "type",
        )

    def _configure(self, config: RealtimeConfig, answer: str, echo: Any) -> list[Action]:
        if self.started and _streaming_fields(config) != _streaming_fields(self.config):
            # The audio layout, VAD and text options are fixed once audio flows (the v1
            # session's start); model and prompt are only echoed, so they may still change.
            raise RealtimeError(
                "session_update_after_audio",
                "the audio format, turn detection, language and ichigo options cannot change "
                "after audio was appended: open a new session",
                "session",
            )
        self.config = config
        return [self._event(answer, session=echo(self._wire_id, config))]

    def _ensure_started(self, now: float) -> list[Action]:
        if self.started:
            return []
        config = self.config
        text = self.capabilities.text
        options = StartOptions(
            sample_rate=config.sample_rate,
            partials=text or config.ichigo.partials,  # partial text is what deltas are made of
            text=text,
            language=config.language,
            llm_format=config.ichigo.llm_format,
            vad=config.vad,
        )
        return self._translate(self._inner.handle(Start(options), now))

    def _append(self, audio: Any, now: float) -> list[Action]:
        if not isinstance(audio, str):
            raise RealtimeError("invalid_type", "audio must be a base64 string", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "audio is not valid base64", "audio") from None
        if len(data) % BYTES_PER_SAMPLE:
            raise RealtimeError(
                "invalid_value",
                f"audio/pcm is 16-bit samples: {len(data)} bytes is not a whole number of them",
                "audio",
            )
        actions = self._ensure_started(now)
        if not data:
            return actions
        self._uncommitted_bytes += len(data)
        return actions + self._translate(self._inner.handle(Audio(data), now))

    def _commit(self, now: float) -> list[Action]:
        rate = self.config.sample_rate
        buffered_ms = self._uncommitted_bytes / BYTES_PER_SAMPLE / rate * 1000
        open_item = self._open
        if self.config.manual and buffered_ms < MIN_COMMIT_MS:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: expected at least {MIN_COMMIT_MS}ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio",
            )
        if not self.config.manual and open_item is None:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                "no speech to commit: with server VAD, commit ends the speech in progress",
            )
        self._uncommitted_bytes = 0
        return self._translate(self._inner.handle(Flush(), now))

    def _clear(self, now: float) -> list[Action]:
        actions = self._translate(self._inner.discard_open(now)) if self.started else []
        if self._open is not None:
            del self._items[self._open.segment]  # its audio is gone: it never commits
            self._open = None
        self._uncommitted_bytes = 0
        return [*actions, self._event("input_audio_buffer.cleared")]

    # -- v1 -> OpenAI ------------------------------------------------------------------------

    def _segmenter(self, vad: VadOptions) -> VadSegmenter | ManualSegmenter:
        return ManualSegmenter(vad) if self.config.manual else VadSegmenter(vad)

    def _segment_closed(self, index: int, span: Span) -> None:
        # Called inside a ServerSession step: announced in order by _translate.
        self._just_closed.append((index, span))

    def _translate(self, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        failures = {
            a.message.segment: a.message
            for a in actions
            if isinstance(a, Send)
            and isinstance(a.message, ErrorMessage)
            and a.message.segment is not None
        }
        for action in actions:
            if isinstance(action, Send):
                out.append(Count(action.message))  # in /metrics as on /v1/stream
            if isinstance(action, Submit | Cancel):
                out.append(action)
                continue
            if isinstance(action, Close):
                out += self._announce_closed(None)
                self.closed = True
                out.append(action)
                continue
            message = action.message
            if isinstance(message, SpeechStart):
                out += self._announce_closed(message.segment - 1)
                out += self._speech_started(message)
            elif isinstance(message, Partial):
                out += self._partial(message)
            elif isinstance(message, Segment):
                out += self._announce_closed(message.segment)
                out += self._completed(message, failures.pop(message.segment, None))
            elif isinstance(message, ErrorMessage) and message.segment is not None:
                out += self._announce_closed(message.segment)
                if message.segment in failures:  # no segment came: its tokens failed
                    out += self._failed(failures.pop(message.segment))
            elif isinstance(message, ErrorMessage):
                out += self._announce_closed(None)
                server = message.code in SERVER_ERROR_CODES
                kind = "server_error" if server else "invalid_request_error"
                fields = error_fields(message.code, message.message, kind=kind)
                out.append(self._event("error", **fields))
            elif not isinstance(message, Ready | Done):
                raise AssertionError(f"unexpected v1 message {message!r}")
        return out + self._announce_closed(None)

    def _item(self, segment: int) -> _Item:
        item = self._items.get(segment)
        if item is None:
            item = _Item(f"item_{self.id}{next(self._item_ids):05d}", segment)
            self._items[segment] = item
        return item

    def _take(self, segment: int) -> _Item:
        """The item of a segment that is done (completed or failed): forgotten here."""
        item = self._item(segment)
        del self._items[segment]
        return item

    def _speech_started(self, message: SpeechStart) -> list[Action]:
        item = self._item(message.segment)
        self._open = item
        if self.config.manual:
            return []  # no VAD: speech is whatever the client commits
        start_ms = round(message.start * 1000)
        return [
            self._event(
                "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=item.id
            )
        ]

    def _announce_closed(self, up_to: int | None) -> list[Action]:
        """speech_stopped (VAD endpoints) and committed for the segments closed so far,
        up to index up_to (all if None), in order."""
        out: list[Action] = []
        while self._just_closed and (up_to is None or self._just_closed[0][0] <= up_to):
            index, span = self._just_closed.pop(0)
            item = self._item(index)
            if self._open is item:
                self._open = None
            if not self.config.manual and span.reason != "flush":
                # A client's own commit ends speech without speech_stopped, as OpenAI's does.
                end_ms = span.end * 1000 // SAMPLE_RATE
                out.append(
                    self._event(
                        "input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item.id
                    )
                )
            out.append(
                self._event(
                    "input_audio_buffer.committed",
                    previous_item_id=self._previous_item_id,
                    item_id=item.id,
                )
            )
            self._previous_item_id = item.id
        return out

    def _delta(self, item: _Item, text: str | None) -> list[Action]:
        """The text grown since the last delta: append-only (the caption contract)."""
        if not text or not text.startswith(item.text_sent) or len(text) == len(item.text_sent):
            return []
        delta = text[len(item.text_sent) :]
        item.text_sent = text
        return [
            self._event(
                "conversation.item.input_audio_transcription.delta",
                item_id=item.id,
                content_index=CONTENT_INDEX,
                delta=delta,
            )
        ]

    def _partial(self, message: Partial) -> list[Action]:
        item = self._item(message.segment)
        out = self._delta(item, message.text)
        if self.config.ichigo.partials:
            out.append(
                self._event(
                    "ichigo.tokens.partial",
                    item_id=item.id,
                    start=message.start,
                    end=message.end,
                    tokens=list(message.tokens),
                )
            )
        return out

    def _completed(self, message: Segment, failure: ErrorMessage | None) -> list[Action]:
        item = self._take(message.segment)
        out: list[Action] = []
        if self.capabilities.text and message.text is None:
            # The tokens came, the text did not: the transcription failed.
            out += self._failed(failure or ErrorMessage("internal", "no text"), item)
        else:
            text = message.text or ""
            out += self._delta(item, text)
            out.append(
                self._event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item.id,
                    content_index=CONTENT_INDEX,
                    transcript=text,
                    usage={"type": "duration", "seconds": round(message.duration, 3)},
                )
            )
        if self.config.ichigo.tokens:
            extra = {"llm": message.llm} if message.llm is not None else {}
            out.append(
                self._event(
                    "ichigo.tokens.completed",
                    item_id=item.id,
                    start=message.start,
                    end=message.end,
                    tokens=list(message.tokens),
                    **extra,
                )
            )
        return out

    def _failed(self, message: ErrorMessage, item: _Item | None = None) -> list[Action]:
        if item is None:
            assert message.segment is not None
            item = self._take(message.segment)
        error = {"type": "server_error", "code": message.code, "message": message.message}
        return [
            self._event(
                "conversation.item.input_audio_transcription.failed",
                item_id=item.id,
                content_index=CONTENT_INDEX,
                error={**error, "param": None},
            )
        ]

    # -- wire --------------------------------------------------------------------------------

    @property
    def _wire_id(self) -> str:
        return f"sess_{self.id}"

    def _event(self, kind: str, **fields: Any) -> Send:
        event_id = f"event_{self.id}{next(self._event_ids):06d}"
        return Send(RealtimeEvent(kind, {"event_id": event_id, **fields}))


def _streaming_fields(config: RealtimeConfig) -> RealtimeConfig:
    """What the v1 start fixes: the configuration less the fields that are only echoed."""
    return replace(config, model=None, prompt=None)
