"""Fixtures every folder may use, none of which imports torch: speech from espeak-ng, a place
for artifacts kept for humans, and the guard that no test writes into the source tree.

The model fixtures (random checkpoints) live in model/conftest.py and integration/conftest.py,
so the torch-free unit/ folder runs where torch is not installed (see tests/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from system_tools import require_tool

from ichigo_stream.constants import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
# Written by running Python and pytest themselves (or an editable install), not by tests.
ALLOWED_WRITES = ("__pycache__", ".pytest_cache", ".egg-info", ".venv", ".ruff_cache")
ARTIFACTS_VARIABLE = "ICHIGO_TEST_ARTIFACTS"

Speak = Callable[..., np.ndarray]


@pytest.fixture(scope="session")
def speak(tmp_path_factory: pytest.TempPathFactory) -> Speak:
    """speak(text, voice="en-us", wpm=175) -> float32 mono speech at SAMPLE_RATE, by espeak-ng.

    Cached per session; each call returns a fresh copy. espeak-ng is a test tool
    (system_tools: a missing one fails in CI and skips elsewhere).
    """
    folder = tmp_path_factory.mktemp("speak")
    cache: dict[tuple[str, str, int], np.ndarray] = {}

    def _speak(text: str, voice: str = "en-us", wpm: int = 175) -> np.ndarray:
        key = (text, voice, wpm)
        if key not in cache:
            espeak = require_tool("espeak-ng", why="test speech")
            wav = folder / f"speech{len(cache)}.wav"
            cmd = [espeak, "-v", voice, "-s", str(wpm), "-w", str(wav), text]
            subprocess.run(cmd, check=True, capture_output=True)
            raw, rate = sf.read(wav, dtype="float32")  # espeak-ng speaks at 22.05 kHz
            cache[key] = soxr.resample(raw, rate, SAMPLE_RATE).astype(np.float32)
        return cache[key].copy()

    return _speak


KeepArtifact = Callable[[Path], None]


@pytest.fixture
def keep_artifact(request: pytest.FixtureRequest) -> KeepArtifact:
    """keep_artifact(path): copy a file a human may want to look at (a screenshot, a terminal
    capture) into the folder $ICHIGO_TEST_ARTIFACTS names, as <test name>-<file name>.

    Tests write their files under tmp_path; without the variable nothing is copied, so the
    source tree never receives test output.
    """

    def keep(path: Path) -> None:
        folder = os.environ.get(ARTIFACTS_VARIABLE)
        if folder and path.is_file():
            target = Path(folder)
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / f"{request.node.name}-{path.name}")

    return keep


# -- no test writes into the source tree -----------------------------------------------------------


def _tree_state() -> set[str] | None:
    """`git status` of the checkout, ignored files included (an ignored folder is one line);
    None where this is no git checkout or git is missing (then nothing is checked)."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    return {
        line
        for line in proc.stdout.splitlines()
        if not any(part in line for part in ALLOWED_WRITES)
    }


@pytest.fixture(scope="session", autouse=True)
def source_tree_untouched() -> Iterator[None]:
    """Fails the session (as an error at the last test's teardown) when the tests changed the
    checkout: new or modified files outside ALLOWED_WRITES. Tests write under tmp_path."""
    before = _tree_state()
    yield
    after = _tree_state()
    if before is not None and after is not None and after - before:
        changed = "\n".join(sorted(after - before))
        pytest.fail(f"tests wrote into the source tree {ROOT}:\n{changed}", pytrace=False)
