"""The message-rate limit of one connection, sans-I/O: a token bucket fed by the clock given.

Any protocol's session counts each WebSocket message here before parsing it (ServerSession for
v1; the adapters of other protocols likewise), so a flood of tiny messages is cut off with
`too_fast` before it costs the server more than a counter.
"""

from __future__ import annotations

import math

from .errors import ProtocolError

# An empty binary message carries nothing and costs a loop turn all the same: it counts as
# this many messages (a flood of them is the cheapest to send).
EMPTY_MESSAGE_COST = 10


class MessageRate:
    """At most `per_second` messages a second, in bursts of one second's worth (the bucket
    starts full); inf: no limit."""

    def __init__(self, per_second: float, now: float) -> None:
        self.per_second = per_second
        self.burst = max(per_second, 1.0)
        self._tokens = self.burst
        self._at = now

    def count(self, size: int, now: float) -> None:
        """One message of `size` bytes at `now`; ProtocolError("too_fast") when over."""
        if math.isinf(self.per_second):
            return
        elapsed = max(0.0, now - self._at)  # a clock that steps back refills nothing
        self._at = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
        self._tokens -= EMPTY_MESSAGE_COST if size == 0 else 1
        if self._tokens < 0:
            raise ProtocolError("too_fast", f"more than {self.per_second:g} messages a second")
