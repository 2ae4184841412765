"""ichigo_stream.audio on real files made here with espeak-ng, sox, ffmpeg and soundfile."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from system_tools import require_tools

from ichigo_stream import audio
from ichigo_stream.audio import (
    PcmStreamDecoder,
    StreamResampler,
    downmix,
    float32_to_pcm16,
    load_audio,
    pcm16_to_float32,
    resample,
    silence_non_finite,
    to_pcm16,
)
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import AudioError

TOOLS = ("espeak-ng", "sox", "ffmpeg", "ffprobe")
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. One, two, three."


@pytest.fixture(autouse=True)
def _tools() -> None:
    # Every test here makes its audio with these, or reads through ffmpeg/ffprobe.
    require_tools(*TOOLS, why="to make and decode the test audio")


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def _ffmpeg(src: Path, dst: Path, *opts: str) -> Path:
    _run("ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, *opts, dst)
    return dst


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation at lag 0 over the common length."""
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """(path of a 16 kHz mono 16-bit speech WAV, its samples as float32): the reference."""
    folder = tmp_path_factory.mktemp("speech")
    raw = folder / "espeak.wav"  # espeak-ng speaks at 22.05 kHz
    _run("espeak-ng", "-w", raw, SPEECH_TEXT)
    wav16 = folder / "speech16.wav"
    _run("sox", raw, "-r", str(SAMPLE_RATE), "-b", "16", wav16)
    ref, rate = sf.read(wav16, dtype="float32")
    assert rate == SAMPLE_RATE and ref.ndim == 1 and len(ref) > SAMPLE_RATE
    return wav16, ref


def _refuse(*args: object, **kwargs: object) -> None:
    """Stands in for sf.read so that load_audio must take the ffmpeg path."""
    raise sf.SoundFileRuntimeError("Format not recognised.")


def _tone(rate: int, n: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)


# --- good files -----------------------------------------------------------------------------


def test_wav_16k_mono_is_exact(speech: tuple[Path, np.ndarray]) -> None:
    path, ref = speech
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(load_audio(str(path)), ref)


def test_float32_wav_is_exact_and_not_clipped(
    speech: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    _, ref = speech
    loud = ref * np.float32(3.0)  # past full scale: a float file must come back untouched
    path = tmp_path / "float.wav"
    sf.write(path, loud, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), loud)


def test_wav_44k_stereo_is_resampled_downmix(
    speech: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path16, ref = speech
    mono44 = tmp_path / "mono44.wav"
    _run("sox", path16, "-r", "44100", "-e", "floating-point", "-b", "32", mono44)
    left, rate = sf.read(mono44, dtype="float32")
    assert rate == 44100
    right = _tone(44100, len(left))
    stereo = tmp_path / "stereo44.wav"
    sf.write(stereo, np.column_stack([left, right]), 44100, subtype="FLOAT")

    out = load_audio(stereo)
    assert abs(len(out) - round(len(left) * SAMPLE_RATE / 44100)) <= 1
    # the average of the two channels, each resampled alone (the resampler is linear)
    sf.write(tmp_path / "right.wav", right, 44100, subtype="FLOAT")
    each = (load_audio(mono44) + load_audio(tmp_path / "right.wav")) / 2
    np.testing.assert_allclose(out, each, atol=1e-6)
    # and against the 16 kHz originals: speech through sox up and soxr down, tone by formula
    n = min(len(out), len(ref))
    expected = (ref[:n] + _tone(SAMPLE_RATE, n)) / 2
    assert _corr(out, expected) > 0.999
    assert _corr(out, ref) < 0.99  # not just the left channel


def test_flac_8k(speech: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path16, _ = speech
    flac = tmp_path / "speech8.flac"
    _run("sox", path16, "-r", "8000", flac)
    up = tmp_path / "up16.wav"  # reference: sox's own resampler, float output
    _run("sox", flac, "-r", str(SAMPLE_RATE), "-e", "floating-point", "-b", "32", up)
    ref_up, _ = sf.read(up, dtype="float32")
    out = load_audio(flac)
    assert len(out) == 2 * sf.info(flac).frames
    assert abs(len(out) - len(ref_up)) <= 1
    assert _corr(out, ref_up) > 0.9999


def test_ogg_vorbis_48k(speech: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path16, ref = speech
    ogg = tmp_path / "speech48.ogg"
    _run("sox", path16, "-r", "48000", ogg)
    assert sf.info(ogg).samplerate == 48000
    out = load_audio(ogg)
    assert abs(len(out) - len(ref)) <= 1
    assert _corr(out, ref) > 0.99


def test_mp3_same_whichever_decoder(
    speech: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path16, ref = speech
    mp3 = _ffmpeg(path16, tmp_path / "speech.mp3")
    out = load_audio(mp3)  # libsndfile >= 1.1 reads MP3 itself; older ones fall to ffmpeg
    assert abs(len(out) - len(ref)) <= 1
    assert _corr(out, ref) > 0.98
    monkeypatch.setattr(audio.sf, "read", _refuse)
    via_ffmpeg = load_audio(mp3)
    assert len(via_ffmpeg) == len(out)
    np.testing.assert_allclose(via_ffmpeg, out, atol=1e-4)


def test_lossless_wav_identical_through_ffmpeg(
    speech: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path16, _ = speech
    stereo = tmp_path / "stereo22.wav"
    _run("sox", "-M", path16, path16, "-r", "22050", "-b", "16", stereo)
    direct = load_audio(stereo)
    monkeypatch.setattr(audio.sf, "read", _refuse)
    np.testing.assert_array_equal(load_audio(stereo), direct)


@pytest.mark.parametrize(
    ("name", "opts"),
    [("speech.m4a", ("-c:a", "aac")), ("speech 48k:opus.webm", ("-c:a", "libopus"))],
)
def test_formats_only_ffmpeg_reads(
    speech: tuple[Path, np.ndarray], tmp_path: Path, name: str, opts: tuple[str, ...]
) -> None:
    path16, ref = speech
    encoded = _ffmpeg(path16, tmp_path / name, *opts)
    with pytest.raises(sf.SoundFileError):
        sf.info(encoded)
    out = load_audio(encoded)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(ref)) <= 1024  # AAC may keep a few priming samples
    assert _corr(out, ref) > 0.99


# --- bad inputs -----------------------------------------------------------------------------


def _load_error(path: Path) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in str(_load_error(tmp_path / "nope.wav"))


def test_directory(tmp_path: Path) -> None:
    assert "directory" in str(_load_error(tmp_path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty" in str(_load_error(path))


def test_wav_with_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    assert path.stat().st_size > 0
    assert "0 frames" in str(_load_error(path))


def test_truncated_header(speech: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "truncated.wav"
    path.write_bytes(speech[0].read_bytes()[:30])
    assert "not a readable audio file" in str(_load_error(path))


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    assert "not a readable audio file" in str(_load_error(path))


def test_text_file_named_wav_gives_one_message(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    err = _load_error(path)
    assert "libsndfile" in str(err) and "ffmpeg" in str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_video_without_audio(tmp_path: Path) -> None:
    video = tmp_path / "silent.mp4"
    _run("ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=0.2", video)
    assert "no audio stream" in str(_load_error(video))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    samples = np.zeros(1600, np.float32)
    samples[100] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    assert "NaN or infinite" in str(_load_error(path))


def test_ffmpeg_not_installed(
    speech: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m4a = _ffmpeg(speech[0], tmp_path / "speech.m4a")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    message = str(_load_error(m4a))
    assert "not installed" in message and "apt-get install ffmpeg" in message
    np.testing.assert_array_equal(load_audio(speech[0]), speech[1])  # WAV needs no ffmpeg


# --- helpers the server reuses -------------------------------------------------------------


def test_resample() -> None:
    x = np.sin(np.arange(44100) / 10).astype(np.float32)
    assert len(resample(x, 44100)) == SAMPLE_RATE
    assert resample(x, 44100).dtype == np.float32
    assert resample(x, 16000, 16000) is x
    assert resample(np.zeros((441, 2), np.float32), 44100, 8000).shape == (80, 2)
    with pytest.raises(AudioError):
        resample(x, 0)


def test_downmix() -> None:
    x = np.array([[1.0, 0.0], [0.5, -0.5], [0.25, 0.75]], np.float32)
    np.testing.assert_array_equal(downmix(x), np.array([0.5, 0.0, 0.5], np.float32))
    mono = np.ones(4, np.float32)
    assert downmix(mono) is mono
    np.testing.assert_array_equal(downmix(mono[:, None]), mono)
    with pytest.raises(AudioError):
        downmix(np.zeros((2, 2, 2), np.float32))


def test_pcm16_round_trip_and_clipping() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    as_float = pcm16_to_float32(every.astype("<i2").tobytes())
    assert as_float.dtype == np.float32 and as_float.min() == -1.0 and as_float.max() < 1.0
    np.testing.assert_array_equal(pcm16_to_float32(every), as_float)
    assert float32_to_pcm16(as_float) == every.astype("<i2").tobytes()
    clipped = np.frombuffer(float32_to_pcm16(np.array([1.5, -2.0, 0.5], np.float32)), "<i2")
    np.testing.assert_array_equal(clipped, [32767, -32768, 16384])


def test_pcm16_bad_input() -> None:
    with pytest.raises(AudioError):
        pcm16_to_float32(b"\x00\x01\x02")
    with pytest.raises(AudioError):
        pcm16_to_float32(np.zeros(4, np.float32))
    with pytest.raises(AudioError):
        float32_to_pcm16(np.array([0.0, np.nan], np.float32))


def test_to_pcm16_rounds_half_to_even_and_clips() -> None:
    """The one float -> PCM16 rule: float32, times 2**15, ties to even, clipped."""
    k = np.arange(-6, 6)
    halves = ((k + 0.5) / 32768).astype(np.float32)  # exactly between two PCM values
    expected = np.where((k % 2) == 0, k, k + 1)  # k + 0.5 rounds to the even one of k, k + 1
    np.testing.assert_array_equal(to_pcm16(halves), expected)
    loud = np.array([1.0, -1.0, 32767.5 / 32768, -32768.5 / 32768, 2.0, -7.0, 3e38], np.float32)
    np.testing.assert_array_equal(
        to_pcm16(loud), [32767, -32768, 32767, -32768, 32767, -32768, 32767]
    )
    # float64 is taken as float32 first (the protocol's sample type), beyond its range too
    wide = np.array([1e300, -1e300, 1e-300, np.nextafter(0.5 / 32768, 1)], np.float64)
    np.testing.assert_array_equal(to_pcm16(wide), [32767, -32768, 0, 0])
    pcm = np.array([-32768, 0, 32767], np.int16)
    assert to_pcm16(pcm) is pcm  # PCM is PCM
    assert float32_to_pcm16(halves) == to_pcm16(halves).astype("<i2").tobytes()
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(AudioError, match="non-finite"):
            to_pcm16(np.array([0.0, bad], np.float32))
    with pytest.raises(AudioError, match="int32"):
        to_pcm16(np.zeros(3, np.int32))


def test_silence_non_finite() -> None:
    x = np.array([0.5, np.nan, -np.inf, np.inf, -0.25], np.float32)
    clean = silence_non_finite(x)
    assert clean.dtype == np.float32
    np.testing.assert_array_equal(clean, [0.5, 0.0, 0.0, 0.0, -0.25])
    np.testing.assert_array_equal(x[1:2], [np.nan])  # the input is not changed
    fine = np.array([0.1, -0.2], np.float64)
    assert silence_non_finite(fine) is fine


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_stream_resampler_is_chunking_independent(rate: int) -> None:
    """Any chunking gives the samples of one push: the filter state carries across chunks."""
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate)).astype(np.float32)
    whole = StreamResampler(rate)
    reference = np.concatenate([whole.push(x), whole.flush()])
    assert abs(len(reference) - SAMPLE_RATE) <= 1
    chunked = StreamResampler(rate)
    cuts = np.sort(rng.integers(0, len(x), 40))
    parts = [chunked.push(c) for c in np.split(x, cuts)] + [chunked.flush()]
    np.testing.assert_array_equal(np.concatenate(parts), reference)
    if rate == SAMPLE_RATE:  # equal rates: untouched
        assert StreamResampler(rate).push(x) is x
    with pytest.raises(AudioError, match="after flush"):
        chunked.push(x)
    with pytest.raises(AudioError, match="twice"):
        chunked.flush()
    with pytest.raises(AudioError, match="positive"):
        StreamResampler(0)


def test_stream_decoder_resamples_like_the_stream_resampler() -> None:
    """The server's decoder is PCM -> float -> downmix -> StreamResampler, nothing else."""
    rng = np.random.default_rng(7)
    stereo = rng.integers(-20000, 20000, (44100, 2)).astype(np.int16)
    decoder = PcmStreamDecoder(44100, "pcm_s16le", 2)
    resampler = StreamResampler(44100)
    got, want = [], []
    for block in np.array_split(stereo, 37):
        got.append(decoder.decode(block.astype("<i2").tobytes()))
        want.append(resampler.push(downmix(pcm16_to_float32(block))))
    got.append(decoder.finish())
    want.append(resampler.flush())
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
