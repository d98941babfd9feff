#!/usr/bin/env python3
"""Writes report.md for a fleet_run.sh run: the original's table side by side,
per-stage success rates, and the exactness audit. Standard library only.

Input, in --out: summary.json (k6 handleSummary of staged.js) and
k6-console.log (the scenario's "AUDIT admit|deny policy key start_ms end_ms"
lines). Exit 1 when the audit finds a violation.

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

AUDIT_LINE = re.compile(r'AUDIT (admit|deny) (\S+) (\S+) (\d+) (\d+)')


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--ceiling", type=float, default=0)
    parser.add_argument("--k6-status", type=int, default=0)
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
    console = out / "k6-console.log"
    if console.exists():
        for line in console.read_text().splitlines():
            m = AUDIT_LINE.search(line)
            if m:
                verdict, policy, key, start, end = m.groups()
                decisions[(policy, key)][0 if verdict == "admit" else 1].append((int(start), int(end)))
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
    if logged != ok + denied:
        audit_failed = True
        audit_rows.append(f"| (audit log incomplete: {logged} decisions logged, {ok + denied} counted) | | | | | | **FAIL** |")

    # --- report ------------------------------------------------------------------
    lines = []
    add = lines.append
    add(f"# {meta.get('scenario', 'k6')}: the original's load test against the fleet")
    add("")
    stages = meta.get("stages", [])
    stage_list = ", ".join(f"{s['users']} users {s['seconds']:g} s" for s in stages)
    add(f"Commit {args.commit}; {args.replicas} release replicas behind nginx "
        f"({args.nginx_workers} worker) running the shipped deploy/nginx/conf.d, one Redis, k6 — "
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
    add(f"k6 exit status {args.k6_status} (0: every threshold held — zero errors, every check passed, "
        f"p95 < {meta.get('p95_threshold_ms')} ms; 99: a threshold was crossed).")
    add("")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return 1 if audit_failed else 0


if __name__ == "__main__":
    sys.exit(main())
