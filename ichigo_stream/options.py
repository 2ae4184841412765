"""What model to load and how (LoadOptions), and the rules its fields follow.

Torch-free, so command-line parsing, the server's config and clients can use it. The command
line validates --device and --dtype with these same rules (cli_common's argparse types), so a
bad value reads the same whether it came from a flag, an ICHIGO_* variable or library code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ModelLoadError

DEFAULT_MODEL = "homebrewltd/ichigo-whisper:merge-medium-vi-2d-2560c-dim64.pth"
# --model random: built-in random weights in the real formats, written once to a cache folder
# (ichigo_stream.random_model); for trying the pipeline offline, never for real tokens.
RANDOM_MODEL = "random"
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # encoder precisions (loading.DTYPES maps them)
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DEVICE_RULE = "cpu, cuda or cuda:N"
# How the encoder runs its batches (ichigo_stream.fixed_shape): none: as they come; buckets:
# padded to a few fixed batch sizes; graphs: those shapes captured as CUDA graphs (CUDA only);
# inductor: those shapes compiled by torch.compile (and, on CUDA, captured as graphs too).
COMPILE_MODES = ("none", "buckets", "graphs", "inductor")


def device_problem(device: object) -> str | None:
    """What a device name must be, or None if `device` is one we run on."""
    if isinstance(device, str) and DEVICE_PATTERN.fullmatch(device):
        return None
    return f"expected {DEVICE_RULE}"


def compile_problem(mode: object, device: object = None) -> str | None:
    """What --compile must be (on this device, when given), or None if it can run there."""
    if not (isinstance(mode, str) and mode in COMPILE_MODES):
        return f"expected one of {', '.join(COMPILE_MODES)}"
    if mode == "graphs" and isinstance(device, str) and not device.startswith("cuda"):
        return "CUDA graphs need --device cuda (on CPU use buckets or inductor)"
    return None


def dtype_problem(dtype: object) -> str | None:
    """What an encoder precision must be, or None if `dtype` is one we know."""
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return None
    return f"expected one of {', '.join(DTYPE_NAMES)}"


@dataclass(frozen=True)
class LoadOptions:
    """Which checkpoints to load, onto which device, at which encoder precision, and how
    the encoder runs its batches.

    Plain values only: LoadOptions never reads the environment. The ICHIGO_* variables are
    read by the command line (ichigo_stream.config) and nowhere else, so a library user gets
    exactly the options written here. A device or dtype we cannot run raises ModelLoadError
    at construction, before anything is loaded; the message names the field by its flag.
    """

    model: str = DEFAULT_MODEL  # a local path, a Hugging Face REPO:FILE or RANDOM_MODEL
    whisper: str | None = None  # None: the Whisper the checkpoint was trained on
    device: str = "cpu"  # cpu, cuda or cuda:N
    dtype: str = "float32"  # one of DTYPE_NAMES
    compile: str = "none"  # one of COMPILE_MODES: fixed-shape encoder batches, tokens unchanged

    def __post_init__(self) -> None:
        for name, value, problem in (
            ("device", self.device, device_problem(self.device)),
            ("dtype", self.dtype, dtype_problem(self.dtype)),
            ("compile", self.compile, compile_problem(self.compile, self.device)),
        ):
            if problem is not None:
                raise ModelLoadError(f"--{name} {value!r}: {problem} (LoadOptions.{name})")
