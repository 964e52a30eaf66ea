#!/usr/bin/env python3
"""Summarise bench.py's results.jsonl into markdown tables: the median of each figure over
the repetitions of a case (cases are grouped by their --label), with the repetition count.

    python3 report.py results.jsonl > summary.md
"""
import json
import statistics
import sys
from collections import OrderedDict


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return None
    return statistics.median(xs)


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}"
    return f"{x:,.0f}"


def chunk_ratio(r):
    ch = g(r, "load", "chunks") or []
    if len(ch) < 4:
        return None
    first = statistics.mean(c["rate"] for c in ch[:2])
    last = statistics.mean(c["rate"] for c in ch[-2:])
    return last / first if first else None


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = OrderedDict()
    for r in rows:
        by.setdefault(r["label"], []).append(r)

    def M(rs, *path):
        return med([g(r, *path) for r in rs])

    out = []
    out.append("Medians over repetitions (n = repetitions). Payload 256 B unless the label says pN; "
               "k = messages per user; per-message figures divide the server's growth by the "
               "messages stored.\n")
    out.append("### Memory\n")
    out.append("| case | n | keys/subjects | msgs stored | Redis used_memory Δ per user | per msg | "
               "JS stream bytes/msg | JS Go heap Δ/msg | JS RSS Δ/msg | JS RSS Δ/user | disk B/msg |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for lab, rs in by.items():
        if rs[0]["engine"] == "redis":
            keys = M(rs, "memory", "keys")
            msgs = M(rs, "load", "appends")
            out.append(f"| {lab} | {len(rs)} | {fmt(keys)} | {fmt(msgs)} | {fmt(M(rs, 'memory', 'per_user_B'))} | "
                       f"{fmt(M(rs, 'memory', 'per_msg_B'))} | | | | | |")
        else:
            msgs = M(rs, "memory", "stream_msgs")
            disk = M(rs, "memory", "disk_bytes")
            out.append(f"| {lab} | {len(rs)} | {fmt(M(rs, 'memory', 'num_subjects'))} | {fmt(msgs)} | | | "
                       f"{fmt(M(rs, 'memory', 'stream_bytes_per_msg'))} | {fmt(M(rs, 'memory', 'heap_per_msg_B'))} | "
                       f"{fmt(M(rs, 'memory', 'rss_per_msg_B'))} | {fmt(M(rs, 'memory', 'rss_per_user_B'))} | "
                       f"{fmt(disk / msgs if disk and msgs else None)} |")
    out.append("\n### Publish (one Python client; pipeline/window 256)\n")
    out.append("| case | n | appends/s | server CPU µs/append | client CPU µs/append | batch or ack p50 µs | p99 µs | "
               "last/first tenth rate | serial p50 µs | serial p99 µs | RTT p50 µs |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for lab, rs in by.items():
        lk = "batch_latency" if rs[0]["engine"] == "redis" else "ack_latency"
        cr = med([chunk_ratio(r) for r in rs])
        out.append(f"| {lab} | {len(rs)} | {fmt(M(rs, 'load', 'rate'))} | {fmt(M(rs, 'load', 'server_cpu_us_per_append'), 1)} | "
                   f"{fmt(M(rs, 'load', 'client_cpu_us_per_append'), 1)} | {fmt(M(rs, 'load', lk, 'p50_us'))} | "
                   f"{fmt(M(rs, 'load', lk, 'p99_us'))} | {fmt(cr, 2)} | {fmt(M(rs, 'serial_append', 'p50_us'))} | "
                   f"{fmt(M(rs, 'serial_append', 'p99_us'))} | {fmt(M(rs, 'ping_rtt', 'p50_us'))} |")
    out.append("\n### Replay (one request in flight; random sampled users or positions)\n")
    out.append("| case | n | samples | from start p50 µs | p99 µs | msgs/reply | after first p50 µs | p99 µs | msgs/reply | "
               "short replies | topic: 100 after random pos p50 µs | p99 µs |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lab, rs in by.items():
        short = med([(g(r, "replay_from_start", "short") or 0) + (g(r, "replay_after_first", "short") or 0)
                     + (g(r, "replay_after_pos", "bad") or 0) for r in rs])
        samples = M(rs, "replay_from_start", "n") or M(rs, "replay_after_pos", "n")
        out.append(f"| {lab} | {len(rs)} | {fmt(samples)} | {fmt(M(rs, 'replay_from_start', 'p50_us'))} | "
                   f"{fmt(M(rs, 'replay_from_start', 'p99_us'))} | {fmt(M(rs, 'replay_from_start', 'msgs_avg'), 2)} | "
                   f"{fmt(M(rs, 'replay_after_first', 'p50_us'))} | {fmt(M(rs, 'replay_after_first', 'p99_us'))} | "
                   f"{fmt(M(rs, 'replay_after_first', 'msgs_avg'), 2)} | {fmt(short)} | "
                   f"{fmt(M(rs, 'replay_after_pos', 'p50_us'))} | {fmt(M(rs, 'replay_after_pos', 'p99_us'))} |")
    extra = [(lab, rs) for lab, rs in by.items() if any(k.startswith(("restart_", "after_expiry", "replay_consumer")) for k in rs[0])]
    if extra:
        out.append("\n### Restart, expiry, consumer replay\n")
        for lab, rs in extra:
            r = rs[0]
            for k in sorted(r):
                if k.startswith(("restart_", "after_expiry", "replay_consumer", "replay_from_start_after", "replay_after_first_after")):
                    out.append(f"- {lab} `{k}`: `{json.dumps(r[k])}`")
    out.append("\n### Publish rate and memory by tenth of the load (first repetition)\n")
    for lab, rs in by.items():
        ch = g(rs[0], "load", "chunks") or []
        if len(ch) >= 4:
            rates = " ".join(f"{c['rate']:,}" for c in ch)
            mem = ch[-1].get("used_memory") or ch[-1].get("rss")
            out.append(f"- {lab}: appends/s {rates}")
    errs = [(r["label"], r["error"]) for r in rows if "error" in r]
    if errs:
        out.append("\n### Errors\n")
        for lab, e in errs:
            out.append(f"- {lab}: {e}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
