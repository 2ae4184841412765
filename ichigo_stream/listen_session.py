"""One /v1/listen connection as a sans-I/O state machine: the Deepgram-style adapter over v1.

ListenSession owns one ServerSession, started at once with the v1 start the query maps to
(listen_protocol.ListenOptions.start_options), and translates both ways: binary audio ->
Audio, Finalize -> Flush, CloseStream -> Stop, KeepAlive -> nothing but a refreshed idle
clock; and the inner session's speech_start / partial / segment / error / done -> Deepgram's
SpeechStarted / interim Results / final Results (+ UtteranceEnd) / Error / Metadata. Submit
and Cancel pass through untouched, so VAD, jobs, limits and the worker are /v1/stream's own,
and the extension's tokens are /v1/stream's segments by construction.
"""

from __future__ import annotations

import hashlib
import uuid

from .actions import Action, Close, Count, Job, JobResult, Send
from .errors import CloseCode, ProtocolError
from .listen_messages import (
    ConfigureFailure,
    Error,
    IchigoTokens,
    Metadata,
    ModelFields,
    Results,
    SpeechStarted,
    UtteranceEnd,
)
from .listen_protocol import ListenOptions, parse_control
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
    Stop,
)
from .model_info import ModelInfo
from .segmentation import VadOptions
from .session import ServerSession

# Deepgram's close for data it cannot use (DATA-0000: "the payload cannot be decoded"), and
# for a client that sent neither audio nor KeepAlive within the timeout (NET-0001).
DATA_CLOSE = (CloseCode.POLICY_VIOLATION, "DATA-0000")
IDLE_CLOSE = (CloseCode.INTERNAL_ERROR, "NET-0001")
CLOSE_BY_CODE = {
    "bad_message": DATA_CLOSE,
    "bad_audio": DATA_CLOSE,
    "unsupported": DATA_CLOSE,
    "too_large": (CloseCode.MESSAGE_TOO_BIG, "DATA-0000"),
}
SCHEMA_ECHO_CHARS = 200  # how much of an unreadable text message the Error echoes back


def model_fields(model: ModelInfo) -> ModelFields:
    """Deepgram's model_info for ours; the uuid is derived from the checkpoint's identity,
    so it names the same model on every server."""
    ident = uuid.uuid5(uuid.NAMESPACE_URL, f"ichigo-stream:{model.name}:{model.sha256}")
    return ModelFields(model.name, model.sha256[:12], "ichigo-whisper", str(ident))


class ListenSession:
    """Deepgram-style streaming for one connection: streaming -> closing -> closed."""

    def __init__(
        self,
        session_id: str,
        model: ModelInfo,
        capabilities: Capabilities,
        now: float,
        options: ListenOptions,
        *,
        request_id: str,
        created: str,
        vad_defaults: VadOptions | None = None,
    ) -> None:
        self.id = session_id
        self.options = options
        self.request_id = request_id
        self.created = created
        self.limits = capabilities.limits
        self.model = model_fields(model)
        self.state: str = "streaming"  # -> "closing" (CloseStream) -> "closed"
        self.last_message_at = now
        self._inner = ServerSession(session_id, model, capabilities, now, vad_defaults=vad_defaults)
        self._audio_hash = hashlib.sha256()
        self._close_override: tuple[int, str] | None = None
        self._fatal_code: str | None = None  # the v1 code of the fatal error, once sent
        self._cut_by_stop: int | None = None  # the segment CloseStream (or a drain) closed
        self._starts: dict[int, float] = {}  # speech start (s) by segment, until its Results
        self._finalized: set[int] = set()  # segments closed by Finalize
        self._interim: dict[int, str] = {}  # the last interim transcript by segment
        self._utterance_end: tuple[float, float] | None = None  # (due at s, last_word_end)
        start = options.start_options(vad_defaults, text=capabilities.text)
        # Deepgram has no ready message: the v1 ready is dropped; a refused start (never, for
        # a query parse_listen_query accepted) is answered on the first step.
        self._pending = self._translate(self._inner.handle(Start(start), now))

    # -- SessionMachine --------------------------------------------------------------------------

    def opened(self, now: float) -> list[Action]:
        """The connection is accepted: Deepgram sends nothing before the first results."""
        return []

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        actions, self._pending = self._pending, []
        if self.state == "closed":
            return actions
        if self.state == "closing":
            return actions  # after CloseStream the stream is finishing: the rest is ignored
        self.last_message_at = now
        # KeepAlive and control messages count as activity for the inner session too: its
        # idle timeout would otherwise end a session that only keeps alive.
        self._inner.last_message_at = now
        try:
            self._inner.admit(data, now)  # the message rate and size limits of /v1/stream
        except ProtocolError as e:
            return actions + self.fail(e)
        if isinstance(data, bytes):
            if not data:  # Deepgram's legacy end of stream: an empty binary message
                return actions + self._close_stream(now)
            self._audio_hash.update(data)
            return actions + self._step(self._inner.handle(Audio(data), now))
        try:
            control = parse_control(data)
        except ProtocolError as e:
            return actions + self._fail(e, message=data[:SCHEMA_ECHO_CHARS])
        if control == "KeepAlive":
            return actions
        if control == "Configure":
            return [*actions, Send(ConfigureFailure(self.request_id))]
        if control == "Finalize":
            open_segment = self._inner.open_segment
            if open_segment is not None:
                self._finalized.add(open_segment)
            return actions + self._step(self._inner.handle(Flush(), now))
        return actions + self._close_stream(now)

    def job_done(self, job: Job, result: JobResult, now: float) -> list[Action]:
        return self._step(self._inner.job_done(job, result, now))

    def check_timeouts(self, now: float) -> list[Action]:
        actions, self._pending = self._pending, []
        if self.state != "streaming":
            return actions
        if now - self.last_message_at > self.limits.idle_timeout_s:
            error = ProtocolError(
                "limit", f"no audio or KeepAlive for {self.limits.idle_timeout_s:g} s"
            )
            return actions + self._fail(error, close=IDLE_CLOSE)
        return actions + self._step(self._inner.check_timeouts(now))

    def shutdown(self, now: float) -> list[Action]:
        if self.state == "streaming":
            self.state = "closing"
            self._cut_by_stop = self._inner.open_segment
        return self._step(self._inner.shutdown(now))

    def fail(self, error: ProtocolError) -> list[Action]:
        return self._fail(error)

    def connection_lost(self, now: float) -> list[Action]:
        self.state = "closed"
        return self._inner.connection_lost(now)  # cancels only: nothing can be sent

    @property
    def audio_seconds(self) -> float:
        return self._inner.audio_seconds

    # -- steps -----------------------------------------------------------------------------------

    def _close_stream(self, now: float) -> list[Action]:
        self.state = "closing"
        self._cut_by_stop = self._inner.open_segment
        return self._step(self._inner.handle(Stop(), now))

    def _fail(
        self,
        error: ProtocolError,
        *,
        close: tuple[int, str] | None = None,
        message: str | None = None,
    ) -> list[Action]:
        self._close_override = close
        actions = self._translate(self._inner.fail(error), schema_message=message)
        self.state = "closed"
        return actions

    def _step(self, inner: list[Action]) -> list[Action]:
        """Translate the inner session's actions, then send an UtteranceEnd that fell due."""
        actions = self._translate(inner)
        if self.state != "closed":
            actions += self._due_utterance_end()
        return actions

    def _due_utterance_end(self) -> list[Action]:
        """UtteranceEnd once the audio holds utterance_end_ms of non-speech after the last
        final segment: judged on the audio's timeline, so however late the model's results
        come (even after CloseStream), the same gaps get one."""
        pending = self._utterance_end
        if pending is None or self.audio_seconds < pending[0]:
            return []
        self._utterance_end = None
        return [Send(UtteranceEnd(pending[1]))]

    def _translate(self, inner: list[Action], schema_message: str | None = None) -> list[Action]:
        out: list[Action] = []
        for action in inner:
            if isinstance(action, Send):
                out.append(Count(action.message))  # in /metrics as on /v1/stream
            if isinstance(action, Close):
                self.state = "closed"
                code, reason = (
                    self._close_override
                    or CLOSE_BY_CODE.get(self._fatal_code or "")
                    or (action.code, action.reason)
                )
                out.append(Close(code, reason))
            elif not isinstance(action, Send):
                out.append(action)  # Submit and Cancel: the worker's business
            else:
                out += self._message(action.message, schema_message)
        return out

    def _message(self, message: object, schema_message: str | None) -> list[Action]:
        if isinstance(message, Ready):
            return []
        if isinstance(message, SpeechStart):
            out: list[Action] = []
            pending = self._utterance_end
            if pending is not None and message.start >= pending[0]:
                out.append(Send(UtteranceEnd(pending[1])))  # the gap was long enough
            self._utterance_end = None
            self._starts[message.segment] = message.start
            if self.options.vad_events:
                out.append(Send(SpeechStarted(message.start)))
            return out
        if isinstance(message, Partial):
            return self._interim_results(message)
        if isinstance(message, Segment):
            return self._final_results(message)
        if isinstance(message, ErrorMessage):
            if message.segment is not None:  # that segment failed; the stream goes on
                self._starts.pop(message.segment, None)
                self._interim.pop(message.segment, None)
                return [Send(Error(message.code, message.message, segment=message.segment))]
            self._fatal_code = message.code
            echo = schema_message if message.code == "bad_message" else None
            return [Send(Error(message.code, message.message, message=echo))]
        if isinstance(message, Done):
            digest = self._audio_hash.hexdigest()
            metadata = Metadata(
                self.request_id,
                digest,
                self.created,
                message.audio_seconds,
                self.options.channels,
                self.model,
            )
            return [Send(metadata)]
        raise AssertionError(f"the v1 session sent an unexpected {message!r}")

    def _interim_results(self, partial: Partial) -> list[Action]:
        # Before captions (or when a partial's text failed) a partial has no text: repeat the
        # segment's last interim transcript, so an interim never retracts text.
        text = partial.text if partial.text is not None else self._interim.get(partial.segment, "")
        self._interim[partial.segment] = text
        ichigo = (
            IchigoTokens(partial.segment, partial.start, partial.end, partial.tokens)
            if self.options.ichigo_tokens
            else None
        )
        results = Results(
            partial.start,
            partial.end,
            text,
            is_final=False,
            speech_final=False,
            from_finalize=False,
            request_id=self.request_id,
            model=self.model,
            ichigo=ichigo,
        )
        return [Send(results)]

    def _final_results(self, segment: Segment) -> list[Action]:
        index = segment.segment
        from_finalize = index in self._finalized
        # A segment cut at the length cap in continuous speech: the next one starts exactly
        # where it ends (its speech_start always precedes this segment's result).
        continued = self._starts.get(index + 1) == segment.end
        # speech_final: the speech ended (by silence), as opposed to being cut off.
        speech_final = not (from_finalize or continued or index == self._cut_by_stop)
        self._finalized.discard(index)
        self._starts.pop(index, None)
        self._interim.pop(index, None)
        ichigo = (
            IchigoTokens(index, segment.start, segment.end, segment.tokens, segment.llm)
            if self.options.ichigo_tokens
            else None
        )
        results = Results(
            segment.start,
            segment.end,
            segment.text or "",
            is_final=True,
            speech_final=speech_final,
            from_finalize=from_finalize,
            request_id=self.request_id,
            model=self.model,
            ichigo=ichigo,
        )
        out: list[Action] = [Send(results)]
        if self.options.utterance_end_ms is not None:
            due = segment.end + self.options.utterance_end_ms / 1000
            next_start = self._starts.get(index + 1)
            if next_start is None:  # no speech since: wait for the audio to reach `due`
                self._utterance_end = (due, segment.end)
                out += self._due_utterance_end()
            elif next_start >= due:  # speech came back, but only after the gap
                out.append(Send(UtteranceEnd(segment.end)))
        return out
