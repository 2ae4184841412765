"""The one policy for a system program a test needs (espeak-ng, sox, ffmpeg, chromium, node...).

Missing in CI (the `CI` environment variable set, as `.ci/run` and CI services set it), the
test fails: CI must run everything, and .ci/install installs every tool. Missing elsewhere, the
test is skipped with the reason, so a developer without, say, Chromium still runs the rest.
Every test that runs an external program finds it through `require_tool`.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

INSTALL_HINT = ".ci/install installs it"


def in_ci() -> bool:
    """True where a missing tool is an error: `CI` set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose system requirement `what` is absent."""
    if in_ci():
        pytest.fail(f"{what} (CI runs every test: {INSTALL_HINT})", pytrace=False)
    pytest.skip(f"{what}; {INSTALL_HINT}")


def require_tool(name: str, *alternatives: str, why: str = "") -> str:
    """The path of the program `name` (or the first of `alternatives` found), else `missing`."""
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path is not None:
            return path
    names = " or ".join((name, *alternatives))
    missing(f"needs {names}{f' ({why})' if why else ''}, which is not installed")


def require_tools(*names: str, why: str = "") -> None:
    """Every one of `names` must be installed (see `require_tool`)."""
    absent = [name for name in names if shutil.which(name) is None]
    if absent:
        missing(f"needs {', '.join(absent)}{f' ({why})' if why else ''}, not installed")
