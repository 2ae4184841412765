"""Data files shipped with the package, reached through importlib.resources."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

SAMPLE_NAME = "sample.wav"  # three espeak-ng sentences with pauses, 16 kHz mono PCM16


def sample_path() -> Path:
    """The bundled speech sample as a path on disk.

    setuptools installs the package as plain files, so as_file() returns the file itself; a
    zipped install would extract it to a temporary file that lives as long as the process.
    """
    resource = files(__name__) / SAMPLE_NAME
    if isinstance(resource, Path):
        return resource
    _keep.append(as_file(resource))
    return _keep[-1].__enter__()


_keep: list = []
