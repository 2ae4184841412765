"""The GPU suite's one table, from the JSON files its three benchmarks wrote.

    python benchmarks/gpu_suite_report.py OUT_DIR    # tokenize.json, precision.json, stream.json

Prints a Markdown table (ready for docs/benchmarks.md) headed by the device and the date; a
figure a benchmark did not produce prints "n/a". Exit status 1 when a file is missing or a
streaming run lost a segment, 0 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

NA = "n/a"


def pcts(stats: dict | None) -> str:
    if not stats:
        return NA
    return "/".join(f"{stats[k]:.0f}" for k in ("p50", "p95", "p99"))


def tokenize_rows(data: dict) -> list[list[str]]:
    ours, ref = data["ours"], data["reference"]
    label = data["args"].get("dtype", "?") + " batch " + data["args"].get("batch_size", "?")
    return [
        [
            "offline tokenize",
            f"ours ({label}, --compile {data['args'].get('compile', 'none')}) vs reference "
            "(float32, one at a time)",
            f"{ours['speed']:.1f} vs {ref['speed']:.1f} audio-s/s: **{data['ratio']:.1f}x**",
        ]
    ]


def precision_rows(data: dict) -> list[list[str]]:
    rows = []
    for r in data["rows"]:
        if r["name"] == "float32":
            continue
        rows.append(
            [
                "token agreement with float32",
                f"{r['name']} ({data['model']}, {data['clips']} clips, {data['tokens']} tokens)",
                f"**{r['percent']:.2f} %** (worst clip {r['worst_clip']:.1f} %, identical "
                f"clips {r['identical_clips']}/{r['clips']})",
            ]
        )
    return rows


def stream_rows(data: dict) -> list[list[str]]:
    rows = []
    for r in data["runs"]:
        m, gpu = r["server"].get("metrics") or {}, r["server"].get("gpu")
        capacity = m.get("capacity")
        served = m.get("model_jobs", 0) / r["wall_s"] if r.get("wall_s") else None
        lost = r["segments_lost"] + r["segments_unexpected"]
        figures = [
            f"endpoint->segment p50/p95/p99 {pcts(r['endpoint_ms'])} ms",
            f"lagging {len(r['sessions_lagging'])}",
            f"errored {len(r['sessions_with_errors'])}",
            f"lost {lost}",
            f"GPU util p50 {gpu['util_pct']['p50']:.0f} %" if gpu else f"GPU util {NA}",
            "capacity est. "
            + (f"{capacity:.0f} windows/s" if capacity is not None else NA)
            + (f" vs served {served:.1f} windows/s" if served is not None else ""),
        ]
        rows.append(
            [
                "streaming",
                f"{r['sessions_n']} sessions, partials {'on' if r['partials'] else 'off'}",
                ", ".join(figures),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0])
    sections = (
        ("tokenize.json", tokenize_rows),
        ("precision.json", precision_rows),
        ("stream.json", stream_rows),
    )
    device, missing, rows, lost = None, [], [], False
    for name, make_rows in sections:
        path = out / name
        if not path.exists():
            missing.append(name)
            rows.append([name.removesuffix(".json"), NA, f"{NA} ({name} not written)"])
            continue
        data = json.loads(path.read_text())
        device = device or data.get("device")
        rows += make_rows(data)
        if name == "stream.json":
            lost = any(r["segments_lost"] or r["segments_unexpected"] for r in data["runs"])
    print(f"GPU suite, device {device or NA}, {time.strftime('%Y-%m-%d')}")
    print()
    print("| benchmark | configuration | result |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if missing or lost else 0


if __name__ == "__main__":
    sys.exit(main())
