"""`ichigo-stream models` and the cache rules under it (torch-free): what is cached where,
HF_HUB_OFFLINE, the one fast network probe and the missing-files message."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ichigo_stream import model_cache
from ichigo_stream.catalogue import RELEASES, WHISPERS, listing, random_files
from ichigo_stream.cli import main
from ichigo_stream.model_cache import (
    MissingFile,
    Network,
    hub_cache_dir,
    hub_cached_file,
    missing_message,
    probe,
    random_cache_dir,
    whisper_cache_dir,
)
from ichigo_stream.options import DEFAULT_MODEL, RANDOM_MODEL

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "name", "ref", "size", "size_source", "width", "codebook_size", "mask_token", "llm",
    "cached", "path", "whisper",
}  # fmt: skip
WHISPER_KEYS = {"name", "file", "size", "cached", "path"}


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every cache variable pointed into tmp_path, nothing cached."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def put_in_hub_cache(hub: Path, ref: str, revision: str = "0" * 40) -> Path:
    """A file laid out as huggingface_hub caches it (refs/main -> snapshots/REV/FILE)."""
    repo, _, filename = ref.partition(":")
    folder = hub / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    path = folder / "snapshots" / revision / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    return path


def test_cache_folders_follow_their_owners_rules(
    caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub_cache_dir() == caches / "hf" / "hub"
    assert whisper_cache_dir() == caches / "xdg" / "whisper"
    assert random_cache_dir() == caches / "xdg" / "ichigo-stream" / "random"
    monkeypatch.delenv("HF_HOME")
    assert hub_cache_dir() == caches / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "elsewhere"))
    assert hub_cache_dir() == caches / "elsewhere"


def test_listing_marks_only_what_is_cached(caches: Path) -> None:
    cached = put_in_hub_cache(caches / "hf" / "hub", DEFAULT_MODEL)
    rows = {row["ref"]: row for row in listing()}
    assert list(rows) == [r.ref for r in RELEASES] + [RANDOM_MODEL]
    assert rows[DEFAULT_MODEL]["cached"] is True and rows[DEFAULT_MODEL]["path"] == str(cached)
    assert [ref for ref, row in rows.items() if row["cached"]] == [DEFAULT_MODEL]
    assert not any(row["whisper"]["cached"] for row in rows.values())

    # Whisper is cached separately: medium.pt serves both medium-based releases.
    (caches / "xdg" / "whisper").mkdir(parents=True)
    (caches / "xdg" / "whisper" / "medium.pt").write_bytes(b"weights")
    rows = {row["ref"]: row for row in listing()}
    by_whisper = {ref: row["whisper"]["cached"] for ref, row in rows.items()}
    assert by_whisper == {r.ref: r.whisper == "medium" for r in RELEASES} | {RANDOM_MODEL: False}


def test_a_file_of_another_revision_is_not_cached(caches: Path) -> None:
    path = put_in_hub_cache(caches / "hf" / "hub", DEFAULT_MODEL)
    (path.parents[2] / "refs" / "main").write_text("1" * 40)  # main moved on
    repo, _, filename = DEFAULT_MODEL.partition(":")
    assert hub_cached_file(repo, filename) is None


def test_models_json_schema_and_table(caches: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quantizer, _ = random_files()
    quantizer.parent.mkdir(parents=True)
    quantizer.write_bytes(b"q")
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(RELEASES) + 1
    for row in rows:
        assert set(row) == ROW_KEYS and set(row["whisper"]) == WHISPER_KEYS
        assert isinstance(row["cached"], bool) and isinstance(row["whisper"]["cached"], bool)
        assert isinstance(row["codebook_size"], int) and isinstance(row["width"], int)
    facts = {row["ref"]: row for row in rows}
    merged = facts[DEFAULT_MODEL]
    assert (merged["codebook_size"], merged["mask_token"], merged["width"]) == (2561, 2048, 1024)
    assert merged["whisper"]["name"] == "medium" and merged["llm"] == "Ichigo-llama3.1 v0.5"
    assert facts["homebrewltd/ichigo-asr:ichigo-asr-2502-en.ckpt"]["whisper"]["name"] == "large-v3"
    random_row = facts[RANDOM_MODEL]
    assert random_row["cached"] is True and random_row["whisper"]["cached"] is False

    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for release in RELEASES:
        assert release.ref in table and release.size in table
    assert WHISPERS["medium"].size in table and "not cached" in table


def test_models_does_not_import_torch(caches: Path) -> None:
    code = (
        "import sys; from ichigo_stream.cli import main; main(['models', '--json']); "
        "bad = [m for m in ('torch', 'whisper', 'huggingface_hub') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def test_hf_hub_offline_means_no_network_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(url: str, timeout: float = 0) -> str | None:
        raise AssertionError(f"probed {url} although offline")

    monkeypatch.setattr(model_cache, "probe", no_network)
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        network = Network()
        assert not network.reachable("https://huggingface.co/x")
        assert network.down == "HF_HUB_OFFLINE is set"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert Network().down is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once the with block ends


def test_unreachable_host_is_tried_once_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = f"http://127.0.0.1:{closed_port()}/file"
    calls = []
    real_probe = model_cache.probe
    monkeypatch.setattr(model_cache, "probe", lambda u: calls.append(u) or real_probe(u))
    network = Network()
    start = time.monotonic()
    assert not network.reachable(url)
    assert not network.reachable(url + "2")  # known down: not tried again
    assert time.monotonic() - start < model_cache.PROBE_TIMEOUT_S + 1
    assert calls == [url]
    assert network.down is not None and "127.0.0.1" in network.down


def test_a_stalled_name_lookup_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib's timeout does not cover getaddrinfo; a dead DNS server can stall it for long.
    release = threading.Event()

    def stalled_lookup(*args: object, **kwargs: object) -> list[object]:
        release.wait(30)
        raise socket.gaierror("stalled")

    monkeypatch.setattr(socket, "getaddrinfo", stalled_lookup)
    start = time.monotonic()
    try:
        reason = probe("http://stalled.invalid/file", timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - start < 3
    assert reason == "no answer within 0.5 s"


def test_probe_counts_any_http_answer_as_reachable() -> None:
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert probe(f"http://127.0.0.1:{server.server_port}/missing") is None
    finally:
        server.shutdown()
        server.server_close()


def test_missing_message_names_parts_sizes_places_and_both_ways_on(tmp_path: Path) -> None:
    quantizer = ("the quantizer R/E:q.pth", "q.pth", "273 MB", tmp_path / "hub", "https://h/q")
    whisper = ("Whisper medium", "medium.pt", "about 1.42 GiB", tmp_path / "w", "https://w/m")
    missing = [MissingFile(*quantizer, "--model"), MissingFile(*whisper, "--whisper")]
    message = missing_message(missing, "HF_HUB_OFFLINE is set")
    assert "\n" not in message
    for part in ("the quantizer R/E:q.pth", "273 MB", "Whisper medium", "about 1.42 GiB",
                 str(tmp_path / "hub"), str(tmp_path / "w"), "https://h/q", "https://w/m",
                 "--model PATH/q.pth --whisper PATH/medium.pt", "--model random",
                 "HF_HUB_OFFLINE is set"):  # fmt: skip
        assert part in message, part
