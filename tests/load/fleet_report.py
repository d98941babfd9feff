#!/usr/bin/env python3
"""Writes report.md for a fleet_run.sh run: the original's table side by side,
per-stage success rates, and the exactness audit. Standard library only.

Input, in --out: summary.json (k6 handleSummary of staged.js, capacity.js
or hotkey.js) and k6-console.log (the scenario's "AUDIT admit|deny policy key
start_ms end_ms [duration_ms]" lines). Exit 1 when the audit finds a
violation (--audit 0: the scenario logged nothing; the audit is skipped).

Charts (SVG, written by hand, next to report.md and linked from it), from the
same per-decision lines bucketed per second of request start: latency.svg
(p50/p95/p99 of the request duration — k6's timings.duration when logged,
else end - start), throughput.svg (200s and 429s per second) and stages.svg
(success rate per stage, from the summary's per-stage counters).

The audit. Each decision happened at some instant in [start, end + 1) ms of
the k6 clock (Date.now() before and after the request; Redis runs on the
same machine and clock). For each key of each policy:
  - over-admission: the most admissions certainly inside one window, i.e.
    whose whole interval fits in [a, a + W), over every a; more than the
    limit proves the limiter admitted too many. (The count by request start
    is shown too; it can exceed the limit by a few from timing jitter only.)
  - unjustified denial: for each 429, the admissions that could have been
    inside the window ending at the decision; fewer than the limit proves the
    limiter denied while it had room.
Both tests only report what is certain; jitter cannot make them fail.
"""

import argparse
import bisect
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ORIGINAL = {
    "total": 6202,
    "ok": 3611,
    "denied": 2591,
    "errors": 0,
    "avg": 4.48,
    "p90": 7.75,
    "p95": 12.13,
    "p99": None,
    "rps": 77,
}
# The original report's "Verified Capacity" lines, per stage (stage 5 not given).
ORIGINAL_STAGE_SUCCESS = ["100%", "100%", "~80%", "58%", "—"]

AUDIT_LINE = re.compile(r'AUDIT (admit|deny) (\S+) (\S+) (\d+) (\d+)(?: ([0-9.]+))?')


def audit_key(admits, denies, limit, window):
    """admits, denies: lists of (start, end) ms. Returns a dict of findings."""
    admits = sorted(admits)
    starts = [s for s, _ in admits]
    certain = 0
    by_start = 0
    for j, (a, _) in enumerate(admits):
        hi = bisect.bisect_left(starts, a + window, lo=j)
        by_start = max(by_start, hi - j)
        certain = max(certain, sum(1 for s, e in admits[j:hi] if e + 1 <= a + window))
    # A denial decided at t in [s, e + 1) is justified iff >= limit admissions
    # in (t - W, t]. Admissions that could be in such a window for some t:
    # end + 1 > s - W and start < e + 1.
    ends_sorted = sorted(e for _, e in admits)
    unjustified = 0
    for s, e in denies:
        started_before = bisect.bisect_left(starts, e + 1)  # start < e + 1
        ended_too_early = bisect.bisect_right(ends_sorted, s - window - 1)  # end + 1 <= s - W
        if started_before - ended_too_early < limit:
            unjustified += 1
    return {"certain": certain, "by_start": by_start, "unjustified": unjustified}


def fmt_ms(value):
    return "—" if value is None else f"{value:.2f} ms"


def pct(part, whole):
    return f"{100 * part / whole:.1f}%" if whole else "—"



# --- charts (hand-written SVG) -------------------------------------------------

SVG_W, SVG_H = 720, 300
PAD_L, PAD_R, PAD_T, PAD_B = 60, 130, 30, 40
COLOURS = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd"]


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(value):
    """A round upper bound for an axis."""
    if value <= 0:
        return 1
    step = 10 ** (len(str(int(value))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * step:
            return m * step
    return 10 * step


def svg_frame(title, x_label, y_label, y_max, x_max):
    plot_w, plot_h = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" '
        f'viewBox="0 0 {SVG_W} {SVG_H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{SVG_W}" height="{SVG_H}" fill="white"/>',
        f'<text x="{SVG_W / 2}" y="18" text-anchor="middle" font-size="13">{esc(title)}</text>',
    ]
    for i in range(5):
        v = y_max * i / 4
        y = PAD_T + plot_h - plot_h * i / 4
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{PAD_L + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{PAD_L - 5}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    if x_max is not None:
        # Ticks on round seconds (0, 10, 20, ...), not on fifths of the run.
        step = next((s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600) if s >= x_max / 8), 600)
        for v in range(0, int(x_max) + 1, step):
            x = PAD_L + plot_w * v / x_max
            out.append(f'<text x="{x:.1f}" y="{PAD_T + plot_h + 15}" text-anchor="middle">{v}</text>')
    out.append(f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{PAD_L + plot_w}" y2="{PAD_T + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + plot_h}" stroke="black"/>')
    out.append(f'<text x="{PAD_L + plot_w / 2}" y="{SVG_H - 8}" text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text x="14" y="{PAD_T + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {PAD_T + plot_h / 2})">{esc(y_label)}</text>')
    return out, plot_w, plot_h


def line_chart(path, title, y_label, xs, series):
    """series: list of (name, values aligned with xs; None = no point)."""
    y_max = nice_max(max((v for _, vs in series for v in vs if v is not None), default=1))
    x_max = max(xs[-1], 1) if xs else 1
    out, plot_w, plot_h = svg_frame(title, "seconds since the first request", y_label, y_max, x_max)
    for n, (name, values) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(
            f"{PAD_L + plot_w * x / x_max:.1f},{PAD_T + plot_h - plot_h * min(v, y_max) / y_max:.1f}"
            for x, v in zip(xs, values) if v is not None)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        ly = PAD_T + 10 + 16 * n
        out.append(f'<line x1="{SVG_W - PAD_R + 10}" y1="{ly}" x2="{SVG_W - PAD_R + 30}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{SVG_W - PAD_R + 35}" y="{ly + 4}">{esc(name)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def bar_chart(path, title, labels, values):
    """values: percentages (None = nothing sent in that stage)."""
    out, plot_w, plot_h = svg_frame(title, "stage", "success rate (%)", 100, None)
    slot = plot_w / max(len(labels), 1)
    for i, (label, v) in enumerate(zip(labels, values)):
        x = PAD_L + slot * i + slot * 0.15
        if v is not None:
            h = plot_h * v / 100
            out.append(f'<rect x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                       f'height="{h:.1f}" fill="{COLOURS[0]}"/>')
            # Inside the bar when it is tall enough: above a full bar the
            # label would run into the title.
            inside = h > 24
            label_y = PAD_T + plot_h - h + 16 if inside else PAD_T + plot_h - h - 4
            colour = ' fill="white"' if inside else ''
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{label_y:.1f}" '
                       f'text-anchor="middle"{colour}>{v:.1f}%</text>')
        out.append(f'<text x="{x + slot * 0.35:.1f}" y="{PAD_T + plot_h + 15}" '
                   f'text-anchor="middle">{esc(label)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def write_charts(out, records, stage_rows):
    """records: (start_ms, duration_ms, admitted). stage_rows: (label, sent, admitted).
    Returns the Markdown lines linking the charts."""
    lines = []
    if records:
        t0 = min(r[0] for r in records)
        buckets = defaultdict(list)
        for start, duration, admitted in records:
            buckets[(start - t0) // 1000].append((duration, admitted))
        xs = list(range(0, max(buckets) + 1))
        lat = {q: [] for q in (0.5, 0.95, 0.99)}
        ok_rate, denied_rate = [], []
        for x in xs:
            ds = sorted(d for d, _ in buckets.get(x, []))
            for q in lat:
                lat[q].append(quantile(ds, q))
            ok_rate.append(sum(1 for _, a in buckets.get(x, []) if a))
            denied_rate.append(sum(1 for _, a in buckets.get(x, []) if not a))
        line_chart(out / "latency.svg", "Check latency per second (ms)", "ms", xs,
                   [("p50", lat[0.5]), ("p95", lat[0.95]), ("p99", lat[0.99])])
        line_chart(out / "throughput.svg", "Decisions per second", "checks/s", xs,
                   [("200", ok_rate), ("429", denied_rate), ("total", [a + b for a, b in zip(ok_rate, denied_rate)])])
        lines += ["![latency per second](latency.svg) ![throughput per second](throughput.svg)", ""]
    if stage_rows:
        bar_chart(out / "stages.svg", "Success rate per stage (admitted / sent)",
                  [label for label, _, _ in stage_rows],
                  [100 * a / n if n else None for _, n, a in stage_rows])
        lines += ["![success rate per stage](stages.svg)", ""]
    if lines:
        lines = ["## Charts", "",
                 "[latency.svg](latency.svg) (p50/p95/p99 per second), [throughput.svg](throughput.svg) "
                 "(200s and 429s per second), [stages.svg](stages.svg) (success rate per stage).", ""] + lines
    return lines


def open_model_report(args, meta, metrics, duration_s, audit_rows, chart_lines):
    """report.md for capacity.js and hotkey.js: one check per iteration."""

    def count(name):
        return metrics.get(name, {}).get("values", {}).get("count", 0)

    def trend(name, stat):
        return metrics.get(name, {}).get("values", {}).get(stat)

    scenario = meta.get("scenario")
    total = count("http_reqs")
    ok, denied, errors = count("allowed"), count("denied"), count("errors")
    dropped = count("dropped_iterations")
    offered = meta.get("offered", 0)
    d = "http_req_duration"
    lines = []
    add = lines.append
    if scenario == "capacity":
        add(f"# capacity: open model, K = {meta.get('k'):g} checks/s per user")
    else:
        add(f"# {scenario}: {meta.get('description', '')}")
    add("")
    add(f"Commit {args.commit}; {args.replicas} release replicas ({args.replica_workers} HTTP worker each) behind nginx ({args.nginx_workers} workers) "
        f"running the shipped deploy/nginx/conf.d, one Redis, k6 (GOGC {args.k6_gogc}, nice {args.k6_nice}) — all on this machine. Stage scale "
        f"{meta.get('stage_scale')}; run time {duration_s:.1f} s. Arrival-rate executor: checks start on "
        f"schedule whatever the latency; those k6 could not start (no free VU) are dropped iterations.")
    add("")
    add("| | this run |")
    add("| --- | ---: |")
    add(f"| offered checks | {offered:,.0f} |")
    add(f"| sent | {total:,} ({pct(total, offered)} of offered; {dropped:,} dropped iterations) |")
    add(f"| 200 | {ok:,} ({pct(ok, total)}) |")
    add(f"| 429 | {denied:,} ({pct(denied, total)}) |")
    add(f"| errors | {errors} |")
    for label, stat in (("average", "avg"), ("p50", "med"), ("p90", "p(90)"), ("p95", "p(95)"),
                        ("p99", "p(99)"), ("max", "max")):
        add(f"| {label} latency | {fmt_ms(trend(d, stat))} |")
    add(f"| throughput | {total / duration_s if duration_s else 0:,.1f} checks/s |")
    for group in ("hot", "cold"):
        if group in meta:
            g = meta[group]
            add(f"| {group} keys: 200 / 429 | {g['allowed']:,} / {g['denied']:,} |")
    add("")
    if args.ceiling > 0:
        add(f"Redis ceiling on this machine (redis-benchmark, EVALSHA sliding_log.lua, 150 clients): "
            f"**{args.ceiling:,.0f}/s**.")
        add("")
    add("## Per stage")
    add("")
    add("| stage | users | offered/s | seconds | sent | 200 / 429 / errors | p50 | p99 |")
    add("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for i, s in enumerate(meta.get("stages", []), 1):
        add(f"| {i} | {s.get('users', '—')} | {s.get('rate', '—')} | {s['seconds']:g} | "
            f"{count(f'stage{i}_user_requests'):,} | {count(f'stage{i}_allowed'):,} / "
            f"{count(f'stage{i}_denied'):,} / {count(f'stage{i}_errors')} | "
            f"{fmt_ms(trend(f'stage{i}_latency', 'med'))} | {fmt_ms(trend(f'stage{i}_latency', 'p(99)'))} |")
    add("")
    add("## Exactness audit")
    add("")
    add("| policy | limit | keys | admitted / denied | most admitted in one window (worst key) | unjustified 429s | verdict |")
    add("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    lines.extend(audit_rows)
    add("")
    lines.extend(chart_lines)
    add(f"k6 exit status {args.k6_status} (0: every threshold held — zero errors, every check passed; "
        f"99: a threshold was crossed).")
    add("")
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--replica-workers", type=int, default=1)
    parser.add_argument("--k6-gogc", type=int, default=100)
    parser.add_argument("--k6-nice", type=int, default=0)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--ceiling", type=float, default=0)
    parser.add_argument("--k6-status", type=int, default=0)
    parser.add_argument("--audit", type=int, default=1,
                        help="0: the scenario was run without AUDIT lines; skip the audit")
    args = parser.parse_args()
    out = Path(args.out)
    data = json.loads((out / "summary.json").read_text())
    meta = data.get("slidegate", {})
    metrics = data["metrics"]

    def count(name):
        return metrics.get(name, {}).get("values", {}).get("count", 0)

    def trend(name, stat):
        return metrics.get(name, {}).get("values", {}).get(stat)

    duration_s = data["state"]["testRunDurationMs"] / 1000
    total = count("http_reqs")
    ok, denied, errors = count("allowed"), count("denied"), count("errors")
    users_ok, users_denied = count("user_requests_admitted"), count("user_requests_denied")
    users = users_ok + users_denied
    rps = total / duration_s if duration_s else 0
    d = "http_req_duration"
    mine = {
        "total": total, "ok": ok, "denied": denied, "errors": errors,
        "avg": trend(d, "avg"), "p90": trend(d, "p(90)"), "p95": trend(d, "p(95)"),
        "p99": trend(d, "p(99)"), "rps": rps,
    }

    # --- audit -------------------------------------------------------------------
    decisions = defaultdict(lambda: ([], []))
    records = []  # (start_ms, duration_ms, admitted), for the charts
    console = out / "k6-console.log"
    if console.exists():
        with console.open() as lines_in:
            for line in lines_in:
                m = AUDIT_LINE.search(line)
                if m:
                    verdict, policy, key, start, end, duration = m.groups()
                    start, end = int(start), int(end)
                    decisions[(policy, key)][0 if verdict == "admit" else 1].append((start, end))
                    records.append((start, float(duration) if duration else end - start, verdict == "admit"))
    policies = meta.get("policies", {})
    audit_rows = []
    audit_failed = False
    for name, policy in policies.items():
        limit, window = policy["limit"], policy["window_ms"]
        keys = [k for (p, k) in decisions if p == name]
        worst = {"certain": 0, "by_start": 0, "unjustified": 0}
        total_admits = total_denies = 0
        for key in keys:
            admits, denies = decisions[(name, key)]
            total_admits += len(admits)
            total_denies += len(denies)
            found = audit_key(admits, denies, limit, window)
            worst["certain"] = max(worst["certain"], found["certain"])
            worst["by_start"] = max(worst["by_start"], found["by_start"])
            worst["unjustified"] += found["unjustified"]
        over = worst["certain"] > limit
        audit_failed |= over or worst["unjustified"] > 0
        audit_rows.append(
            f"| `{name}` | {limit} per {window / 1000:g} s | {len(keys)} | {total_admits} / {total_denies} "
            f"| **{worst['certain']}** (by request start: {worst['by_start']}) "
            f"| {worst['unjustified']} | {'**FAIL**' if over or worst['unjustified'] else 'exact'} |"
        )
    logged = sum(len(a) + len(dn) for a, dn in decisions.values())
    if not args.audit:
        audit_rows = ["| (not run: the scenario ran with AUDIT=0) | | | | | | skipped |"]
        audit_failed = False
    elif logged != ok + denied:
        audit_failed = True
        audit_rows.append(f"| (audit log incomplete: {logged} decisions logged, {ok + denied} counted) | | | | | | **FAIL** |")

    # --- report ------------------------------------------------------------------
    stages = meta.get("stages", [])
    stage_rows = [(str(i), count(f"stage{i}_user_requests"), count(f"stage{i}_user_requests_admitted"))
                  for i in range(1, len(stages) + 1)]
    chart_lines = write_charts(out, records, stage_rows)
    if meta.get("scenario", "staged") != "staged":
        lines = open_model_report(args, meta, metrics, duration_s, audit_rows, chart_lines)
        (out / "report.md").write_text("\n".join(lines) + "\n")
        return 1 if audit_failed else 0
    lines = []
    add = lines.append
    add(f"# {meta.get('scenario', 'k6')}: the original's load test against the fleet")
    add("")
    stage_list = ", ".join(f"{s['users']} users {s['seconds']:g} s" for s in stages)
    add(f"Commit {args.commit}; {args.replicas} release replicas ({args.replica_workers} HTTP worker each) behind nginx "
        f"({args.nginx_workers} workers) running the shipped deploy/nginx/conf.d, one Redis, k6 (GOGC {args.k6_gogc}, nice {args.k6_nice}) — "
        f"all on this machine. Stage scale {meta.get('stage_scale')} "
        f"({stage_list}); "
        f"run time {duration_s:.1f} s. Each user sends one request per second = two checks "
        f"(per-client and global policy), so requests here count checks: twice the original's per user.")
    add("")
    add("| | original (k6, Aug 2025) | slidegate fleet (this run) |")
    add("| --- | ---: | ---: |")
    add(f"| total requests | {ORIGINAL['total']:,} | {total:,} ({users:,} user requests × 2 checks) |")
    add(f"| 200 | {ORIGINAL['ok']:,} (58.2%) | {ok:,} ({pct(ok, total)}) |")
    add(f"| 429 | {ORIGINAL['denied']:,} (41.8%) | {denied:,} ({pct(denied, total)}) |")
    add(f"| errors | 0 | {errors} |")
    for label, key in (("average", "avg"), ("p90", "p90"), ("p95", "p95"), ("p99", "p99")):
        add(f"| {label} latency | {fmt_ms(ORIGINAL[key])} | {fmt_ms(mine[key])} |")
    add(f"| throughput | {ORIGINAL['rps']} req/s (offered) | {rps:.1f} req/s (offered: {users / duration_s if duration_s else 0:.1f} users/s × 2) |")
    add(f"| user requests admitted (both checks 200) | — | {users_ok:,} of {users:,} ({pct(users_ok, users)}) |")
    add("")
    if args.ceiling > 0:
        add(f"Redis ceiling on this machine (redis-benchmark, EVALSHA sliding_log.lua, 150 clients): "
            f"**{args.ceiling:,.0f}/s**; this run's throughput is {100 * rps / args.ceiling:.2f}% of it "
            f"(the load is offered at one request per user per second, not saturating).")
        add("")
    add("## Per stage")
    add("")
    add("| stage | users | seconds | user requests | admitted (both 200) | checks 200 / 429 / errors | check p95 | original's success rate |")
    add("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for i, s in enumerate(stages, 1):
        n = count(f"stage{i}_user_requests")
        a = count(f"stage{i}_user_requests_admitted")
        add(f"| {i} | {s['users']} | {s['seconds']:g} | {n} | {a} ({pct(a, n)}) | "
            f"{count(f'stage{i}_allowed')} / {count(f'stage{i}_denied')} / {count(f'stage{i}_errors')} | "
            f"{fmt_ms(trend(f'stage{i}_latency', 'p(95)'))} | {ORIGINAL_STAGE_SUCCESS[i - 1]} |")
    add("")
    add("## Exactness audit")
    add("")
    add("Per key, from k6's timestamps of every decision (see tests/load/fleet_report.py): the most "
        "admissions certainly inside one trailing window must not exceed the limit, and every 429 "
        "must have had at least `limit` admissions possibly inside its window.")
    add("")
    add("| policy | limit | keys | admitted / denied | most admitted in one window (worst key) | unjustified 429s | verdict |")
    add("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    lines.extend(audit_rows)
    add("")
    lines.extend(chart_lines)
    add(f"k6 exit status {args.k6_status} (0: every threshold held — zero errors, every check passed, "
        f"p95 < {meta.get('p95_threshold_ms')} ms; 99: a threshold was crossed).")
    add("")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return 1 if audit_failed else 0


if __name__ == "__main__":
    sys.exit(main())
