#!/usr/bin/env python3
"""An independent computation of kedge's `deadband <field> <delta> | window <ms> mean max count`
route, for test/routes.test.ts: reads the raw records (as read back from the site cluster with
kcat) as JSON lines {"seq", "key", "ts", "value"} on stdin, and prints {kedge-id: aggregate} as
JSON. Written from the README's description of the steps, not from kedge's code.

Usage: route-reference.py AGENT DEST ROUTE FIELD DELTA WINDOW_MS [UNTIL_MS]
Windows that end after UNTIL_MS (the last time the test let pass) are left out: still open.
"""
import json
import sys

agent, dest, route, field, delta, window_ms = sys.argv[1:7]
delta = float(delta)
window_ms = int(window_ms)
until = int(sys.argv[7]) if len(sys.argv) > 7 else None

records = [json.loads(line) for line in sys.stdin if line.strip()]
records.sort(key=lambda r: r["seq"])

last_passed = {}  # key -> last value the deadband let through
windows = {}  # key -> [start, count, sum, n, max]
out = {}


def close(key, w):
    start, count, total, n, mx = w
    out[f"{agent}:{dest}:{route}:{key}:{start}"] = {
        "window_start": start,
        "window_end": start + window_ms,
        "count": count,
        f"{field}_mean": (total / n) if n else None,
        f"{field}_max": mx,
    }


for r in records:
    key = r["key"]
    try:
        doc = json.loads(r["value"])
    except ValueError:
        continue
    v = doc.get(field) if isinstance(doc, dict) else None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        continue
    prev = last_passed.get(key)
    if prev is not None and abs(v - prev) < delta:
        continue
    last_passed[key] = v
    start = (r["ts"] // window_ms) * window_ms
    w = windows.get(key)
    if w is not None and start >= w[0] + window_ms:
        close(key, w)
        w = None
    if w is None:
        w = [start, 0, 0.0, 0, None]
        windows[key] = w
    w[1] += 1
    w[2] += v
    w[3] += 1
    w[4] = v if w[4] is None else max(w[4], v)

for key, w in windows.items():
    if until is None or w[0] + window_ms <= until:
        close(key, w)

json.dump(out, sys.stdout)
