"""The layering of the repository: imports run one way, and the wheel installs no generic names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
APPLICATIONS = ("ichigo_stream_server", "ichigo_stream_client")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_library_never_imports_the_applications() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] in APPLICATIONS
        )
        for path in _python_files("ichigo_stream")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_nothing_imports_server_or_client_as_top_level_packages() -> None:
    # They install as ichigo_stream_server / ichigo_stream_client; `import server` would work
    # from the checkout only (the repository root on sys.path) and fail when installed.
    files = _python_files("ichigo_stream", "server", "client", "tests", "benchmarks", "docs")
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] in ("server", "client")
        )
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_benchmarks_do_not_reach_into_tests() -> None:
    for path in _python_files("benchmarks"):
        assert "sys.path" not in path.read_text(), path


@pytest.mark.timeout(300)
def test_the_wheel_installs_only_namespaced_packages(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: setuptools writes build/ next to pyproject.toml,
    # and tests never write into the source tree.
    source = tmp_path / "src"
    tracked = (
        subprocess.run(
            [require_tool("git"), "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ichigo_stream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"ichigo_stream", *APPLICATIONS}
    assert "ichigo_stream/assets/sample.wav" in names
    assert "ichigo_stream_server/static/index.html" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("serve", "send", "demo", "mic"):
        assert f"{command} = ichigo_stream_" in text


def test_test_modules_have_unique_names() -> None:
    # The test folders are not packages (rootdir-relative imports): pytest imports each test
    # file by its basename, so two test_x.py in different folders fail collection.
    names = sorted(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
