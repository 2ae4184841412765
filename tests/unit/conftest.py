"""The torch-free folder: its tests run where only the base install is (no torch, no whisper).

A session that runs only this folder fails if anything imported the model side, at module
level or in a fixture; test_torch_free.py checks the module-level imports in any environment.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The model side: none of these may load while the torch-free tests run.
MODEL_MODULES = ("torch", "torchaudio", "whisper", "ichigo_asr", "models")


def model_modules_loaded() -> list[str]:
    return [name for name in MODEL_MODULES if name in sys.modules]


@pytest.fixture(scope="session", autouse=True)
def nothing_imports_the_model_side(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    only_unit = all(HERE in Path(item.path).parents for item in request.session.items)
    loaded = model_modules_loaded()
    if only_unit and loaded:
        pytest.fail(f"the torch-free tests imported {', '.join(loaded)}", pytrace=False)
