"""One streaming connection as a sans-I/O state machine: messages and results in, actions out.

The I/O layer (server/) feeds it every client message and every model result with the
current time, and carries out what it returns: Send a message, Submit a job to the model
worker, Cancel a job, Close the connection. Nothing here touches a socket, a thread or a
clock, so the whole protocol is tested without either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .actions import Action, Cancel, Close, Job, JobResult, Send, Submit
from .audio import PcmStreamDecoder
from .captions import LocalAgreement
from .constants import SAMPLE_RATE
from .errors import AudioError, CloseCode, ProtocolError
from .manual_segmentation import ManualSegmenter
from .message_rate import MessageRate
from .messages import (
    Audio,
    Capabilities,
    ClientMessage,
    Done,
    ErrorMessage,
    Flush,
    Partial,
    Ready,
    Segment,
    SessionLimits,
    SpeechStart,
    Start,
    Stop,
    parse_client_message,
)
from .model_info import ModelInfo
from .protocol import PROTOCOL_VERSION, StartOptions, seconds
from .segmentation import (
    CandidateCancelled,
    EndpointCandidate,
    SegmentClosed,
    Span,
    SpeechStarted,
    VadEvent,
    VadOptions,
    VadSegmenter,
)
from .stream_buffer import AudioBuffer
from .tokens import format_tokens


@dataclass
class _Final:
    job: Job
    closed_at: float | None = None  # when the endpoint was decided; None while speculative
    result: JobResult | None = None


class ServerSession:
    """Protocol v1 for one connection: awaiting_start -> streaming -> stopping -> closed."""

    def __init__(
        self,
        session_id: str,
        model: ModelInfo,
        capabilities: Capabilities,
        now: float,
        *,
        vad_defaults: VadOptions | None = None,
        segmenter: Callable[[VadOptions], VadSegmenter | ManualSegmenter] | None = None,
        on_segment_closed: Callable[[int, Span], None] | None = None,
    ) -> None:
        self.id = session_id
        # What cuts the audio into segments: the VAD, or (OpenAI Realtime's manual commits)
        # manual_segmentation.ManualSegmenter, which speaks the same interface.
        self._make_segmenter = segmenter or VadSegmenter
        # Told the moment an endpoint is decided (index, span), before the segment's tokens
        # exist: protocols that announce the end of speech (OpenAI's speech_stopped) need it.
        self._on_segment_closed = on_segment_closed
        # The server's VAD settings where the client's start leaves them out (serve's).
        self.vad_defaults = vad_defaults
        self.model = model
        self.capabilities = capabilities  # sent in ready; also what this session enforces
        self.limits: SessionLimits = capabilities.limits
        self.state: Literal["awaiting_start", "streaming", "stopping", "closed"] = "awaiting_start"
        self.options: StartOptions | None = None
        self.segments_sent = 0
        self.started_at = now
        self.last_message_at = now
        self._received_seconds = 0.0
        self._message_rate = MessageRate(self.limits.max_messages_per_s, now)
        self._decoder: PcmStreamDecoder | None = None
        self._vad: VadSegmenter | ManualSegmenter | None = None
        self._buffer = AudioBuffer(capacity=0)  # replaced at start, in the decoder's dtype
        self._finals: dict[int, _Final] = {}  # by segment index, until sent
        self._next_to_send = 0
        self._partial: Job | None = None  # the latest partial in flight
        self._partial_sent_end = 0  # end of the newest partial sent: older results are stale
        self._open_index = 0  # index of the open (or next) segment
        self._next_partial_at = 0
        # Live captions (text and partials on): each unsent segment's agreement so far.
        self._captions: dict[int, LocalAgreement] = {}
        self._draining = False  # stopped by shutdown(), not by the client
        self.windows_used = 0  # encoder windows of the final jobs submitted (see _charge_window)
        self.over_window_budget = False  # failed with too_fast for its windows (for metrics)

    # -- input ---------------------------------------------------------------------------

    def opened(self, now: float) -> list[Action]:
        """The connection is accepted: v1 says nothing until the client's start."""
        return []

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        """One client message."""
        if self.state == "closed":
            return []
        if self._draining:
            # The client cannot know the server is draining: what it still sends is dropped,
            # not a protocol error that would throw away the segments being finished.
            return []
        self.last_message_at = now
        try:
            self.admit(data, now)
            message = parse_client_message(data, vad_defaults=self.vad_defaults)
        except ProtocolError as e:
            return self.fail(e)
        return self.handle(message, now)

    def admit(self, data: str | bytes, now: float) -> None:
        """The checks every raw message passes before it is parsed, whatever protocol the
        connection speaks (the adapters call it too): the message rate, then the size.
        Raises ProtocolError ("too_fast", "too_large")."""
        self.count_message(data, now)
        size = size_in_bytes(data, self.limits.max_message_bytes)
        if size > self.limits.max_message_bytes:
            raise ProtocolError(
                "too_large",
                f"message of {size} bytes exceeds {self.limits.max_message_bytes}",
            )

    def count_message(self, data: str | bytes, now: float) -> None:
        """The message-rate limit alone (ProtocolError "too_fast"), for adapters whose
        protocol answers an oversized message in its own way."""
        # Before anything else, parsing included: a flood costs a counter, no more.
        self._message_rate.count(len(data), now)

    def handle(self, message: ClientMessage, now: float) -> list[Action]:
        """One parsed client message: the typed entry point that receive() feeds, and that
        the adapters of other protocols (OpenAI Realtime, Deepgram) drive directly."""
        if self.state == "closed" or self._draining:
            return []
        self.last_message_at = now
        try:
            if isinstance(message, Start):
                return self._start(message.options)
            if self.state == "awaiting_start":
                raise ProtocolError("bad_message", "the first message must be a start message")
            if self.state == "stopping":
                raise ProtocolError("bad_message", "no messages are allowed after stop")
            if isinstance(message, Audio):
                return self._audio(message.data, now)
            if isinstance(message, Flush):
                return self._events(self._vad.flush(), now)
            assert isinstance(message, Stop)
            return self._stop(now)
        except ProtocolError as e:
            return self.fail(e)

    def discard_open(self, now: float) -> list[Action]:
        """Drop the open segment, unsent, with its model work (OpenAI's input_audio_buffer.clear):
        it never closes, and the next segment takes its index."""
        if self.state != "streaming" or self._draining:
            return []
        self.last_message_at = now
        actions = self._events(self._vad.discard(), now)
        if self._partial is not None and self._partial.segment == self._open_index:
            actions.append(Cancel(self._partial))
            self._partial = None
        return actions

    def job_done(self, job: Job, result: JobResult, now: float) -> list[Action]:
        """A model result for one of this session's jobs."""
        if self.state == "closed":
            return []
        if job.kind == "partial":
            return self._partial_done(job, result)
        final = self._finals.get(job.segment)
        if final is None or final.job is not job:
            return []  # a speculative result whose segment ended elsewhere
        final.result = result
        return self._send_ready_finals(now)

    def check_timeouts(self, now: float) -> list[Action]:
        if self.state in ("closed", "stopping"):
            return []
        if now - self.started_at > self.limits.max_session_s:
            return self.fail(
                ProtocolError("limit", f"session longer than {self.limits.max_session_s:g} s")
            )
        if now - self.last_message_at > self.limits.idle_timeout_s:
            return self.fail(
                ProtocolError("limit", f"no message for {self.limits.idle_timeout_s:g} s")
            )
        return []

    def shutdown(self, now: float) -> list[Action]:
        """The server is draining: finish like a client stop."""
        if self.state == "awaiting_start":
            self.state = "closed"
            return [Close(CloseCode.GOING_AWAY, "server shutting down")]
        if self.state == "streaming":
            self._draining = True
            try:
                return self._stop(now)
            except ProtocolError as e:
                return self.fail(e)
        return []

    def fail(self, error: ProtocolError) -> list[Action]:
        """A fatal error: tell the client, cancel outstanding work, close."""
        if self.state == "closed":
            return []  # already closed: a second error and Close would go to a dead socket
        send = Send(ErrorMessage(error.code, error.message, retry_after_ms=error.retry_after_ms))
        return [send, *self._abandon(), Close(error.close_code, error.code)]

    def connection_lost(self, now: float) -> list[Action]:
        """The socket is gone (the client left, or the I/O layer ended it): cancel the
        outstanding work and close; nothing more can be sent."""
        if self.state == "closed":
            return []
        return self._abandon()

    def _abandon(self) -> list[Action]:
        cancels: list[Action] = [Cancel(job) for job in self.pending_jobs()]
        self._finals.clear()
        self._captions.clear()
        self._partial = None
        self.state = "closed"
        return cancels

    def pending_jobs(self) -> list[Job]:
        jobs = [final.job for final in self._finals.values() if final.result is None]
        return jobs + ([self._partial] if self._partial is not None else [])

    @property
    def audio_seconds(self) -> float:
        return self._vad.position / SAMPLE_RATE if self._vad else 0.0

    @property
    def open_segment(self) -> int | None:
        """The index of the segment the VAD has open (speech going on), None between
        segments: what a flush would close (adapters mark that segment's result)."""
        return self._open_index if self._vad is not None and self._vad.in_speech else None

    # -- protocol steps ------------------------------------------------------------------

    def _start(self, options: StartOptions) -> list[Action]:
        if self.state != "awaiting_start":
            raise ProtocolError("bad_message", "start was already received")
        if options.text and not self.capabilities.text:
            raise ProtocolError(
                "unsupported", "text was asked for but this server runs without --text"
            )
        self.options = options
        self._decoder = PcmStreamDecoder(options.sample_rate, options.encoding, options.channels)
        # Kept as the decoder gives it: 16 kHz PCM stays int16 until a job's slice.
        self._buffer = AudioBuffer(dtype=self._decoder.output_dtype)
        self._vad = self._make_segmenter(options.vad)
        self.state = "streaming"
        ready = Ready(PROTOCOL_VERSION, self.id, self.model, SAMPLE_RATE, self.capabilities)
        return [Send(ready)]

    def _audio(self, data: bytes, now: float) -> list[Action]:
        assert self.options is not None and self._decoder is not None
        self._received_seconds += len(data) / (
            self.options.bytes_per_frame * self.options.sample_rate
        )
        elapsed = now - self.started_at
        # `serve --max-realtime inf` means no limit; 0 s * inf would be NaN, so say it outright.
        unlimited = math.isinf(self.limits.max_realtime)
        allowed = self.limits.realtime_burst_s + elapsed * self.limits.max_realtime
        if not unlimited and self._received_seconds > allowed:
            raise ProtocolError(
                "too_fast", f"audio is arriving faster than {self.limits.max_realtime:g}x real time"
            )
        try:
            samples = self._decoder.decode(data)
        except AudioError as e:
            raise ProtocolError("bad_audio", str(e)) from None
        return self._push(samples, now)

    def _push(self, samples: np.ndarray, now: float, partial: bool = True) -> list[Action]:
        assert self._vad is not None
        self._buffer.append(samples)
        actions = self._events(self._vad.push(samples), now)
        if partial:
            actions += self._maybe_partial()
        opts = self.options.vad
        keep_from = self._vad.open_start
        if keep_from is None:
            keep_from = self._vad.position - opts.preroll_samples - opts.frame_samples
        self._buffer.trim_before(keep_from)
        if len(self._finals) > self.limits.max_pending_segments:
            # The server is behind, not the client at fault: 1013 tells it to retry later.
            raise ProtocolError(
                "limit",
                "the server is overloaded: too many segments waiting",
                CloseCode.TRY_AGAIN_LATER,
            )
        return actions

    def _stop(self, now: float) -> list[Action]:
        assert self._decoder is not None and self._vad is not None
        # No partial: finish() closes the open segment right after, which would cancel it.
        actions = self._push(self._decoder.finish(), now, partial=False)
        actions += self._events(self._vad.finish(), now)
        self.state = "stopping"
        return actions + self._send_ready_finals(now)

    # -- segmentation events -> jobs and messages --------------------------------------------

    def _events(self, events: list[VadEvent], now: float) -> list[Action]:
        actions: list[Action] = []
        offset = self.options.offset_samples
        for event in events:
            if isinstance(event, SpeechStarted):
                actions.append(Send(SpeechStart(event.index, seconds(offset + event.start))))
                self._open_index = event.index
                self._next_partial_at = event.start + self._partial_interval
            elif isinstance(event, EndpointCandidate):
                # Speculative final: computed now, sent the moment the endpoint is certain.
                job = self._job(event.index, "final", event.start, event.end)
                self._finals[event.index] = _Final(job)
                actions.append(Submit(job))
            elif isinstance(event, CandidateCancelled):
                final = self._finals.pop(event.index, None)
                if final is not None:
                    actions.append(Cancel(final.job))
            elif isinstance(event, SegmentClosed):
                actions += self._close_segment(event, now)
        return actions

    def _close_segment(self, event: SegmentClosed, now: float) -> list[Action]:
        actions: list[Action] = []
        span = event.span
        if self._on_segment_closed is not None:
            self._on_segment_closed(event.index, span)
        final = self._finals.get(event.index)
        if final is None or (final.job.start, final.job.end) != (span.start, span.end):
            if final is not None:
                actions.append(Cancel(final.job))
            final = _Final(self._job(event.index, "final", span.start, span.end))
            self._finals[event.index] = final
            actions.append(Submit(final.job))
        final.closed_at = now
        if self._partial is not None and self._partial.segment == event.index:
            actions.append(Cancel(self._partial))
            self._partial = None
        return actions + self._send_ready_finals(now)

    def _job(self, segment: int, kind: Literal["final", "partial"], start: int, end: int) -> Job:
        if kind == "final":
            self._charge_window()
        audio = self._buffer.slice(start, end)
        # Partials exist only with "partials": true; with text they carry the caption.
        text = self.options.text
        caption = self._captions.get(segment)
        # Every decoding of a segment continues its agreed caption, so the caption only
        # grows and the final text starts with the last one sent.
        prefix = caption.agreed if text and caption is not None else ()
        return Job(self.id, segment, kind, start, end, audio, text, self.options.language, prefix)

    def _charge_window(self) -> None:
        """Count one encoder window for a final job; too_fast once over the window budget.

        Every final costs a full 30 s window whatever its length (the encoder pads), so
        tiny segments (a tiny max_segment_s, flush after flush) cost far more per second of
        audio than speech does. Speculative finals count too: they run whether or not their
        endpoint holds. Partials do not: they yield to every final and are shed under load.
        """
        self.windows_used += 1
        rate, burst = self.limits.max_windows_per_s, self.limits.windows_burst
        if math.isinf(rate) or math.isinf(burst):
            return
        allowed = burst + rate * self.audio_seconds
        if self.windows_used > allowed:
            self.over_window_budget = True
            raise ProtocolError(
                "too_fast",
                f"segments cost more than {rate:g} encoder windows per second of audio "
                "(each segment costs one 30 s window): make them longer",
            )

    @property
    def _partial_interval(self) -> int:
        return self.options.partial_interval_ms * SAMPLE_RATE // 1000

    def _maybe_partial(self) -> list[Action]:
        start = self._vad.open_start
        position = self._vad.position
        if not self.options.partials or start is None or position < self._next_partial_at:
            return []
        if self._open_index in self._finals:
            return []  # a speculative final is computing: the segment is (probably) over
        self._next_partial_at = position + self._partial_interval
        job = self._job(self._open_index, "partial", start, position)
        self._partial = job
        return [Submit(job)]

    def _partial_done(self, job: Job, result: JobResult) -> list[Action]:
        if job is self._partial:
            self._partial = None
        # A superseded partial still counts while its segment is open and nothing newer was
        # sent: when the model is slower than partial_interval_ms, a newer partial is always
        # submitted before the older one's result arrives, and dropping those would mean no
        # partials at all under load.
        still_open = self._vad.open_start == job.start and self._open_index == job.segment
        if not still_open or job.end <= self._partial_sent_end:
            return []  # its segment has ended, or a newer partial was sent
        if result.tokens is None:
            return []  # partials are best effort; the final reports errors
        self._partial_sent_end = job.end
        offset = self.options.offset_samples
        start, end = seconds(offset + job.start), seconds(offset + job.end)
        text = self._caption_text(job, result) if job.text else None
        return [Send(Partial(job.segment, start, end, tuple(result.tokens), text))]

    def _caption_text(self, job: Job, result: JobResult) -> str:
        """The segment's caption after this partial's decoding (LocalAgreement)."""
        caption = self._captions.setdefault(job.segment, LocalAgreement())
        # Once the segment's final job exists (it may be speculative) its prefix is fixed:
        # growing the caption past it could show text the final text does not start with.
        decoded = result.text_tokens is not None and result.text_pieces is not None
        if decoded and job.segment not in self._finals:
            caption.update(result.text_tokens, result.text_pieces)
        return caption.text

    def _send_ready_finals(self, now: float) -> list[Action]:
        """Send finished segments strictly in segment order; done once nothing is left."""
        actions: list[Action] = []
        offset = self.options.offset_samples
        while (final := self._finals.get(self._next_to_send)) is not None:
            if final.closed_at is None or final.result is None:
                break
            del self._finals[self._next_to_send]
            self._captions.pop(self._next_to_send, None)
            job, result = final.job, final.result
            if result.tokens is not None:
                tokens = result.tokens
                llm = (
                    format_tokens(tokens, self.options.llm_format)
                    if self.options.llm_format
                    else None
                )
                message = Segment(
                    job.segment,
                    seconds(offset + job.start),
                    seconds(offset + job.end),
                    tuple(tokens),
                    result.text,
                    llm,
                    endpoint_ms=round((now - final.closed_at) * 1000, 3),
                )
                actions.append(Send(message))
                self.segments_sent += 1
            if result.error is not None:
                # Non-fatal: this segment (or its text) failed; the session goes on.
                actions.append(Send(ErrorMessage("internal", result.error, job.segment)))
            self._next_to_send += 1
        if self.state == "stopping" and not self._finals:
            self.state = "closed"
            actions += [
                Send(Done(self.segments_sent, round(self.audio_seconds, 6))),
                Close(CloseCode.NORMAL, "server shutting down" if self._draining else ""),
            ]
        return actions


def size_in_bytes(data: str | bytes, limit: int) -> int:
    """A message's size on the wire (text is UTF-8), or len(data) when even 4 bytes a
    character would stay within `limit`: then the exact size does not matter."""
    if not isinstance(data, str) or 4 * len(data) <= limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))
