"""Audio in: decode a file to mono float32 at 16 kHz, plus the conversions the server reuses.

Why not torchaudio: the PyPI torchaudio wheel is a CUDA build that does not import next to the
CPU-only torch this project installs. So files are decoded by soundfile (libsndfile: WAV, FLAC,
OGG, MP3, ...) and, for what libsndfile cannot read (m4a, webm, ...), by an ffmpeg subprocess
that keeps the native rate and channels. Down-mixing and resampling are always done here (numpy
and soxr), never by ffmpeg, so a file gives the same samples whichever decoder ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import soundfile as sf
import soxr

from .constants import SAMPLE_RATE
from .errors import AudioError

# soxr "HQ" (its default): linear phase, 20-bit precision, i.e. ~120 dB alias rejection. Whisper's
# log-mel clamps its range to 80 dB below the peak, so more ("VHQ", 28-bit) is invisible to the
# model and only costs the streaming server CPU.
RESAMPLE_QUALITY = "HQ"

PCM16_SCALE = 32768.0  # int16 <-> float: x / 2**15, as libsndfile and ffmpeg read it
PCM16_MIN, PCM16_MAX = -32768, 32767  # int16's range: float -> PCM16 clips to it
FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
FFMPEG_INSTALL_HINT = (
    "install ffmpeg (e.g. `apt-get install ffmpeg`, `brew install ffmpeg`, "
    "`conda install -c conda-forge ffmpeg`) and make sure it is on PATH"
)
EXPECTED = "an audio file (WAV, FLAC, OGG, MP3, or anything ffmpeg decodes)"


def _error(name: str, problem: str) -> AudioError:
    return AudioError(f"cannot load audio '{name}': {problem}")


def resample(x: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float audio (frames, or frames x channels) from from_rate to to_rate with soxr.

    For one whole signal. A stream that arrives in chunks needs StreamResampler: resampling
    each chunk alone would put edge artefacts at every seam.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    x = np.asarray(x, dtype=np.float32)
    if from_rate == to_rate or x.shape[0] == 0:
        return x
    return soxr.resample(x, from_rate, to_rate, quality=RESAMPLE_QUALITY)


def downmix(x: np.ndarray) -> np.ndarray:
    """Frames x channels -> mono float32 by averaging the channels; 1-D input is returned as is."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"expected audio of shape (frames,) or (frames, channels), got {x.shape}")
    if x.shape[1] == 1:
        return x[:, 0]
    # float64 accumulation so the mean does not depend on the channel order
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)


def pcm16_to_float32(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Little-endian 16-bit PCM bytes (or an int16 array) -> float32 in [-1, 1)."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise AudioError(f"expected int16 PCM samples, got dtype {pcm.dtype}")
        samples = pcm
    else:
        if len(pcm) % 2:
            raise AudioError(f"16-bit PCM needs an even number of bytes, got {len(pcm)}")
        samples = np.frombuffer(pcm, dtype="<i2")
    return samples.astype(np.float32) / np.float32(PCM16_SCALE)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Samples as int16: int16 passes through; floats are scaled by 2**15, rounded, clipped.

    The one float -> PCM16 rule of the project (the page's capture worklet mirrors it in
    floatToPcm16, tested to agree byte for byte): the value is taken as float32 first (the
    protocol's sample type), times 2**15 (exact), rounded half to even (np.rint), clipped to
    [-32768, 32767]. So PCM read as float (pcm16_to_float32) converts back to the same PCM,
    and +1.0 saturates at 32767. Non-finite samples are an AudioError: no value is right for
    them; a live source that can produce them cleans them first (silence_non_finite).
    """
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"expected float or int16 samples, got dtype {samples.dtype}")
    if not np.isfinite(samples).all():
        raise AudioError("cannot convert non-finite samples (NaN or inf) to 16-bit PCM")
    return finite_to_pcm16(samples)


def finite_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """to_pcm16's rule for float samples already known to be finite, in one working copy."""
    # A finite value beyond float32's range (or x * 2**15 beyond it) becomes +-inf here,
    # which clips like any other loud sample.
    with np.errstate(over="ignore"):
        scaled = samples.astype(np.float32)  # a copy: the steps below work in place
        scaled *= np.float32(PCM16_SCALE)
    np.rint(scaled, out=scaled)
    np.clip(scaled, PCM16_MIN, PCM16_MAX, out=scaled)
    return scaled.astype(np.int16)


def float32_to_pcm16(x: np.ndarray) -> bytes:
    """Float audio -> little-endian 16-bit PCM bytes by to_pcm16's rule (clipped, NaN refused).

    Uses the same 2**15 scale as pcm16_to_float32, so PCM -> float -> PCM is exact.
    """
    return to_pcm16(x).astype("<i2").tobytes()


def silence_non_finite(samples: np.ndarray) -> np.ndarray:
    """Float samples with every NaN or infinity replaced by 0.0 (silence); dtype kept.

    For live sources only (a microphone, the VAD's input): a broken driver can deliver a
    burst of NaN, and a live stream cannot be re-read, so the burst is heard as silence
    rather than ending the stream. It must happen before resampling: one NaN inside a
    resampler's filter state would spread over every output sample it touches. Files and
    API callers get an AudioError for the same samples instead (load_audio, to_pcm16).
    """
    x = np.asarray(samples)
    finite = np.isfinite(x)
    return x if finite.all() else np.where(finite, x, x.dtype.type(0))


class StreamResampler:
    """One live stream's mono float32 samples at `from_rate` -> `to_rate`, chunk by chunk.

    Stateful: one soxr stream for the whole stream, so its filter state carries across
    chunks and a stream cut into chunks anywhere resamples like one signal (resampling each
    chunk alone would restart the filter at every seam: clicks, and a fraction of a sample
    lost each time). Equal rates are passed through untouched (bit-exact).
    """

    def __init__(self, from_rate: int, to_rate: int = SAMPLE_RATE) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = (
            None
            if from_rate == to_rate
            else soxr.ResampleStream(
                from_rate, to_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        )
        self._flushed = False

    def push(self, mono: np.ndarray) -> np.ndarray:
        """The output samples this chunk completes (the filter holds back its look-ahead)."""
        if self._flushed:
            raise AudioError("push() after flush(): the stream has ended")
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """The end of the stream: the samples the filter still holds. Once."""
        if self._flushed:
            raise AudioError("flush() twice: the stream has already ended")
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _check_path(name: str) -> None:
    if not os.path.exists(name):
        raise _error(name, f"no such file; expected {EXPECTED}")
    if os.path.isdir(name):
        raise _error(name, f"it is a directory; expected {EXPECTED}")
    if os.path.getsize(name) == 0:
        raise _error(name, f"the file is empty (0 bytes); expected {EXPECTED}")


def check_audio_path(name: str) -> None:
    """The checks load_audio makes before decoding (exists, a file, not empty, readable):
    the CLI runs them on every input before it loads a model. Raises AudioError."""
    _check_path(name)
    try:
        with open(name, "rb"):
            pass
    except OSError as e:
        raise _error(name, f"{e.strerror or e}; expected {EXPECTED}") from None


def _positive_int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() and int(text) > 0 else None


def _undecodable(name: str, soundfile_problem: str, stderr: bytes, url: str) -> AudioError:
    """One message for both decoders' failures; ffmpeg's last line, without the file name."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    ffmpeg_problem = lines[-1].removeprefix(f"{url}: ") if lines else "no error message"
    return _error(
        name,
        f"not a readable audio file (libsndfile: {soundfile_problem}; ffmpeg: {ffmpeg_problem})",
    )


def _decode_with_ffmpeg(name: str, soundfile_problem: str) -> tuple[np.ndarray, int]:
    """Decode at the stream's own rate and channels; returns (frames x channels float32, rate)."""
    ffmpeg, ffprobe = shutil.which(FFMPEG), shutil.which(FFPROBE)
    if ffmpeg is None or ffprobe is None:
        raise _error(
            name,
            f"libsndfile cannot read it ({soundfile_problem}) and ffmpeg, needed for other "
            f"formats (mp3, m4a, webm, ...), is not installed: {FFMPEG_INSTALL_HINT}",
        )
    url = f"file:{name}"  # so a name with ':' is never taken for an ffmpeg protocol
    probe_cmd = [
        *(ffprobe, "-v", "error", "-select_streams", "a:0"),
        *("-show_entries", "stream=sample_rate,channels", "-of", "default=noprint_wrappers=1", url),
    ]
    probe = subprocess.run(probe_cmd, capture_output=True, check=False)
    if probe.returncode != 0:
        raise _undecodable(name, soundfile_problem, probe.stderr, url)
    fields = dict(
        line.split("=", 1) for line in probe.stdout.decode(errors="replace").split() if "=" in line
    )
    if not fields:
        raise _error(name, f"it has no audio stream; expected {EXPECTED}")
    rate, channels = (_positive_int(fields.get(key)) for key in ("sample_rate", "channels"))
    if rate is None or channels is None:
        raise _error(name, f"ffprobe gave no usable sample rate and channels: {fields}")
    # -ar/-ac repeat the stream's own values, so ffmpeg converts nothing: they only pin the
    # layout we reshape by, should the stream change mid-way
    decode_cmd = [
        *(ffmpeg, "-nostdin", "-v", "error", "-i", url, "-map", "0:a:0"),
        *("-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(rate), "-ac", str(channels), "-"),
    ]
    decode = subprocess.run(decode_cmd, capture_output=True, check=False)
    if decode.returncode != 0:
        raise _undecodable(name, soundfile_problem, decode.stderr, url)
    data = np.frombuffer(decode.stdout, dtype="<f4")
    data = data[: len(data) - len(data) % channels].reshape(-1, channels)
    return data.astype(np.float32), rate


def _decode(name: str) -> tuple[np.ndarray, int]:
    try:
        return sf.read(name, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:  # unknown format or corrupt: try ffmpeg
        problem = getattr(exc, "error_string", None) or str(exc)
    return _decode_with_ffmpeg(name, problem.rstrip("."))


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an audio file as mono float32 at SAMPLE_RATE (16 kHz); raises AudioError.

    A file whose audio data stops before its header says (an interrupted recording) gives the
    samples that are there, as ffmpeg and sox do; only a file no decoder can read is an error.
    """
    name = os.fspath(path)
    _check_path(name)
    data, rate = _decode(name)
    if data.shape[0] == 0:
        raise _error(name, "it contains no audio (0 frames); expected at least one sample")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise _error(name, f"{bad} samples are NaN or infinite; expected finite samples")
    return resample(downmix(data), rate)


PCM_DTYPES = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}


class PcmStreamDecoder:
    """Raw PCM messages of one live stream -> mono samples at 16 kHz.

    Stateful: its StreamResampler carries the filter state across messages, so a stream cut
    into messages anywhere resamples like one signal. 16 kHz input is not resampled at all
    (bit-exact with reading the same PCM from a file).

    Mono 16-bit PCM at 16 kHz is already what the VAD reads, so decode() returns it as an
    int16 view of the message (`pcm16_passthrough`): no copy, and no int16 -> float -> int16
    round trip on every message. Whoever needs floats reads it with pcm16_to_float32, which
    gives exactly the floats the float path would have. Every other format decodes to float32.
    """

    def __init__(self, sample_rate: int, encoding: str, channels: int) -> None:
        if encoding not in PCM_DTYPES:
            raise AudioError(f"unknown PCM encoding {encoding!r}: expected {list(PCM_DTYPES)}")
        self.dtype = PCM_DTYPES[encoding]
        self.channels = channels
        self.frame_bytes = self.dtype.itemsize * channels
        # (On a big-endian machine "<i2" is not the native int16: the float path then reads it.)
        self.pcm16_passthrough = (
            self.dtype == np.dtype(np.int16) and channels == 1 and sample_rate == SAMPLE_RATE
        )
        # What decode() returns: int16 (PCM passed through) or float32.
        self.output_dtype = np.dtype(np.int16) if self.pcm16_passthrough else np.dtype(np.float32)
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) % self.frame_bytes:
            raise AudioError(
                f"{len(data)} bytes is not a whole number of {self.frame_bytes}-byte frames "
                f"({self.dtype.itemsize * 8}-bit x {self.channels} channel(s))"
            )
        raw = np.frombuffer(data, dtype=self.dtype)
        if self.pcm16_passthrough:
            return raw  # a read-only view of the message's bytes
        if self.dtype.kind == "f":
            if not np.isfinite(raw).all():
                raise AudioError("audio contains NaN or infinite samples")
            samples = raw.astype(np.float32)
        else:
            samples = pcm16_to_float32(raw)
        return self._resampler.push(downmix(samples.reshape(-1, self.channels)))

    def finish(self) -> np.ndarray:
        """The resampler's tail at the end of the stream (none when nothing is resampled)."""
        return self._resampler.flush().astype(self.output_dtype, copy=False)
