"""`ichigo-stream --help` without the model side: building the parser imports no torch.

(The offline commands themselves run in model/test_cli.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, module: str = "ichigo_stream") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_help_is_light_and_documents_formats() -> None:
    code = "import sys, ichigo_stream.cli as c; c.build_parser(); print('torch' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert light.stdout.strip() == "False"
    top = run_cli("--help", module="ichigo_stream.cli")
    assert top.returncode == 0 and all(
        c in top.stdout for c in ("tokenize", "transcribe", "make-random-model")
    )
    sub = run_cli("tokenize", "--help")
    assert sub.returncode == 0 and "<|sound_start|>" in sub.stdout and "STEM-0.png" in sub.stdout
