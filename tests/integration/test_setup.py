"""The README's main-job command, as a new user runs it: `scripts/demo` in a clean clone.

It clones the committed tree (HEAD of this checkout: uncommitted changes are not in it), so
`scripts/setup` builds the clone's own `.venv` from nothing, with no network to the Hugging
Face hub (HF_HUB_OFFLINE, and an endpoint on a closed local port so any attempt fails fast).
Packages come from the package index as usual; pip's cache (and, on the project's machines,
the torch file on disk) makes the install take a few minutes rather than a download's time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]

# Installed by the test layer only (scripts/setup --test), never for the main job; triton is
# left out of every install (openai-whisper asks for it on Linux x86_64, useless on CPU).
NOT_FOR_THE_MAIN_JOB = ("triton", "pytest", "ruff", "matplotlib", "ichigo-asr", "sounddevice")


def offline_env() -> dict[str, str]:
    """This environment, without the venv this test runs in, and with no hub to reach."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if sys.prefix != sys.base_prefix:  # drop this venv's bin/ so `python3` is the system's
        venv_bin = str(Path(sys.prefix) / "bin")
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens
    return env


def run(
    command: list[str], cwd: Path, timeout: float, cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` in `cwd`, offline; with `cache` as the user's cache folder if given."""
    env = offline_env()
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_main_job_command_sets_up_a_venv_in_a_clean_clone_and_runs_the_demo(
    tmp_path: Path,
) -> None:
    git = require_tool("git", why="clones the checkout")
    checkout = tmp_path / "ichigo-stream"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(checkout)], check=True, timeout=120)

    setup = run(["bash", "scripts/setup"], checkout, timeout=1500)
    assert setup.returncode == 0, setup.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    # It said what it was doing, step by step (no minutes of silence).
    for step in ("making the virtual environment", "installing torch", "ready for the main job"):
        assert step in setup.stderr, setup.stderr

    installed = run([str(venv_python), "-m", "pip", "list", "--format=freeze"], checkout, 120)
    names = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in installed.stdout.split()
    }
    assert {"ichigo-stream", "torch", "openai-whisper", "huggingface-hub"} <= names
    assert not names & set(NOT_FOR_THE_MAIN_JOB), names & set(NOT_FOR_THE_MAIN_JOB)
    # Editable: the venv runs the clone's code.
    where = run(
        [str(venv_python), "-c", "import ichigo_stream; print(ichigo_stream.__file__)"],
        checkout,
        60,
    )
    assert Path(where.stdout.strip()).is_relative_to(checkout), where

    # A second run changes nothing and is quick (generous: it starts Python a few times).
    started = time.monotonic()
    again = run(["bash", "scripts/setup"], checkout, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "up to date for the main job" in again.stderr
    assert "installing" not in again.stderr
    assert time.monotonic() - started < 60

    # The documented offline path: built-in random weights, which --model random writes into
    # the user's cache folder (here the test's, not ~/.cache).
    demo_args = ["bash", "scripts/demo", "--model", "random", "--speed", "0"]
    demo = run(demo_args, checkout, 600, cache=tmp_path / "cache")
    assert demo.returncode == 0, demo.stderr
    segments = re.findall(r"^\[\s*[\d.]+ -\s*[\d.]+\] #(\d+)\s+(\d+) tokens", demo.stdout, re.M)
    # The bundled sample is three sentences with pauses: three segments, each with tokens,
    # each followed by its Ichigo LLM text.
    assert [int(index) for index, _ in segments] == [0, 1, 2], demo.stdout
    assert all(int(count) > 0 for _, count in segments)
    assert demo.stdout.count("<|sound_start|>") == 3
    assert "done: 3 segment(s)" in demo.stdout
    assert "up to date for the main job" in demo.stderr
