"""The front door: `import ichigo_stream` stays light, and its names are the library's own."""

from __future__ import annotations

import subprocess
import sys

import pytest
from models import ModelFiles

import ichigo_stream
from ichigo_stream.assets import sample_path
from ichigo_stream.loading import load_tokenizer
from ichigo_stream.options import LoadOptions


def test_importing_the_package_and_its_front_door_names_needs_no_torch() -> None:
    code = (
        "import sys, ichigo_stream as i; "
        "names = [getattr(i, n) for n in i.__all__]; "
        "bad = [m for m in ('torch', 'whisper') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_lazy_names_are_the_defining_modules_objects() -> None:
    from ichigo_stream import client, messages, pipeline

    assert ichigo_stream.stream is client.stream
    assert ichigo_stream.ClientOptions is client.ClientOptions
    assert ichigo_stream.tokenize_files is pipeline.tokenize_files
    assert ichigo_stream.Segment is messages.Segment
    assert set(ichigo_stream.__all__) <= set(dir(ichigo_stream))
    with pytest.raises(AttributeError):
        _ = ichigo_stream.no_such_name


def test_every_error_of_the_front_door_is_one_hierarchy() -> None:
    errors = [getattr(ichigo_stream, n) for n in ichigo_stream.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, ichigo_stream.IchigoStreamError) for e in errors)


def test_load_tokenizer_and_tokenize_files_from_the_front_door(
    tiny_model_files: ModelFiles,
) -> None:
    files = tiny_model_files
    tokenizer, info = ichigo_stream.load_tokenizer(str(files.quantizer), whisper=str(files.whisper))
    (result,) = ichigo_stream.tokenize_files([sample_path()], tokenizer)
    assert result.error is None and len(result.segments) == 3  # the sample's three sentences

    options = LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    same, same_info = load_tokenizer(options)
    (expected,) = ichigo_stream.tokenize_files([sample_path()], same)
    assert [s.tokens for s in result.segments] == [s.tokens for s in expected.segments]
    assert info == same_info
    # A whole LoadOptions works too; bad options fail before anything loads.
    assert ichigo_stream.load_tokenizer(options)[1] == info
    with pytest.raises(ichigo_stream.ModelLoadError):
        ichigo_stream.load_tokenizer(str(files.quantizer), device="tpu")
