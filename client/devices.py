"""Input devices for the microphone client: list them, find one by index or name, say why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ichigo_stream.errors import IchigoStreamError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "DeviceError",
    "InputDevice",
    "describe_devices",
    "find_device",
    "import_sounddevice",
    "input_devices",
]


class DeviceError(IchigoStreamError):
    """No usable input device: the message names the problem; the caller lists the devices."""


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int  # the most input channels it offers
    default_rate: float
    hostapi: str
    is_default: bool


def import_sounddevice() -> ModuleType:
    """sounddevice, or a DeviceError saying what to install (it loads PortAudio on import)."""
    try:
        import sounddevice
    except ImportError:
        raise DeviceError(
            "the microphone client needs sounddevice: pip install 'ichigo-stream[mic]'"
        ) from None
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        raise DeviceError(f"cannot load PortAudio ({e}): install libportaudio2") from None
    return sounddevice


def input_devices(sd: ModuleType) -> list[InputDevice]:
    try:
        default = sd.default.device[0]
        default = int(default) if default is not None else -1
    except (TypeError, ValueError, sd.PortAudioError):
        default = -1
    found = []
    for info in sd.query_devices():
        if info["max_input_channels"] < 1:
            continue
        try:
            hostapi = sd.query_hostapis(info["hostapi"])["name"]
        except Exception:  # a name is only decoration in the list
            hostapi = "?"
        found.append(
            InputDevice(
                index=info["index"],
                name=info["name"],
                channels=info["max_input_channels"],
                default_rate=float(info["default_samplerate"]),
                hostapi=hostapi,
                is_default=info["index"] == default,
            )
        )
    return found


def describe_devices(devices: Sequence[InputDevice]) -> str:
    if not devices:
        return (
            "input devices: none (is a microphone connected? On Linux: is PulseAudio or "
            "PipeWire running, and ALSA's pulse plugin installed?)"
        )
    width = max(len(d.name) for d in devices)
    lines = ["input devices (--device INDEX or NAME; * the default):"]
    for d in devices:
        mark = "*" if d.is_default else " "
        lines.append(
            f"{mark} {d.index:3d}  {d.name:<{width}}  {d.channels:2d} ch  "
            f"{d.default_rate:6.0f} Hz  {d.hostapi}"
        )
    return "\n".join(lines)


def find_device(devices: Sequence[InputDevice], spec: str | None) -> InputDevice:
    """--device -> one input device: an index, an exact name, or a unique part of a name."""
    if not devices:
        raise DeviceError("no input devices found")
    if spec is None:
        default = [d for d in devices if d.is_default]
        if not default:
            raise DeviceError("there is no default input device: choose one with --device")
        return default[0]
    if spec.strip().lstrip("-").isdigit():
        index = int(spec)
        for d in devices:
            if d.index == index:
                return d
        raise DeviceError(f"input device {index} not found (or it has no input channels)")
    wanted = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index} {d.name!r}" for d in partial)
        raise DeviceError(f"input device name {spec!r} is ambiguous: {names}; use the index")
    raise DeviceError(f"input device {spec!r} not found")
