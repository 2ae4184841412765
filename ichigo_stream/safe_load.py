"""torch.load for checkpoint files that never runs code from the file.

A checkpoint is a pickle, and a pickle names Python callables (GLOBAL) that the loader calls
(REDUCE, NEWOBJ, BUILD). Lightning and reference-saved files name more than tensors: callback
and hyper-parameter classes (`lightning.pytorch.callbacks...`, `ichigo_asr.config.vq_config.
VQConfig`, `pathlib.PosixPath`), often from packages that are not installed here. We need
their tensors, never those objects.

Design, and why:
1. Every file is first read with ``torch.load(weights_only=True)``: torch's own pickle
   interpreter (torch/_weights_only_unpickler.py), which calls nothing but an allowlist of
   tensor/storage/dtype/collections rebuild functions and checks every opcode's target
   (REDUCE only on allowlisted callables, BUILD and NEWOBJ only on allowlisted types,
   SETITEMS only on dicts). Plain state-dict files stop here.
2. If it refuses, the file's pickle is scanned statically (torch's
   ``get_unsafe_globals_in_checkpoint``: opcodes are read, none run) for the names it refused.
   Each unknown name gets a fresh `StandIn` subclass: an inert class that records its name and
   whatever arguments and state the pickle gives it, and does nothing else (no __getattr__,
   no __call__ side effects, no imports). The same interpreter then reads the file again with
   those stand-ins allowlisted under their exact names (``torch.serialization.safe_globals``
   accepts ``(object, "module.name")`` pairs for this purpose). So torch's checks stay the
   only thing that executes the pickle; we only add named, harmless callables. Nothing from
   the file is ever imported or called, so a malicious file cannot run code.
3. No full-unpickle fallback exists anywhere: a file the restricted interpreter still cannot
   read (a dict subclass filled by SETITEMS, pickle protocols above 2, the pre-1.6 file
   format with Python objects) is refused with a ModelLoadError.

We chose this over a custom ``pickle_module`` (a ``pickle.Unpickler`` subclass whose
find_class maps unknown names to stand-ins): that would put the full C unpickler, with every
opcode of every protocol, behind our one find_class check instead of torch's per-opcode checks.

Names from modules whose only use in a pickle is to run code (os, subprocess, builtins, ...)
are refused outright with a message saying so, rather than loading as stand-ins: a checkpoint
never needs them, and such a file is likely malicious. That list is for a clear message only;
safety does not depend on it, since every stand-in is inert.

torch keeps its allowlist in a process-wide set: loads that add stand-ins hold a lock, and a
torch.load running meanwhile in another thread could at worst see inert stand-ins too.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

# Modules whose callables, named in a pickle, exist to run code or touch the system. The
# Python 2 names count too: protocol 2 writes subprocess as "commands", builtins as
# "__builtin__" (pickle's fix_imports).
CODE_RUNNING_MODULES = frozenset(
    {
        "__builtin__",
        "_io",
        "_pickle",
        "_posixsubprocess",
        "_socket",
        "_thread",
        "asyncio",
        "bdb",
        "builtins",
        "code",
        "codeop",
        "commands",
        "ctypes",
        "functools",
        "importlib",
        "io",
        "marshal",
        "multiprocessing",
        "nt",
        "operator",
        "os",
        "pdb",
        "pickle",
        "posix",
        "pty",
        "runpy",
        "shutil",
        "signal",
        "socket",
        "subprocess",
        "sys",
        "thread",
        "threading",
        "types",
        "webbrowser",
    }
)

_LOCK = threading.Lock()


class StandIn:
    """An object the file named by a class this process does not load: inert, records all.

    `global_name` is the "module.name" the file gave; `args`, `kwargs` and `state` are what
    the pickle passed to the constructor and to __setstate__ (for a dataclass, its fields).
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Called with the same arguments when the pickle calls the class (REDUCE); __new__
        # has recorded them.
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.global_name}>"


def stand_in_class(global_name: str) -> type[StandIn]:
    """A new StandIn subclass for one "module.name" of the file."""
    name = f"StandIn[{global_name}]"  # what torch's error messages will show
    namespace = {"global_name": global_name, "__module__": __name__, "__qualname__": name}
    return type(name, (StandIn,), namespace)


def runs_code(global_name: str) -> bool:
    module = global_name.partition(".")[0]
    return module in CODE_RUNNING_MODULES


def _weights_only(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _unknown_globals(path: Path) -> list[str] | None:
    """The names weights_only refuses, read without running the pickle; None if unreadable."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or opcodes the scanner does not know
        return None


def load_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """The object a torch.save file holds, its unknown classes as inert StandIn objects.

    Raises ModelLoadError for a file that names code-running callables or holds objects the
    restricted interpreter cannot rebuild; other errors (no such file, not a checkpoint at
    all) propagate as torch.load raises them, for the caller to describe.
    """
    path = Path(path)
    try:
        return _weights_only(path)
    except pickle.UnpicklingError as refused:
        names = _unknown_globals(path)
        if not names:
            # Refused for another reason than unknown names (or not a zip checkpoint).
            raise _cannot_rebuild(path, refused) from None
    dangerous = [name for name in names if runs_code(name)]
    if dangerous:
        raise ModelLoadError(
            f"{path} refused: its pickle asks to call {', '.join(dangerous)} when loaded. A "
            "checkpoint never needs that, so the file may be malicious; nothing from it was run"
        )
    stand_ins = [(stand_in_class(name), name) for name in names]
    with _LOCK, torch.serialization.safe_globals(stand_ins):
        try:
            return _weights_only(path)
        except pickle.UnpicklingError as e:
            raise _cannot_rebuild(path, e) from None


def _cannot_rebuild(path: Path, error: Exception) -> Exception:
    """A refusal of the restricted interpreter as a ModelLoadError naming torch's reason."""
    with open(path, "rb") as f:
        if not torch.serialization._is_zipfile(f):
            return error  # not a torch.save zip at all: the caller says what the file is not
    # torch wraps its interpreter's own error (raised `from None`, kept as __context__) in a
    # long message that suggests weights_only=False; the inner one says what was refused.
    inner = error.__context__ if isinstance(error.__context__, Exception) else error
    reason = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return ModelLoadError(
        f"{path} holds Python objects that cannot be rebuilt without running code from the "
        f"file ({reason}); checkpoints are only read with PyTorch's weights-only unpickler "
        "plus inert stand-ins for unknown classes"
    )
