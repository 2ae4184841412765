"""This folder's modules, and the conftest files above them, import nothing of the model side.

Checked in a fresh interpreter, so it holds in the full environment too (where torch is
installed and another folder's tests may already have imported it in this process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent
TESTS = UNIT.parent
# As in conftest.py (not imported from it: pytest loads every folder's conftest as `conftest`).
MODEL_MODULES = ("torch", "torchaudio", "whisper", "ichigo_asr", "models")

PROBE = """
import importlib.util, json, sys
tests, unit, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path[:0] = [tests, unit]  # as pytest's pythonpath and rootdir-relative imports do
for i, path in enumerate(json.loads(sys.argv[4])):
    spec = importlib.util.spec_from_file_location(f"probe{i}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
print(json.dumps([name for name in names if name in sys.modules]))
"""


def test_the_torch_free_folder_imports_no_model_module() -> None:
    files = [TESTS / "conftest.py", UNIT / "conftest.py", *sorted(UNIT.glob("test_*.py"))]
    assert len(files) > 10, files
    proc = subprocess.run(
        [
            *(sys.executable, "-c", PROBE, str(TESTS), str(UNIT)),
            *(json.dumps(MODEL_MODULES), json.dumps([str(f) for f in files])),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], proc.stdout
