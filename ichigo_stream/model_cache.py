"""Where model files are cached, whether they are there, and one fast try of the network.

Torch-free: `ichigo-stream models` and the loading code share these rules, so the listing
and the loader always agree on what is cached. The folders follow each owner's own rule,
read when called (not at import):
- Hugging Face hub files: HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
  else ~/.cache/huggingface/hub (huggingface_hub's rule), in its models--ORG--NAME layout.
- openai-whisper checkpoints: $XDG_CACHE_HOME/whisper, else ~/.cache/whisper (whisper's rule).
- `--model random`: $XDG_CACHE_HOME/ichigo-stream/random, else ~/.cache/ichigo-stream/random.
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# One network attempt, no retries: long enough for a slow link to answer a HEAD request,
# short enough that an unplugged machine fails well within 10 s (two probes at most).
PROBE_TIMEOUT_S = 3.0
# huggingface_hub's spelling of true for HF_HUB_OFFLINE (constants._is_true).
_TRUE = {"1", "ON", "YES", "TRUE"}


def _cache_home() -> str:
    return os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, by huggingface_hub's own rule."""
    explicit = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expanduser(explicit))
    home = os.getenv("HF_HOME") or os.path.join(_cache_home(), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def whisper_cache_dir() -> Path:
    """openai-whisper's download folder (whisper.load_model's default download_root)."""
    return Path(_cache_home()) / "whisper"


def random_cache_dir() -> Path:
    """Where `--model random` keeps its generated files."""
    return Path(_cache_home()) / "ichigo-stream" / "random"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: no network at all, for the hub and for
    openai-whisper's downloads alike."""
    value = os.getenv("HF_HUB_OFFLINE") or os.getenv("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


def split_hub_ref(ref: str) -> tuple[str, str] | None:
    """REPO:FILE -> (repo, file), or None if `ref` is not of that form."""
    repo, sep, filename = ref.partition(":")
    if not sep or not repo or not filename or "/" not in repo:
        return None
    return repo, filename


def hub_repo_folder(repo: str, cache: Path | None = None) -> Path:
    """The hub cache's folder of a model repository (models--ORG--NAME)."""
    return (cache or hub_cache_dir()) / ("models--" + repo.replace("/", "--"))


def hub_cached_file(repo: str, filename: str, cache: Path | None = None) -> Path | None:
    """The cached copy of REPO:FILE at the revision `main` points to, as
    huggingface_hub.try_to_load_from_cache finds it; None if it is not there."""
    folder = hub_repo_folder(repo, cache)
    try:
        revision = (folder / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = folder / "snapshots" / revision / filename
    return path if path.is_file() else None


def whisper_cached_file(file_name: str, cache: Path | None = None) -> Path | None:
    """An openai-whisper checkpoint (e.g. medium.pt) in whisper's cache folder, if present.
    Present is not verified: openai-whisper checks its SHA-256 when it loads it."""
    path = (cache or whisper_cache_dir()) / file_name
    return path if path.is_file() else None


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request, no retries: None if the server answered (any HTTP status), else why
    it could not be reached. The whole attempt, name lookup included (which urllib's timeout
    does not cover: a dead DNS server can stall getaddrinfo for tens of seconds), is bounded
    by `timeout`; a stalled attempt is left to finish in a daemon thread."""
    outcome: list[str | None] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_head(url, timeout)), name="ichigo-probe", daemon=True
    )
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _head(url: str, timeout: float) -> str | None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered; the download itself reports a wrong name
    except urllib.error.URLError as e:
        return str(e.reason)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return str(e) or type(e).__name__


class Network:
    """The network as one load sees it: tried at most once per failure, then known down.

    HF_HUB_OFFLINE makes it down from the start, with no attempt at all.
    """

    def __init__(self) -> None:
        self.down: str | None = "HF_HUB_OFFLINE is set" if hub_offline() else None

    def reachable(self, url: str) -> bool:
        if self.down is not None:
            return False
        reason = probe(url)
        if reason is not None:
            host = urllib.request.urlparse(url).netloc
            self.down = f"{host} unreachable: {reason}"
        return self.down is None


@dataclass(frozen=True)
class MissingFile:
    """A model file that is neither cached nor downloadable now."""

    what: str  # "the quantizer REPO:FILE" or "Whisper medium"
    file_name: str  # the file to fetch elsewhere and pass by path
    size: str  # e.g. "273 MB", "about 1.42 GiB"
    looked_in: Path  # the cache folder searched
    source: str  # where to download it (a URL)
    flag: str  # --model or --whisper


def missing_message(missing: list[MissingFile], network_state: str) -> str:
    """One message: what is missing (with sizes), where we looked, and the two ways on."""
    parts = "; ".join(f"{m.what} ({m.file_name}, {m.size}; not in {m.looked_in})" for m in missing)
    sources = "; ".join(f"{m.file_name} from {m.source}" for m in missing)
    flags = " ".join(f"{m.flag} PATH/{m.file_name}" for m in missing)
    return (
        f"model files not cached and cannot be downloaded ({network_state}): {parts}. "
        f"Either download on a machine with network ({sources}) and pass {flags}, "
        "or try the pipeline offline with random weights: --model random "
        "(see `ichigo-stream models`)"
    )
