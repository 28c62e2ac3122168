"""MQTT path at steady rates (not flat out), against DESIGN.md's budgets.

    .venv/bin/python tests/bench/bench_steady.py [--rates 10,100,500,1000] [--seconds 30]

Starts two real mosquitto brokers (devices, cloud), the real daemon (``gateway run``: the
mqtt adapter, the uplink, the control API on its Unix socket, ``store: synchronous: full``)
and a recording cloud subscriber. A publisher process simulates 100 devices (``d000`` ..
``d099``, one MQTT connection each) publishing ``devices/<id>/telemetry`` at QoS 1: four
values plus ``seq`` (per device) and ``ts`` (device time). Messages go out on a fixed
schedule, the devices interleaved, so the total is exactly the given rate: message ``j`` of
a run is sent at ``t0 + j / rate`` by device ``j % 100`` with seq ``j // 100``.

For each rate, after ``--warmup`` seconds, over ``--seconds`` it measures:

- CPU µs per message: the daemon's utime + stime delta / messages of the window (clock
  ticks of 10 ms, so at low rates the figure is coarse: ± 10 ms / messages);
- disk bytes written per message: the daemon's ``/proc/PID/io`` ``write_bytes`` delta /
  messages (the daemon's log goes to a file too; it runs at ``warning`` so it logs nothing
  on the healthy path);
- outbox commits per second: ``gateway_outbox_commits_total`` from ``/metrics`` (each
  commit, appends and cloud acknowledgements alike, is one WAL sync, fdatasync, under
  ``synchronous=full``; WAL checkpoints sync the database file besides, not counted);
- device-to-cloud latency p50/p99: the message's ``ts`` to the cloud subscriber's receipt
  time, for the messages of the window;
- loss: every (device, seq) of the window arrived at the cloud.

With ``--cloud-down`` the uplink is off, so no batch is acknowledged before its commit:
every one is written (the outage case); latency and loss are not measured then.

Then a home-load row (50 devices, one message each per 30 s, for ``--seconds``) with the
bytes written extrapolated to a day, and two idle rows (no device publishing, uplink
connected) with the bytes written per minute: once before any device has published, once
3 s after the home load (where the registry's periodic write may still land).

Publishers, brokers and the cloud subscriber share the machine's cores with the gateway;
``late`` is how far behind its schedule the publisher fell at worst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
UPLINK_EXTRA = json.loads(os.environ.get("BENCH_UPLINK", "{}"))
sys.path.insert(0, str(ROOT))

from tests.bench.bench_coap_memory import scrape  # noqa: E402
from tests.bench.bench_mqtt import cpu_seconds, runqueue_wait, write_bytes  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.cloud_sink import CloudSink  # noqa: E402
from tests.daemon import GatewayProcess  # noqa: E402

DEVICES = 100
HOME_DEVICES = 50
HOME_PERIOD = 30.0  # seconds between two messages of one home device

# -- publisher process ----------------------------------------------------------------------


def device_id(i: int) -> str:
    return f"d{i:03d}"


async def _publish(port: int, n: int, rate: float, total: int, status: str) -> None:
    import gmqtt

    clients = []
    for i in range(n):
        c = gmqtt.Client(f"steady-{device_id(i)}")
        await c.connect("127.0.0.1", port, keepalive=60)
        clients.append(c)
    t0 = time.time() + 0.5
    print(f"{t0:.6f}", flush=True)  # the schedule's origin, for the measuring side
    late = 0.0
    for j in range(total):
        due = t0 + j / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        i, seq = j % n, j // n
        now = time.time()
        payload = (f'{{"temperature":{20 + (seq % 100) / 10:.2f},"humidity":'
                   f'{40 + (seq % 50) / 5:.1f},"pressure":{1000 + seq % 30},'
                   f'"battery":{100 - seq % 100},"seq":{seq},"ts":{now:.6f}}}')
        clients[i].publish(f"devices/{device_id(i)}/telemetry", payload.encode(), qos=1)
    deadline = time.monotonic() + 60
    # wait for the PUBACKs (gmqtt offers no event for it)
    while any(c._persistent_storage._messages for c in clients) \
            and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    unacked = sum(len(c._persistent_storage._messages) for c in clients)
    for c in clients:
        await c.disconnect()
    Path(status).write_text(json.dumps({"late": late, "unacked": unacked}))  # noqa: ASYNC240


def publisher_main(argv: list[str]) -> None:
    port, n, rate, total, status = argv
    asyncio.run(_publish(int(port), int(n), float(rate), int(total), status))


# -- measuring ------------------------------------------------------------------------------


def metrics(sock: Path) -> dict[str, float]:
    return scrape(sock, ("gateway_outbox_commits_total", "gateway_uplink_connected",
                         "gateway_mqtt_connected"))


def metric_sum(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def registry_mtime(sock: Path) -> float:
    """When the device registry file (written every core flush_interval) last changed."""
    try:
        return (sock.parent / "devices.json").stat().st_mtime
    except OSError:
        return 0.0


class Sample:
    def __init__(self, pid: int, sock: Path) -> None:
        self.t = time.time()
        self.registry = registry_mtime(sock)
        self.cpu = cpu_seconds(pid)
        self.io = write_bytes(pid)
        self.wait = runqueue_wait(pid)
        self.commits = metric_sum(metrics(sock), "gateway_outbox_commits_total")


def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def arrivals(sink: CloudSink) -> dict[tuple[int, int], tuple[float, float]]:
    """(device index, seq) → (device ts, cloud receipt time), first receipt only."""
    from gateway.uplink.formats import decode_json_batch

    out: dict[tuple[int, int], tuple[float, float]] = {}
    for m in sink.messages("/telemetry"):
        for r in decode_json_batch(m["payload"]):
            if r.metric == "seq" and r.device.startswith("mqtt:d"):
                key = (int(r.device[len("mqtt:d"):]), int(r.value))
                out.setdefault(key, (r.ts, m["t"]))
    return out


def run_phase(ctx: dict[str, Any], name: str, n: int, rate: float, warm: float,
              seconds: float) -> dict[str, Any]:
    """Publish at ``rate`` from ``n`` devices for warm + seconds; measure the window."""
    work: Path = ctx["work"]
    pid, sock = ctx["gw"].pid, ctx["sock"]
    first = math.ceil(warm * rate)
    last = math.ceil((warm + seconds) * rate)  # window is messages first..last-1
    total = last + max(1, math.ceil(rate * 0.5))  # a little past the window
    window = {(j % n, j // n) for j in range(first, last)}
    sent = {(j % n, j // n) for j in range(total)}
    sink = CloudSink(ctx["cloud_port"], work / f"cloud-{name}.jsonl")
    status = work / f"pub-{name}.json"
    pub = subprocess.Popen([sys.executable, __file__, "--publisher", str(ctx["dev_port"]),
                            str(n), str(rate), str(total), str(status)],
                           cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert pub.stdout is not None
        t0 = float(pub.stdout.readline())
        sleep_until(t0 + first / rate)
        a = Sample(pid, sock)
        sleep_until(t0 + last / rate)
        b = Sample(pid, sock)
        pub.wait(seconds + 120)
        deadline = time.monotonic() + (0 if ctx.get("cloud_down") else 60)
        while True:
            got = arrivals(sink)
            # all of the run, not only the window: no straggler reaches the next row's sink
            if sent <= got.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait(10)
        sink.stop()
    pstat = json.loads(status.read_text()) if status.exists() else {"late": math.nan,
                                                                     "unacked": -1}
    lat = sorted((got[k][1] - got[k][0]) * 1000 for k in window if k in got)
    msgs = len(window)
    span = b.t - a.t
    return {
        "rate": rate, "msgs": msgs, "span": span,
        "cpu_us": (b.cpu - a.cpu) * 1e6 / msgs,
        "bytes": b.io - a.io, "b_msg": (b.io - a.io) / msgs,
        "commits_s": (b.commits - a.commits) / span,
        "wait_s": b.wait - a.wait,
        "p50": statistics.median(lat) if lat else math.nan,
        "p99": lat[max(0, math.ceil(len(lat) * 0.99) - 1)] if lat else math.nan,
        "missing": msgs - len(lat), "late_ms": pstat["late"] * 1000,
        "unacked": pstat["unacked"],
        "registry": registry_mtime(sock) > a.registry,
    }


def run_idle(ctx: dict[str, Any], seconds: float) -> dict[str, Any]:
    pid, sock = ctx["gw"].pid, ctx["sock"]
    a = Sample(pid, sock)
    time.sleep(seconds)
    b = Sample(pid, sock)
    span = b.t - a.t
    return {"span": span, "bytes": b.io - a.io, "commits_s": (b.commits - a.commits) / span,
            "cpu_s": b.cpu - a.cpu, "registry": b.registry > a.registry}


# -- report ---------------------------------------------------------------------------------

CPU_BUDGET = {1000.0: 50, 500.0: 80}
BYTES_BUDGET = {1000.0: 150, 100.0: 800}
P99_BUDGET = {1000.0: 50}


def verdict(value: float, budget: float | None) -> str:
    if budget is None:
        return ""
    return f" (<= {budget:g} {'ok' if value <= budget else 'OVER'})"


def print_rate_row(r: dict[str, Any]) -> None:
    rate = r["rate"]
    loss = "0 lost" if r["missing"] == 0 else f"{r['missing']} LOST"
    if math.isnan(r["p50"]):  # the cloud is down: every batch is committed
        print(f"  {rate:>6g} msg/s  {r['msgs']:>6} msgs  "
              f"CPU {r['cpu_us']:6.1f} us/msg  disk {r['b_msg']:6.0f} B/msg  "
              f"commits {r['commits_s']:5.1f}/s  cloud down: every batch committed; "
              f"{r['unacked']} unacknowledged at the devices after the run "
              f"[late {r['late_ms']:.0f} ms]")
        return
    print(f"  {rate:>6g} msg/s  {r['msgs']:>6} msgs  "
          f"CPU {r['cpu_us']:6.1f} us/msg{verdict(r['cpu_us'], CPU_BUDGET.get(rate))}  "
          f"disk {r['b_msg']:6.0f} B/msg{verdict(r['b_msg'], BYTES_BUDGET.get(rate))}  "
          f"commits {r['commits_s']:5.1f}/s  "
          f"latency p50 {r['p50']:5.1f} ms p99 {r['p99']:5.1f} ms"
          f"{verdict(r['p99'], P99_BUDGET.get(rate))}  {loss}  "
          f"[late {r['late_ms']:.0f} ms, gw run-queue wait {r['wait_s']:.2f} s"
          f"{', registry file written' if r['registry'] else ''}]")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rates", default="10,100,500,1000", help="messages/s, comma-separated")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per row")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    p.add_argument("--cloud-down", action="store_true",
                   help="no uplink: every batch waits for its commit (the outage case)")
    args = p.parse_args()
    rates = [float(x) for x in args.rates.split(",") if x.strip()]

    work = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    state = work / "state"
    devices = Mosquitto(work / "devices").start()
    cloud_broker = Mosquitto(work / "cloud").start()
    gw = GatewayProcess(work / "gw", {
        "gateway": {"id": "steady", "state_dir": str(state), "log_level": "warning"},
        "store": {"synchronous": "full"},
        "uplink": {"host": "127.0.0.1", "port": cloud_broker.port, **UPLINK_EXTRA,
                   **({"enabled": False} if args.cloud_down else {})},
        "api": {"enabled": True},
        "adapters": [{"type": "mqtt", "port": devices.port, "client_id": "steady-gw",
                      "subscriptions": [{"topic": "devices/{device}/telemetry",
                                         "timestamp": "ts"}]}],
    })
    sock = state / "gateway.sock"
    results: list[dict[str, Any]] = []
    try:
        # readiness is logged at info and the daemon runs at warning: wait on /metrics
        gw.start(wait_ready=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                m = metrics(sock)
                if (args.cloud_down or metric_sum(m, "gateway_uplink_connected") >= 1) \
                        and metric_sum(m, "gateway_mqtt_connected") >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or (gw.proc and gw.proc.poll() is not None):
                raise RuntimeError(f"gateway not ready:\n{gw.log_text()[-4000:]}")
            time.sleep(0.1)
        ctx = {"work": work, "gw": gw, "sock": sock, "dev_port": devices.port,
               "cloud_port": cloud_broker.port, "cloud_down": args.cloud_down}
        print(f"steady MQTT rates, {DEVICES} devices, QoS 1, 4 values + seq + ts per "
              f"message, store synchronous=full; {args.warmup:g} s warm-up, "
              f"{args.seconds:g} s window per row; {os.cpu_count()} cores", flush=True)
        time.sleep(2)  # past start-up's own writes
        idle0 = run_idle(ctx, args.seconds)
        for rate in rates:
            r = run_phase(ctx, f"r{rate:g}", DEVICES, rate, args.warmup, args.seconds)
            results.append(r)
            print_rate_row(r)
            sys.stdout.flush()
        home_rate = HOME_DEVICES / HOME_PERIOD
        home = run_phase(ctx, "home", HOME_DEVICES, home_rate, 1.0, args.seconds)
        time.sleep(3)  # let the last acknowledgements commit before idling
        idle = run_idle(ctx, args.seconds)
        log = gw.log_text()
    finally:
        gw.stop()
        devices.stop()
        cloud_broker.stop()

    per_day = home["bytes"] / home["span"] * 86400
    loss = "0 lost" if home["missing"] == 0 else f"{home['missing']} LOST"
    print(f"  home load: {HOME_DEVICES} devices, 1 message each per {HOME_PERIOD:g} s "
          f"({home_rate:.2f} msg/s), {home['msgs']} msgs in {home['span']:.0f} s: "
          f"{home['bytes']} B written = {home['b_msg']:.0f} B/msg, "
          f"{per_day / 1e6:.1f} MB/day{verdict(per_day / 1e6, 100)}; "
          f"commits {home['commits_s']:.2f}/s; CPU {home['cpu_us']:.0f} us/msg; "
          f"latency p50 {home['p50']:.1f} ms p99 {home['p99']:.1f} ms; {loss}"
          f"{'; registry file written' if home['registry'] else ''}")
    for label, i in (("before any device", idle0), ("3 s after the last message", idle)):
        per_min = i["bytes"] / i["span"] * 60
        print(f"  idle {label} (uplink connected), {i['span']:.0f} s: "
              f"{i['bytes']} B written = {per_min:.0f} B/min{verdict(per_min, 0)}; "
              f"commits {i['commits_s']:.2f}/s; CPU {i['cpu_s'] * 1000:.0f} ms"
              f"{'; registry file written' if i['registry'] else ''}")
    print("  CPU = daemon utime+stime delta / messages (10 ms ticks); disk = /proc/PID/io "
          "write_bytes delta; commits = gateway_outbox_commits_total delta per second (one "
          "WAL fdatasync each under synchronous=full; checkpoint syncs not counted); "
          "'registry file written' = devices.json (rewritten every devices.flush_interval, "
          "15 min by default, or soon after a new device) changed in the window")
    bad = [r for r in [*results, home] if r["unacked"]]
    if bad:
        print(f"  warning: publisher left {sum(r['unacked'] for r in bad)} message(s) "
              "without PUBACK")
    if "Traceback" in log:
        print("  warning: the gateway log has a traceback:\n" + log[-3000:])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publisher":
        publisher_main(sys.argv[2:])
    else:
        main()
