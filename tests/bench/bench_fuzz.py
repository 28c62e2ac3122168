"""Garbage in: what 10,000 bad MQTT messages and 2,000 bad CoAP datagrams cost the daemon.

    .venv/bin/python tests/bench/bench_fuzz.py [--mqtt 10000] [--coap 2000] [--seconds 0]
        [--seed N] [--settle 10] [--exclude KIND ...]

Starts a real mosquitto and ``gateway run`` (MQTT adapter on the json, value, senml and
zigbee2mqtt formats, CoAP adapter, control API, no uplink), registers one valid device
per protocol, warms the daemon up with a little garbage of another seed, then sends
exactly ``--mqtt`` garbage MQTT messages and ``--coap`` garbage CoAP datagrams from
``tests/garbage.py`` (fixed seed; ``--seconds`` spreads them out, 0 sends as fast as
the in-flight windows allow). Prints:

1. the daemon's RSS before the flood, when it is quiet again, and after ``--settle`` s,
   against DESIGN.md's budget (≤ 15 MB growth), and its peak (VmHWM);
2. log lines written from the start of the flood until quiet, per part of the daemon,
   and per bad message (the budget: ≤ 1 a minute per source and reason);
3. malformed counts by reason (readings checks, MQTT decoding, CoAP);
4. seconds from the end of the flood to acceptance of a valid MQTT and a valid CoAP
   reading (their values in the device registry, which sees only committed readings);
5. what the daemon keeps afterwards: devices, their latest values, outbox series.

``--exclude json:many_keys`` (a substring of ``<protocol>:<kind>``, repeatable) leaves
out a kind of garbage, to see which one costs the memory. The generator shares the
machine with the daemon and mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.brokers import Mosquitto, free_port  # noqa: E402
from tests.daemon import GatewayProcess  # noqa: E402
from tests.garbage import (  # noqa: E402
    TOPICS,
    api_get,
    coap_post,
    daemon_config,
    flood,
    log_part,
    publish_one,
    rss_mib,
    samples,
)

VALID = "fz-valid"
BUDGET_MIB = 15.0


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def value(sock: str, device: str, metric: str) -> Any:
    status, body = asyncio.run(api_get(sock, f"/api/devices/{device}"))
    if status != 200 or not isinstance(body, dict):
        return None
    return (body.get("values") or {}).get(metric, {}).get("value")


def wait(check: Any, within: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def activity(sock: str) -> float:
    _, text = asyncio.run(api_get(sock, "/metrics"))
    assert isinstance(text, str)
    return sum(sum(samples(text, n).values()) for n in (
        "gateway_mqtt_messages_total", "gateway_coap_requests_total",
        "gateway_readings_received_total", "gateway_readings_malformed_total"))


def wait_quiet(sock: str, within: float = 60.0, still: float = 1.0) -> float:
    """Seconds until the daemon's input counters stopped moving for ``still`` s."""
    t0 = time.monotonic()
    last, since = activity(sock), time.monotonic()
    while time.monotonic() - t0 < within:
        time.sleep(0.2)
        now = activity(sock)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            return since - t0
    raise SystemExit(f"the daemon was still counting input {within} s after the flood")


def reading(seq: int) -> bytes:
    return json.dumps({"seq": seq, "temperature": 21.5, "ts": time.time()}).encode()


def by_reason(exposition: str, name: str) -> dict[str, float]:
    out: Counter[str] = Counter()
    for labels, v in samples(exposition, name).items():
        d = dict(labels)
        out[f"{d.get('adapter', '?')}:{d.get('reason', d.get('result', '?'))}"] += v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def series_count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM series").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt", type=int, default=10_000)
    ap.add_argument("--coap", type=int, default=2_000)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=20260601)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--exclude", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    broker = Mosquitto(work / "mosquitto").start()
    coap_port = free_port(kind=socket.SOCK_DGRAM)
    state = work / "state"
    gw = GatewayProcess(work / "gw", daemon_config(str(state), broker.port, coap_port))
    try:
        gw.start()
        sock = str(state / "gateway.sock")
        rss_ready = rss_mib(gw.pid)
        asyncio.run(publish_one(broker.port, TOPICS["json"].format(device=VALID), reading(1),
                                "fz-valid-1"))
        asyncio.run(coap_post(coap_port, ("readings", VALID), reading(1)))
        if wait(lambda: value(sock, f"mqtt:{VALID}", "seq") == 1
                and value(sock, f"coap:{VALID}", "seq") == 1, 20) is None:
            raise SystemExit("the valid device's first readings were not accepted")
        asyncio.run(flood(args.seed + 1000, broker.port, coap_port, 300, 100, 0,
                          client_id="fz-warm-up", exclude=tuple(args.exclude)))
        wait_quiet(sock)
        rss_before = rss_mib(gw.pid)
        offset = len(gw.log_path.read_bytes())

        report = asyncio.run(flood(args.seed, broker.port, coap_port, args.mqtt, args.coap,
                                   args.seconds, exclude=tuple(args.exclude)))
        end = time.monotonic()

        async def valid() -> str:
            _, code = await asyncio.gather(
                publish_one(broker.port, TOPICS["json"].format(device=VALID), reading(2),
                            "fz-valid-2"),
                coap_post(coap_port, ("readings", VALID), reading(2)))
            return code

        code = asyncio.run(valid())
        mqtt_ok = wait(lambda: value(sock, f"mqtt:{VALID}", "seq") == 2, 60)
        mqtt_s = time.monotonic() - end if mqtt_ok is not None else None
        coap_ok = wait(lambda: value(sock, f"coap:{VALID}", "seq") == 2, 10)
        coap_s = time.monotonic() - end if coap_ok is not None else None
        quiet_s = wait_quiet(sock)
        rss_quiet = rss_mib(gw.pid)
        lines = gw.log_path.read_bytes()[offset:].decode(errors="replace").splitlines()
        time.sleep(args.settle)  # a benchmark figure: memory a while after the flood
        rss_settled = rss_mib(gw.pid)
        peak = peak_mib(gw.pid)
        _, exposition = asyncio.run(api_get(sock, "/metrics"))
        assert isinstance(exposition, str)
        _, devices = asyncio.run(api_get(sock, "/api/devices?fields=id,values"))
        _, outbox = asyncio.run(api_get(sock, "/api/outbox"))
        alive = gw.proc is not None and gw.proc.poll() is None
        series = series_count(state / "outbox.db")
    finally:
        gw.stop()
        broker.stop()
    log_text = gw.log_text()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    sent = report.mqtt_sent + report.coap_sent
    growth = rss_quiet - rss_before
    print(f"flood: {report.mqtt_sent} MQTT messages ({len(report.sources['mqtt'])} sources), "
          f"{report.coap_sent} CoAP datagrams ({len(report.sources['coap'])} sources) in "
          f"{report.elapsed:.1f} s, seed {args.seed}"
          + (f", excluding {args.exclude}" if args.exclude else ""))
    print(f"daemon alive: {alive}; tracebacks in its log: {log_text.count('Traceback')}")
    print(f"RSS: ready {rss_ready:.1f} MiB, before the flood {rss_before:.1f} MiB, quiet "
          f"{rss_quiet:.1f} MiB (+{growth:.1f}), after {args.settle:.0f} s more "
          f"{rss_settled:.1f} MiB (+{rss_settled - rss_before:.1f}); peak {peak:.1f} MiB; "
          f"budget +{BUDGET_MIB:.0f} MB: {'met' if growth <= BUDGET_MIB else 'MISSED'}")
    parts = Counter(log_part(x) for x in lines)
    print(f"log lines from the flood until quiet: {len(lines)} = {len(lines) / sent:.3f} per "
          f"bad message; by part: {dict(parts.most_common())}")
    print("malformed readings by reason:",
          by_reason(exposition, "gateway_readings_malformed_total"))
    print("MQTT messages by result:", by_reason(exposition, "gateway_mqtt_messages_total"))
    print("MQTT undecodable by reason:", by_reason(exposition, "gateway_mqtt_malformed_total"))
    print("CoAP malformed by reason:", by_reason(exposition, "gateway_coap_malformed_total"))
    print("CoAP dropped by reason:", by_reason(exposition, "gateway_coap_dropped_total"))
    print(f"CoAP answers to the client's garbage: {report.coap_answers}; replies to raw "
          f"datagrams: {report.coap_raw_replies}")
    show = (lambda s: f"{s:.2f} s" if s is not None else "never")  # noqa: E731
    print(f"end of flood → valid reading accepted: MQTT {show(mqtt_s)}, CoAP {show(coap_s)} "
          f"(CoAP answer {code}); input counters quiet {quiet_s:.2f} s after that")
    if isinstance(devices, list):
        values = sum(len(d.get("values") or {}) for d in devices)
        print(f"kept afterwards: {len(devices)} devices with {values} latest values, "
              f"outbox {outbox.get('depth') if isinstance(outbox, dict) else '?'} readings in "
              f"{outbox.get('rows') if isinstance(outbox, dict) else '?'} rows, "
              f"{series} series")


if __name__ == "__main__":
    main()
