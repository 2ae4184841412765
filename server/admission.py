"""Admission control: predicted demand (windows/s) against capacity; who gets in, what is shed.

Thread-free and clock-free (the caller passes `now`): the model worker owns one
AdmissionControl and calls it under its lock; tests drive it directly.

Demand. Each session's windows/s is estimated from its own submissions, finals and partials
apart: an exponentially weighted count with time constant `time_constant_s`, divided by the
time it has been observed, at least `min_observed_s` (bias-corrected, so a session speaking
for one second is not read as a tenth of its rate). A session just admitted has submitted
nothing yet: until its first final (at most `pledge_max_s`: one segment can take no longer),
it counts at the newcomer's rate, or more if its own submissions say so. The newcomer's
rate is the mean finals rate of the sessions speaking now, or `prior_windows_per_s` when none
does (an empty server: one segment per 3 s of speech).

Decision. A new session is admitted while the predicted finals demand, the newcomer's
included, fits within `headroom` x capacity (server.capacity, at the largest batch the
sessions can fill); the rest of the capacity absorbs estimation error and bursts. Otherwise
it is refused with a retry_after_ms: the time the demand estimate would take to fall far
enough for a newcomer to fit, were the load to ease now (clamped to [min_retry_s,
max_retry_s]). Partials are best effort and shed first: when finals and partials together
predict more than the capacity, only the share of partials that fits is accepted (the others
are dropped on submission, spread evenly); finals are never dropped here, new sessions are
refused instead.

Floor. With fewer than `min_sessions` open, a new session is admitted whatever the
prediction: at a handful of sessions the estimates are noise (a test's unpaced burst of three
segments reads as a second's worth of windows), refusing the second session of a server
protects nobody much, and each session's own cost is bounded by its window budget
(--max-windows-per-s). The decision for the sessions past the floor is the prediction's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .capacity import Capacity

# A session whose finals rate is below this is silent, not speaking: it does not pull the
# newcomer's predicted rate down (windows/s: one final a minute).
SPEAKING_MIN = 1 / 60
# How often the partial share is recomputed (it is an O(sessions) sum; partials come often).
PARTIAL_SHARE_REFRESH_S = 0.25
# A session with no submission for this many time constants weighs nothing (e^-10): it is
# forgotten (one still open is added back, as new, by its next submission).
FORGET_AFTER_TAUS = 10


@dataclass(frozen=True)
class AdmissionOptions:
    headroom: float = 0.8  # share of the capacity predicted finals may use
    time_constant_s: float = 5.0  # of each session's demand estimate
    prior_windows_per_s: float = 1 / 3  # a newcomer's rate when no session speaks
    min_observed_s: float = 3.0  # a session's rate is its submissions over at least this
    # Until its first final, at most this long, a session counts at the newcomer's rate: a
    # segment ends within 30 s (one Whisper window), lead-in silence and all.
    pledge_max_s: float = 35.0
    min_sessions: int = 4  # admitted whatever the prediction while fewer are open
    min_retry_s: float = 1.0
    max_retry_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.headroom > 0:
            raise ValueError(f"headroom must be > 0, got {self.headroom}")
        if not (self.time_constant_s > 0 and self.prior_windows_per_s > 0):
            raise ValueError("time_constant_s and prior_windows_per_s must be > 0")
        if not (self.min_observed_s > 0 and self.pledge_max_s >= 0):
            raise ValueError("min_observed_s must be > 0 and pledge_max_s >= 0")
        if self.min_sessions < 0:
            raise ValueError(f"min_sessions must be >= 0, got {self.min_sessions}")
        if not 0 < self.min_retry_s <= self.max_retry_s:
            raise ValueError("need 0 < min_retry_s <= max_retry_s")


@dataclass(frozen=True)
class Admission:
    """The server's answer for a new session now, and the numbers behind it (windows/s).

    Small and frozen: cheap to copy across processes (a worker proxy may cache one and
    count its own newcomers against it: see with_newcomer)."""

    admits: bool
    retry_after_ms: int | None  # when refused: wait at least this long before retrying
    capacity: float  # windows/s the model sustains at the batch size the load allows
    demand_finals: float  # predicted windows/s of the open sessions' finals
    demand_partials: float  # and of their partials
    newcomer: float  # predicted windows/s of one more session's finals
    headroom: float

    @property
    def saturated(self) -> bool:
        """No room for one more session: /readyz says 503."""
        return not self.admits

    def with_newcomer(self) -> Admission:
        """The answer after one more session is admitted on this one (before fresh numbers)."""
        demand = self.demand_finals + self.newcomer
        return _decide(self.capacity, demand, self.demand_partials, self.newcomer, self.headroom)


def _decide(
    capacity: float,
    finals: float,
    partials: float,
    newcomer: float,
    headroom: float,
    time_constant_s: float = AdmissionOptions.time_constant_s,
    min_retry_s: float = AdmissionOptions.min_retry_s,
    max_retry_s: float = AdmissionOptions.max_retry_s,
) -> Admission:
    allowed = headroom * capacity
    admits = finals + newcomer <= allowed
    retry_after_ms = None
    if not admits:
        # Demand decays as exp(-t / tau) once sessions stop: time for it to reach the room
        # a newcomer needs. No room at all (a newcomer alone is over): the longest wait.
        room = allowed - newcomer
        wait = time_constant_s * math.log(finals / room) if room > 0 else max_retry_s
        retry_after_ms = round(1000 * min(max_retry_s, max(min_retry_s, wait)))
    return Admission(admits, retry_after_ms, capacity, finals, partials, newcomer, headroom)


class _SessionDemand:
    """One session's submissions, finals and partials, as decayed counts."""

    __slots__ = ("admitted_at", "counts", "has_final", "last_submitted_at", "updated_at")

    def __init__(self, now: float) -> None:
        self.admitted_at = now
        self.has_final = False
        self.updated_at = now
        self.last_submitted_at = now
        self.counts = [0.0, 0.0]  # finals, partials: exponentially decayed

    def decay_to(self, now: float, tau: float) -> None:
        if now > self.updated_at:
            factor = math.exp(-(now - self.updated_at) / tau)
            self.counts[0] *= factor
            self.counts[1] *= factor
            self.updated_at = now

    def rates(self, now: float, options: AdmissionOptions) -> tuple[float, float]:
        """(finals, partials) windows/s, bias-corrected for how long it has been observed."""
        tau = options.time_constant_s
        self.decay_to(now, tau)
        observed = max(now - self.admitted_at, options.min_observed_s)
        window = tau * -math.expm1(-observed / tau)  # tau * (1 - exp(-observed / tau))
        return self.counts[0] / window, self.counts[1] / window


class AdmissionControl:
    """Capacity (measured by the worker), each open session's demand, and the decisions."""

    def __init__(self, max_batch: int, options: AdmissionOptions | None = None) -> None:
        self.options = options or AdmissionOptions()
        self.capacity = Capacity(max_batch)
        self._sessions: dict[str, _SessionDemand] = {}
        self._partial_share = 1.0
        self._partial_share_at = -math.inf
        self._partial_credit = 0.0

    # -- what happens ----------------------------------------------------------------------

    def batch_done(self, size: int, seconds: float) -> None:
        self.capacity.observe(size, seconds)

    def submitted(self, session: str, kind: Literal["final", "partial"], now: float) -> None:
        """A job of `session` was submitted (a session never admitted here is added)."""
        demand = self._sessions.get(session)
        if demand is None:
            demand = self._sessions[session] = _SessionDemand(now)
        demand.decay_to(now, self.options.time_constant_s)
        demand.counts[kind == "partial"] += 1.0
        demand.has_final |= kind == "final"
        demand.last_submitted_at = now

    def closed(self, session: str) -> None:
        """The session is over: its demand goes at once."""
        self._sessions.pop(session, None)

    # -- decisions -------------------------------------------------------------------------

    def decide(self, now: float) -> Admission:
        """Whether one more session fits now (nothing is recorded)."""
        finals = partials = speaking_sum = 0.0
        speaking = 0
        rates = []
        forget_s = FORGET_AFTER_TAUS * self.options.time_constant_s
        for session, demand in list(self._sessions.items()):
            if now - demand.last_submitted_at > forget_s:
                del self._sessions[session]
                continue
            f, p = demand.rates(now, self.options)
            pledged = not demand.has_final and now - demand.admitted_at < self.options.pledge_max_s
            rates.append((f, p, pledged))
            if f >= SPEAKING_MIN:
                speaking_sum += f
                speaking += 1
        newcomer = speaking_sum / speaking if speaking else self.options.prior_windows_per_s
        for f, p, new in rates:
            finals += max(f, newcomer) if new else f
            partials += p
        # The largest batch the load can fill: one waiting final per session in turn.
        busy = sum(1 for f, _, new in rates if new or f >= SPEAKING_MIN) + 1
        capacity = self.capacity.windows_per_s(busy)
        o = self.options
        headroom = math.inf if len(self._sessions) < o.min_sessions else o.headroom
        return _decide(
            capacity,
            finals,
            partials,
            newcomer,
            headroom,
            o.time_constant_s,
            o.min_retry_s,
            o.max_retry_s,
        )

    def admit(self, session: str, now: float) -> Admission:
        """Decide for a new session, and count it (at the newcomer's rate) if admitted."""
        admission = self.decide(now)
        if admission.admits:
            self._sessions[session] = _SessionDemand(now)
        return admission

    def take_partial(self, now: float) -> bool:
        """Whether a partial submitted now runs (True) or is shed: when finals and partials
        predict more than the capacity, only the share that fits runs, spread evenly."""
        if now - self._partial_share_at >= PARTIAL_SHARE_REFRESH_S:
            self._partial_share_at = now
            self._partial_share = self.partial_share(self.decide(now))
        # An even spread: each partial adds the share; a whole unit of credit runs one.
        self._partial_credit = min(2.0, self._partial_credit + self._partial_share)
        if self._partial_credit >= 1.0 - 1e-9:
            self._partial_credit -= 1.0
            return True
        return False

    @staticmethod
    def partial_share(admission: Admission) -> float:
        """The share of the partials the capacity leaves room for once finals are served."""
        if admission.demand_partials <= 0 or math.isinf(admission.capacity):
            return 1.0
        room = admission.capacity - admission.demand_finals
        return max(0.0, min(1.0, room / admission.demand_partials))

    @property
    def sessions(self) -> int:
        return len(self._sessions)
