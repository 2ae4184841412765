"""The load test's report: progress to stderr, a block per run, a row per session, the summary."""

from __future__ import annotations

import math
import sys

from stream_analysis import percentiles


def log(message: str) -> None:
    """Progress and setup messages: stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def fmt_pcts(stats: dict[str, float] | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    """'p50/p95/p99' in ms, one decimal under 10; '-' when there were none."""
    if stats is None:
        return "-"
    return "/".join(f"{stats[k]:.0f}" if stats[k] >= 10 else f"{stats[k]:.1f}" for k in keys)


def print_run(r: dict, bar_ms: float | None) -> None:
    """One run's block: segments, latencies, client, server batches, CPU, GPU, the bar."""
    c, s = r["client"], r["server"]
    m, cpu = s["metrics"], s["cpu"]
    print(
        f"\n== {r['sessions_n']} sessions"
        f"{' on /v1/realtime' if r['protocol'] == 'realtime' else ''}"
        f"{', text on' if r['text'] else ''}, partials {'on' if r['partials'] else 'off'}, "
        f"{r['audio_s_per_session']:g} s of audio each, wall {r['wall_s']:.1f} s"
    )
    print(
        f"segments: {r['segments_received']} received / {r['segments_expected']} expected, "
        f"{r['segments_lost']} lost, {r['segments_unexpected']} unexpected; "
        f"sessions with errors: {len(r['sessions_with_errors'])}; "
        f"lagging: {len(r['sessions_lagging'])}"
    )
    if r.get("sessions_refused"):
        print(
            f"refused (limit, 1013): {r['sessions_refused']} of {r['sessions_n']}, answered in "
            f"{fmt_pcts(r['refusal_answer_ms'], ('p50', 'max'))} ms (p50/max) after the "
            f"handshake, retry_after_ms {fmt_pcts(r['retry_after_ms'], ('p50', 'max'))}"
        )
    if m and m.get("capacity") is not None:
        print(f"server capacity estimate: {m['capacity']:.1f} encoder windows/s")
    print(f"{'latency, ms':34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'n':>6}")
    for label, key in (
        ("endpoint -> segment (server)", "endpoint_ms"),
        ("end of speech -> segment (raw)", "eos_ms"),
        ("  minus the min_silence-tail wait", "decision_ms"),
        ("lag behind the audio timeline", "timeline_lag_ms"),
        ("partial end sent -> partial", "partial_latency_ms"),
        ("stop -> done", "done_ms"),
        ("speech start -> first text delta", "first_delta_ms"),
        ("speech_stopped -> completed", "completed_after_stop_ms"),
    ):
        st = r[key]
        if st is None:
            print(f"{label:34} {'-':>8}")
            continue
        print(
            f"{label:34} {st['p50']:8.1f} {st['p95']:8.1f} {st['p99']:8.1f} {st['max']:8.1f} "
            f"{st['n']:6d}"
        )
    sl, ll = c["send_lag_ms"], c["loop_lag_ms"]
    print(
        f"client: {c['procs']} process(es), CPU {c['cpu_pct']:.0f}%, send lag p50/p99/max "
        f"{fmt_pcts(sl, ('p50', 'p99', 'max'))} ms, event-loop lag p99/max "
        f"{fmt_pcts(ll, ('p99', 'max'))} ms, connect p95 {fmt_pcts(c['connect_ms'], ('p95',))} ms"
    )
    if sl and sl["p99"] > 20:
        print("  WARNING: client send lag p99 > 20 ms: the client may be the bottleneck")
    pps = r["partials_per_session"]
    if r["partials"]:
        print(
            f"partials: {pps['p50']:.0f} per session (median), {m.get('partials_shed', '?')} shed "
            "by the server"
        )
    if m:
        mean = m["batch_mean"]
        print(
            f"server batches: {m['batches']}, mean size {mean:.2f}"
            if mean
            else "server batches: 0",
            f"histogram (<=bound: count) {m['batch_histogram']}; model jobs {m['model_jobs']} "
            f"for {m['segments']} segments and {m['partials']} partials sent",
        )
    if cpu:
        line = f"CPU: machine {cpu['machine_busy_pct']:.0f}% of {cpu['cores']} cores"
        if "server_pct" in cpu:
            line += (
                f"; server {cpu['server_pct']:.0f}% (event loop {cpu['server_loop_pct']:.0f}%, "
                f"max 1 s {cpu['server_loop_pct_max_1s']:.0f}%; model+other threads "
                f"{cpu['server_other_pct']:.0f}%)"
            )
        if "others_pct" in cpu:
            line += f"; other processes {cpu['others_pct']:.0f}%"
        print(line + " [100% = one core]")
    if s["queue_depth"]:
        print(
            f"server queue depth p50/p95/max: {fmt_pcts(s['queue_depth'], ('p50', 'p95', 'max'))}"
        )
    g = s["gpu"]
    if g:
        print(
            f"GPU {g['name']} ({g['source']}): utilisation p50/p95 "
            f"{fmt_pcts(g['util_pct'], ('p50', 'p95'))}%, memory max {g['mem_mib_max']:.0f} MiB"
        )
    if bar_ms is not None and r["endpoint_ms"]:
        ok = r["endpoint_ms"]["p95"] < bar_ms and not r["sessions_lagging"]
        print(
            f"bar endpoint->segment p95 < {bar_ms:g} ms, no session lagging: "
            f"{'PASS' if ok else 'FAIL'}"
        )
    for s_ in r["per_session"]:
        if s_["errors"] or s_["segments_lost"] or s_["segments_unexpected"]:
            print(
                f"  session {s_['index']}: errors {s_['errors'][:3]}, lost "
                f"{[(x['start'], x['end']) for x in s_['segments_lost'][:3]]}, unexpected "
                f"{[(x['start'], x['end']) for x in s_['segments_unexpected'][:3]]}"
            )


def print_per_session(r: dict) -> None:
    """--per-session: a row per session."""
    print(
        f"{'sess':>4} {'offset':>6} {'segs':>9} {'parts':>5} {'send lag max':>12} "
        f"{'eos p50/p95':>12} {'endpt p50/p95':>13} {'worst lag':>9} {'lag':>3}"
    )
    for s in r["per_session"]:
        eos = percentiles([x["eos_ms"] for x in s["segments"] if "eos_ms" in x])
        ep = percentiles([x["endpoint_ms"] for x in s["segments"]])
        print(
            f"{s['index']:4d} {s['offset_s']:6.2f} "
            f"{s['segments_received']:4d}/{s['segments_expected']:<4d} {s['partials']:5d} "
            f"{(s['send_lag_ms'] or {}).get('max', math.nan):12.1f} "
            f"{fmt_pcts(eos, ('p50', 'p95')):>12} {fmt_pcts(ep, ('p50', 'p95')):>13} "
            f"{s['worst_lag_ms']:9.0f} {'yes' if s['lagging'] else '':>3}"
        )


def summary_row(r: dict) -> list[str]:
    """One run as a row of the summary table (columns: SUMMARY_HEADER)."""
    cpu, m, gpu = r["server"]["cpu"], r["server"]["metrics"], r["server"]["gpu"]
    lag = r["client"]["send_lag_ms"]
    return [
        str(r["sessions_n"]),
        "on" if r["partials"] else "off",
        f"{r['segments_received']}/{r['segments_expected']}",
        str(len(r["sessions_lagging"])),
        fmt_pcts(r["endpoint_ms"]),
        fmt_pcts(r["eos_ms"]),
        fmt_pcts(r["decision_ms"]),
        fmt_pcts(r["first_delta_ms"], ("p50", "p95")),
        fmt_pcts(r["completed_after_stop_ms"], ("p50", "p95")),
        f"{r['partials_per_session']['p50']:.0f}" if r["partials"] else "-",
        f"{m['batch_mean']:.2f}" if m and m.get("batch_mean") else "-",
        f"{cpu['server_loop_pct']:.0f} / {cpu['server_other_pct']:.0f}"
        if "server_pct" in cpu
        else "-",
        f"{cpu['machine_busy_pct']:.0f}" if cpu else "-",
        f"{cpu['others_pct']:.0f}" if "others_pct" in cpu else "-",
        f"{lag['p99']:.1f}" if lag else "-",
        f"{gpu['util_pct']['p50']:.0f}" if gpu else "-",
        f"/v1/{r['protocol']}",
        "on" if r["text"] else "off",
    ]


SUMMARY_HEADER = [
    "sessions",
    "partials",
    "segments got/expected",
    "lagging",
    "endpoint->segment ms p50/p95/p99",
    "end of speech->segment ms p50/p95/p99",
    "same minus (min_silence-tail) p50/p95/p99",
    "speech start->first delta ms p50/p95",
    "speech_stopped->completed ms p50/p95",
    "partials/session",
    "mean batch",
    "server CPU % loop / model",
    "machine CPU %",
    "other processes CPU %",
    "client send lag p99 ms",
    "GPU util p50 %",
    "endpoint",
    "text",
]


def print_summary(results: list[dict], bar_ms: float | None) -> None:
    """The Markdown table of all runs, and the largest N that met the bar."""
    print()
    print("| " + " | ".join(SUMMARY_HEADER) + " |")
    print("|" + "---:|" * len(SUMMARY_HEADER))
    for r in results:
        print("| " + " | ".join(summary_row(r)) + " |")
    if bar_ms is not None:
        for partials in sorted({r["partials"] for r in results}):
            passing = [
                r["sessions_n"]
                for r in results
                if r["partials"] == partials
                and r["endpoint_ms"]
                and r["endpoint_ms"]["p95"] < bar_ms
                and not r["sessions_lagging"]
            ]
            print(
                f"partials {'on' if partials else 'off'}: largest N with endpoint->segment p95 < "
                f"{bar_ms:g} ms and no session lagging: {max(passing) if passing else 'none'}"
            )
