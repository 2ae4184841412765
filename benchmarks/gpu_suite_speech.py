"""The GPU suite's speech, spoken once into a folder that can travel to a machine without
espeak-ng: DIR/tokenize/VOICE/*.wav (bench_precision's voices; bench_tokenize reads en-us)
and DIR/stream/*.wav (bench_stream's sentences and the bundled sample).

    python benchmarks/gpu_suite_speech.py DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import speech
from bench_precision import VOICES, spoken_clips

from ichigo_stream.assets import sample_path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(args[0])
    spoken_clips(VOICES, folder / "tokenize")  # written into the folder as they are spoken
    stream = folder / "stream"
    speech.spoken("stream", stream)
    shutil.copy(sample_path(), stream / "sample.wav")
    return 0


if __name__ == "__main__":
    sys.exit(main())
