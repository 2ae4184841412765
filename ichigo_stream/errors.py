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
