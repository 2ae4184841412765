"""ichigo_stream: turn live speech into Ichigo-Whisper tokens.

Importing this package never imports torch: the protocol, segmentation, token formats and
audio helpers need only numpy. The model side lives in ichigo_stream.model and
ichigo_stream.checkpoint (install the ``model`` extra).
"""

from __future__ import annotations

from .errors import (
    AudioError,
    IchigoStreamError,
    ModelLoadError,
    SegmentationError,
    TokenFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "IchigoStreamError",
    "ModelLoadError",
    "SegmentationError",
    "TokenFormatError",
    "__version__",
]
