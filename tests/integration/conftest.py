"""The tiny random model the servers, clients and benchmarks run (writing it needs torch).

The same checkpoint as model/conftest.py's, written again here: folders share no fixture
state, and the tiny model takes under a second to write.
"""

from __future__ import annotations

import pytest
from models import ModelFiles, tiny_model


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return tiny_model(tmp_path_factory.mktemp("models"))
