"""The one exception hierarchy of ichigo_stream: every error the library raises on purpose."""

from __future__ import annotations

from enum import IntEnum
from typing import Literal


class IchigoStreamError(Exception):
    """Base class: catch this to handle any expected failure of the library."""


class AudioError(IchigoStreamError):
    """An audio input cannot be read or used (missing, empty, corrupt, not audio)."""


class SegmentationError(IchigoStreamError):
    """Audio cannot be cut into model windows as asked (e.g. over 30 s with segment mode none)."""


class ModelLoadError(IchigoStreamError):
    """A checkpoint or Whisper model cannot be found, fetched or understood."""


class TokenFormatError(IchigoStreamError):
    """A token list or token text is malformed."""


class ClientError(IchigoStreamError):
    """The stream cannot go on: see the subclasses."""


class RemoteError(ClientError):
    """An error the server reported (its `error` message's code and text) that ended the
    stream because retrying would not fix it: the request itself was refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.message = message


class AuthenticationError(RemoteError):
    """The server refused the token (HTTP 401/403) or the Origin."""


class ConnectionLost(ClientError):
    """The connection was lost and the reconnect policy gave up (or forbids reconnecting)."""


# -- streaming protocol v1 ---------------------------------------------------------------------

ErrorCode = Literal[
    "bad_message",
    "bad_audio",
    "unsupported",
    "too_large",
    "too_fast",
    "limit",
    "unauthorized",
    "internal",
]


class CloseCode(IntEnum):
    """The WebSocket close codes protocol v1 uses (RFC 6455)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


# The close that follows a fatal error of each code (see docs/protocol.md).
CLOSE_FOR_ERROR: dict[str, CloseCode] = {
    "bad_message": CloseCode.UNSUPPORTED_DATA,
    "bad_audio": CloseCode.UNSUPPORTED_DATA,
    "unsupported": CloseCode.UNSUPPORTED_DATA,
    "too_large": CloseCode.MESSAGE_TOO_BIG,
    "too_fast": CloseCode.POLICY_VIOLATION,
    "limit": CloseCode.POLICY_VIOLATION,
    "unauthorized": CloseCode.POLICY_VIOLATION,
    "internal": CloseCode.INTERNAL_ERROR,
}


class ProtocolError(IchigoStreamError):
    """A client broke the protocol (or the server must end a session): sent as an `error`
    message, then the connection closes with close_code. retry_after_ms: with a refusal for
    load (`limit`, 1013), how long the client should wait before it tries again."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        close: CloseCode | None = None,
        *,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close or CLOSE_FOR_ERROR[code]
        self.retry_after_ms = retry_after_ms
