"""The local history against DESIGN.md's disk budgets, its query time and ingest while
queries run.

    .venv/bin/python tests/bench/bench_history.py [--hours-fast 2] [--seconds 10]

Runs the real :class:`gateway.history.store.HistoryStore` (its SQLite file in a
temporary directory, default ``history:`` settings) in this process:

1. **bytes written per day by history alone**, with simulated time (every flush of the
   span is really written, with its roll-ups and pruning; only the clock is simulated):
   - home load: 50 devices, one message each per 30 s, 3 values per message, a whole day;
   - 1,000 messages/s: 1,000 devices, one message each per second, 3 values, for
     ``--hours-fast`` hours (hourly roll-ups included), scaled to a day.
   Bytes are this process's ``/proc/self/io`` ``wchar`` delta (every byte SQLite hands to
   ``write``/``pwrite``: WAL frames and checkpoints; an upper bound of what reaches the
   card) and ``write_bytes`` after an ``os.sync()`` (what the block layer saw).
2. **query time** for one day of one metric with 1,000 devices (a day of one message per
   device per minute, so the file holds 4.3 M readings): 1-minute and 5-minute steps
   and the last hour raw, p50 and max of 20 queries each.
3. **ingest while queries run**: the :class:`gateway.history.History` component on an
   event loop, 1,000 messages/s (3 readings each) observed in batches of 10 every 10 ms,
   flushing every second; the lateness of each batch against its schedule (the event
   loop's lag, which is what an adapter's ingest sees), p50/p99/max, without and then
   with a client querying a day of one metric back to back in the reader thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from gateway.history import History  # noqa: E402
from gateway.history.config import HistoryConfig  # noqa: E402
from gateway.history.query import Query  # noqa: E402
from gateway.history.store import HistoryStore, Metrics  # noqa: E402
from gateway.reading import Reading  # noqa: E402

#: the start of yesterday (UTC): the simulated day ends where live time begins
T0 = time.time() // 86400 * 86400 - 86400
METRICS = (("temperature", "Cel"), ("humidity", "%RH"), ("battery", "%"))


def io() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["write_bytes"])


def store_in(directory: Path, **cfg: Any) -> HistoryStore:
    store = HistoryStore(HistoryConfig(**cfg), directory / "history.db",
                         Metrics(CollectorRegistry()))
    store.open_sync()
    return store


def messages(devices: int, period: float, start: float, span: float) -> list[Reading]:
    """``devices`` devices, one message (3 readings) each per ``period`` s, in ``[start,
    start + span)``, spread evenly."""
    out: list[Reading] = []
    every = period / devices
    n = int(span / every)
    for j in range(n):
        ts = start + j * every
        device = f"sim:d{j % devices:04d}"
        base = (j // devices) % 100
        out.extend(Reading(device, m, 20.0 + base * 0.1 + k, unit, ts)
                   for k, (m, unit) in enumerate(METRICS))
    return out


def simulate(store: HistoryStore, devices: int, period: float, seconds: float,
             flush: float = 60.0) -> tuple[int, float]:
    """Feed ``seconds`` of simulated time, one flush per ``flush`` s: messages fed, and the
    CPU seconds the observer and the flushes took (building the readings not counted)."""
    msgs = 0
    t = T0
    cpu = 0.0
    while t < T0 + seconds:
        batch = messages(devices, period, t, flush)
        msgs += len(batch) // 3
        c0 = time.process_time()
        store.observe(batch)
        store.flush_sync(store.take(), now=t + flush)
        cpu += time.process_time() - c0
        t += flush
    return msgs, cpu


def disk_row(name: str, devices: int, period: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = store_in(Path(tmp))
        os.sync()
        w0, b0 = io()
        msgs, took = simulate(store, devices, period, seconds)
        store.close_sync()
        os.sync()
        w1, b1 = io()
        status_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
    scale = 86400 / seconds
    return {"name": name, "msgs": msgs, "seconds": seconds, "wchar": w1 - w0,
            "write_bytes": b1 - b0, "per_day": (w1 - w0) * scale,
            "per_msg": (w1 - w0) / msgs, "file": status_bytes, "took": took}


def query_rows() -> list[str]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        # a day of 1-minute buckets of 3,000 series is about 130 MB: beyond the default
        # max_bytes, which would keep only the newest hours of it
        store = store_in(Path(tmp), max_bytes="1GiB")
        msgs, took = simulate(store, 1000, 60.0, 86400)
        size = store.status_sync()["bytes"]
        out.append(f"  file: 1,000 devices x 3 metrics, one message per device per minute, a "
                   f"day ({msgs} messages): {size / 1e6:.1f} MB")
        end = T0 + 86400
        for label, q in (("1 day, step 1m (1,440 buckets)", Query(end - 86400, end, 60)),
                         ("1 day, step 5m (288 buckets)", Query(end - 86400, end, 300)),
                         ("last hour, raw", Query(end - 3600, end, None))):
            times = []
            for _ in range(20):
                t = time.perf_counter()
                answer = store.query_sync("sim:d0500", "temperature", q)
                times.append((time.perf_counter() - t) * 1000)
            series = answer["metrics"]["temperature"]
            n = len(series.get("buckets", series.get("points", [])))
            best = max(times)
            out.append(f"  query {label}: {n} rows, p50 {statistics.median(times):.1f} ms, "
                       f"max {best:.1f} ms{'  OK' if best < 100 else '  OVER 100 ms'}")
        store.close_sync()
    return out


async def ingest(seconds: float, querying: bool, directory: Path) -> dict[str, float]:
    store = HistoryStore(HistoryConfig(flush_interval=1.0, max_bytes="1GiB"),
                         directory / "history.db",
                         Metrics(CollectorRegistry()))
    running = History(store)
    await running.start()
    # the first flush after the simulated day rolls it up and expires its raw rows: once,
    # before the measured window
    await running.flush()
    stop = asyncio.Event()
    queries = 0

    async def client() -> None:
        nonlocal queries
        while not stop.is_set():
            await running.query("sim:d0500", "temperature", Query(T0, T0 + 86400, 60))
            queries += 1

    task = asyncio.create_task(client()) if querying else None
    late: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    j = 0
    while loop.time() - start < seconds:
        due = start + j * 0.01
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append((loop.time() - due) * 1000)
        now = time.time()
        store.observe([Reading(f"sim:d{(j * 10 + i) % 1000:04d}", m, 21.5, u, now)
                       for i in range(10) for m, u in METRICS])
        j += 1
    stop.set()
    if task is not None:
        await task
    await running.stop()
    late.sort()
    return {"p50": late[len(late) // 2], "p99": late[int(len(late) * 0.99)], "max": late[-1],
            "queries": queries / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours-fast", type=float, default=2.0,
                    help="simulated hours at 1,000 messages/s (default 2)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="seconds of each ingest window (default 10)")
    args = ap.parse_args()
    print(f"history benchmark, default history: settings; {os.cpu_count()} cores", flush=True)
    home = disk_row("home load (50 devices, 1 msg/30 s each, 3 values)", 50, 30.0, 86400)
    fast = disk_row("1,000 msg/s (1,000 devices, 1 msg/s each, 3 values)", 1000, 1.0,
                    args.hours_fast * 3600)
    for r in (home, fast):
        print(f"  {r['name']}: {r['msgs']} msgs over {r['seconds'] / 3600:g} h simulated "
              f"(flush CPU {r['took'] / r['msgs'] * 1e6:.1f} us/msg): wchar "
              f"{r['wchar'] / 1e6:.2f} MB, write_bytes "
              f"{r['write_bytes'] / 1e6:.2f} MB = {r['per_day'] / 1e6:.1f} MB/day, "
              f"{r['per_msg']:.1f} B/msg; file {r['file'] / 1e6:.1f} MB", flush=True)
    for line in query_rows():
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # a day of 1,000 devices to query against, then the live ingest on top of it
        store = store_in(Path(tmp), max_bytes="1GiB")
        simulate(store, 1000, 60.0, 86400)
        store.close_sync()
        for querying in (False, True):
            r = asyncio.run(ingest(args.seconds, querying, Path(tmp)))
            what = (f"with queries back to back ({r['queries']:.0f}/s)" if querying
                    else "without queries")
            print(f"  ingest 1,000 msg/s {what}: batch lateness p50 {r['p50']:.2f} ms, "
                  f"p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
