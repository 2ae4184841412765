"""The one exception hierarchy of ichigo_stream: every error the library raises on purpose."""

from __future__ import annotations


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
