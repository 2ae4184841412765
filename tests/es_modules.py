"""Run the page's ES modules under node: the JS side of the Python <-> JS agreement tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parents[1] / "server" / "static"


def run_with_node(
    node: str, tmp_path: Path, modules: dict[str, str], driver: str, data: Any
) -> Any:
    """Run `driver` (an ES module reading JSON `data` on stdin and printing JSON) beside copies
    of the static files `modules` names ({copy name: file in server/static}); its output."""
    for copy, name in modules.items():
        # An .mjs copy: node reads a .js file outside a "type": "module" package as CommonJS.
        (tmp_path / copy).write_text((STATIC / name).read_text())
    (tmp_path / "driver.mjs").write_text(driver)
    proc = subprocess.run(
        [node, "driver.mjs"],
        input=json.dumps(data),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
