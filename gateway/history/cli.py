"""``gateway history DEVICE [METRIC] [--since 1h] [--until ...] [--step 5m] [--json]``.

The ``history`` group of the ``gateway.commands`` entry points: it asks the running
daemon's control API (``GET /api/devices/{id}/history``) and prints a table per metric.
Exit codes as for the other daemon commands: 0 done, 1 refused, 2 bad usage, 3 the
daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import time
from urllib.parse import quote, urlencode

from gateway.plugins import CommandHost as Cli


def register(cli: Cli) -> None:
    """Add ``gateway history``."""
    p = cli.add("history", "readings a device sent, from the gateway's local history",
                lambda args: _history(args, cli))
    cli.daemon_options(p)
    p.add_argument("device", help="device id, e.g. sim:sim-0001")
    p.add_argument("metric", nargs="?", help="one metric (default: every metric)")
    p.add_argument("--since", default="1h",
                   help="start: a duration ago (15m, 1h, 7d), UNIX seconds or ISO 8601 "
                        "(default 1h)")
    p.add_argument("--until", help="end, in the same forms (default now)")
    p.add_argument("--step", help="bucket size (5m, 1h) or 'raw' (default: raw for "
                                  "recent spans, else buckets giving at most 1,000 rows)")
    p.add_argument("--stats", action="store_true",
                   help="print the history file's status instead (size, pruned, flushes)")


def path_for(device: str, metric: str | None, since: str | None, until: str | None,
             step: str | None) -> str:
    """The API path of one history query."""
    params = {k: v for k, v in (("metric", metric), ("since", since), ("until", until),
                                ("step", step)) if v}
    query = f"?{urlencode(params)}" if params else ""
    return f"/api/devices/{quote(device, safe=':')}/history{query}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(v: float) -> str:
    return f"{v:.6g}"


def _history(args: argparse.Namespace, cli: Cli) -> int:
    client = cli.client(args)
    if args.stats:
        print(json.dumps(client.call("GET", "/api/history"), indent=2))
        return 0
    answer = client.call("GET", path_for(args.device, args.metric, args.since, args.until,
                                         args.step))
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    metrics = answer.get("metrics") or {}
    if not metrics:
        print(f"{args.device}: no numeric readings in the history for this span")
        return 0
    for name, series in metrics.items():
        unit = f" ({series['unit']})" if series.get("unit") else ""
        if "points" in series:
            print(f"{name}{unit}: {len(series['points'])} reading(s)")
            for ts, v in series["points"]:
                print(f"  {_when(ts)}  {_num(v)}")
        else:
            print(f"{name}{unit}: {len(series['buckets'])} bucket(s) of {answer['step']} s "
                  f"(resolution {series.get('resolution')})")
            print("  start                min         avg         max         count")
            for start, lo, avg, hi, n in series["buckets"]:
                print(f"  {_when(start)}  {_num(lo):<10}  {_num(avg):<10}  {_num(hi):<10}"
                      f"  {n}")
    if answer.get("truncated"):
        print("(only the newest readings are shown; give --step for buckets)")
    pruned = answer.get("pruned") or {}
    if pruned:
        print("pruned so far: " + ", ".join(f"{k} {v}" for k, v in sorted(pruned.items())))
    return 0
