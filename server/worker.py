"""The model worker: one thread owns the tokenizer and serves every session through a queue.

Jobs come from the event loop (submit/cancel, thread-safe and non-blocking); results go back
through a callback the caller makes loop-safe (call_soon_threadsafe). Scheduling (the waiting
jobs' policy is server.scheduler.WorkQueue):
- finals before partials, round-robin across sessions; a newer partial of a session
  replaces its queued older one;
- a batch of up to max_batch clips, waiting at most max_wait_s for it to fill;
- partials are shed first: they never share a batch with finals, run only when no final
  waits, in batches of at most max_batch // 4, and stale or superseded ones are dropped;
- the audio of waiting jobs is held within a byte budget (see WorkQueue);
- text (finals, and partials of captioning sessions) is decoded in batches of up to
  max_batch across sessions and languages, one batch between token batches, so no token
  work waits behind more than one text batch and token-only results never wait for text;
  partial text is shed like partial tokens (server/text_queue.py);
- a batch that raises is retried job by job, so a failing job fails alone.

Admission (server.admission): warm-up times a few batches and every batch served updates
the capacity (windows/s by batch size); every submission updates its session's demand.
admit() decides for a new session (and counts it), admission() reads the decision without
counting anyone (for /readyz and /metrics), session_closed() drops a session's demand.
When finals and partials together predict more than the capacity, partials are shed on
submission (finals never are: new sessions are refused instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ichigo_stream.actions import Job, JobResult
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.pipeline import clip_tokens
from ichigo_stream.text_decoding import DecodedText, TextRequest, decode_texts

from .admission import Admission, AdmissionControl, AdmissionOptions
from .capacity import WARM_UP_REPEATS, warm_up_sizes
from .metrics import WorkerStats
from .scheduler import QueueOptions, WorkQueue
from .text_queue import TextJob, TextQueue

log = logging.getLogger("ichigo_stream.worker")

ResultCallback = Callable[[Job, JobResult], None]


class ModelWorker:
    def __init__(
        self,
        tokenizer: IchigoTokenizer,
        on_result: ResultCallback,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        partial_max_age_s: float = 2.0,
        stall_timeout_s: float = 120.0,
        held_budget_bytes: float = float("inf"),
        max_text_tokens: int | None = None,
        admission: AdmissionOptions | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")  # else nothing runs
        self.tokenizer = tokenizer
        self.on_result = on_result
        self.max_text_tokens = max_text_tokens  # None: Whisper's sample_len
        self.max_batch = max_batch
        self.max_partial_batch = max(1, max_batch // 4)
        self.max_wait_s = max_wait_s
        self.partial_max_age_s = partial_max_age_s
        self.stall_timeout_s = stall_timeout_s
        self.stats = WorkerStats()
        self._cond = threading.Condition()
        self.held_budget_bytes = held_budget_bytes
        self._queue = WorkQueue(
            QueueOptions(max_batch, self.max_partial_batch, partial_max_age_s, held_budget_bytes)
        )
        self._texts = TextQueue()
        self._text_partials_shed = 0  # partial text jobs dropped (the queue counts its own)
        self._admission = AdmissionControl(max_batch, admission)
        self._capacity_partials_shed = 0  # partials dropped on submission for capacity
        self._stopping = False
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="ichigo-model-worker", daemon=True)

    # -- event-loop side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.request_stop()
        self._thread.join(timeout)

    def request_stop(self) -> None:
        """Ask the thread to stop after its current batch; returns at once (see alive)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats_snapshot(self) -> WorkerStats:
        """A consistent copy of the stats: no batch is half counted in it."""
        with self._cond:
            return replace(self.stats, batch_size=self.stats.batch_size.copy())

    def submit(self, job: Job) -> list[str]:
        """Queue a job; returns the sessions whose waiting jobs were dropped to keep the held
        audio within its budget: the caller must fail them (`limit`, 1013)."""
        with self._cond:
            now = time.monotonic()
            self._admission.submitted(job.session, job.kind, now)
            if job.kind == "partial" and not self._admission.take_partial(now):
                self._capacity_partials_shed += 1
                self._count_queue()
                return []
            evicted = self._queue.add(job, now)
            self._count_queue()
            self._cond.notify()
            return evicted

    def cancel(self, job: Job) -> None:
        """Drop a job that has not run; one that is running finishes and its result is ignored."""
        with self._cond:
            if not self._queue.remove(job):
                self._texts.cancel(job)
            self._count_queue()

    def _count_queue(self) -> None:
        """Copy the queue's counts into the stats (under the lock)."""
        self.stats.partials_shed = (
            self._queue.partials_shed + self._text_partials_shed + self._capacity_partials_shed
        )
        self.stats.held_bytes = self._queue.held_bytes
        self.stats.sessions_evicted = self._queue.sessions_evicted

    @property
    def admits_sessions(self) -> bool:
        """False while waiting audio fills most of its budget: new sessions are refused."""
        with self._cond:
            return self._queue.admits_sessions

    def admission(self) -> Admission:
        """Whether a new session would be admitted now, and the numbers behind it."""
        with self._cond:
            return self._admission.decide(time.monotonic())

    def admit(self, session_id: str) -> Admission:
        """Decide for a new session; if admitted, its predicted demand counts from now."""
        with self._cond:
            return self._admission.admit(session_id, time.monotonic())

    def session_closed(self, session_id: str) -> None:
        """The session is over: its demand stops counting at once."""
        with self._cond:
            self._admission.closed(session_id)

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._texts)

    def healthy(self) -> bool:
        """Alive, and not stuck in one model call for longer than stall_timeout_s."""
        busy_since = self._busy_since
        stalled = busy_since is not None and time.monotonic() - busy_since > self.stall_timeout_s
        return self._thread.is_alive() and not stalled

    def warm_up(self, text: bool = False) -> None:
        """One real batch before serving, so the first client does not pay for lazy init.

        Model work on the calling thread: call it off the event loop (running_server does).
        """
        silence = np.zeros(16_000, dtype=np.float32)
        tokens = clip_tokens(self.tokenizer, [silence] * min(2, self.max_batch))
        # The capacity: timed batches at both ends of the batch sizes (server.capacity).
        for size in warm_up_sizes(self.max_batch):
            for _ in range(WARM_UP_REPEATS):
                started = time.perf_counter()
                clip_tokens(self.tokenizer, [silence] * size)
                seconds = time.perf_counter() - started
                with self._cond:
                    self._admission.batch_done(size, seconds)
        if text and self.tokenizer.has_text_model:
            decode_texts(self.tokenizer, [TextRequest(tokens[0])], sample_len=self.max_text_tokens)

    # -- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._texts or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    return
                finals = self._queue.final_count
                if finals and finals < self.max_batch and not self._texts:
                    # Give concurrent endpoints a moment to share this batch.
                    self._cond.wait(self.max_wait_s)
                batch = self._queue.take_batch(time.monotonic())
                texts = self._take_texts()
                self._count_queue()
            if batch:
                self._run_batch(batch)
            if texts:
                self._run_texts(texts)

    def _quantize(self, jobs: Sequence[Job]) -> list[list[int]]:
        self._busy_since = started = time.monotonic()
        try:
            tokens = clip_tokens(self.tokenizer, [job.audio for job in jobs])
        finally:
            self._busy_since = None
        seconds = time.monotonic() - started
        with self._cond:
            self._admission.batch_done(len(jobs), seconds)
        return tokens

    def _run_batch(self, batch: list[Job]) -> None:
        with self._cond:
            self.stats.batch_size.observe(len(batch))
        try:
            results = list(zip(batch, self._quantize(batch), strict=True))
        except Exception:
            log.exception("batch of %d failed; retrying its jobs one by one", len(batch))
            results = []
            for job in batch:
                try:
                    results.append((job, self._quantize([job])[0]))
                except Exception as e:
                    log.exception("job %s/%s failed", job.session, job.segment)
                    with self._cond:
                        self.stats.jobs_failed += 1
                    self.on_result(job, JobResult(error=f"model failed on this segment: {e}"))
        for job, tokens in results:
            with self._cond:
                self.stats.jobs_done += 1
                if job.text:
                    self._text_partials_shed += self._texts.add(job, tokens, time.monotonic())
                    self._count_queue()
            if not job.text:
                self.on_result(job, JobResult(tokens=tokens))

    def _take_texts(self) -> list[TextJob]:
        """The next text batch (called under the lock)."""
        batch, shed = self._texts.take(self.max_batch, time.monotonic(), self.partial_max_age_s)
        self._text_partials_shed += shed
        return batch

    def _decode(self, batch: Sequence[TextJob]) -> list[DecodedText]:
        self._busy_since = time.monotonic()
        try:
            requests = [
                TextRequest(item.tokens, item.job.language, item.job.text_prefix) for item in batch
            ]
            return decode_texts(self.tokenizer, requests, sample_len=self.max_text_tokens)
        finally:
            self._busy_since = None

    def _run_texts(self, batch: list[TextJob]) -> None:
        """One decoder batch; a batch that raises is retried item by item, so a failing
        item (an unknown language, say) fails alone."""
        try:
            decoded: list[DecodedText | Exception] = list(self._decode(batch))
        except Exception:
            log.exception("text batch of %d failed; retrying its jobs one by one", len(batch))
            decoded = []
            for item in batch:
                try:
                    decoded.append(self._decode([item])[0])
                except Exception as e:
                    job = item.job
                    log.exception("text decoding failed for %s/%s", job.session, job.segment)
                    decoded.append(e)
        for item, out in zip(batch, decoded, strict=True):
            if isinstance(out, Exception):
                result = JobResult(tokens=item.tokens, error=f"text decoding failed: {out}")
            else:
                with self._cond:
                    self.stats.texts_decoded += 1
                result = JobResult(
                    tokens=item.tokens,
                    text=out.text,
                    text_tokens=out.text_tokens,
                    text_pieces=out.pieces,
                )
            self.on_result(item.job, result)
