"""Resident memory of the daemon running the CoAP adapter: under garbage, and at a steady rate.

    .venv/bin/python tests/bench/bench_coap_memory.py [--garbage 2000] [--rate 500] [--seconds 300]

Starts ``gateway run`` with the coap adapter only (``uplink: {enabled: false}``; the control
API on its Unix socket, for ``/metrics``) on a free loopback UDP port, warms it up with 500
valid POSTs, then:

1. Garbage: ``--garbage`` hostile datagrams from one socket (``tests.test_coap_hostile.
   garbage``: random bytes, truncated headers, options cut short or not UTF-8, unknown
   critical options, content formats nobody registered, bad JSON/CBOR/SenML, bignums, deep
   nesting, Block1 abuse, types and codes that do not fit), in bursts of 10 every 20 ms
   (faster, the socket's receive buffer overflows and the kernel drops them unseen).
   Prints RSS (VmRSS) before and 5 s after, and the log lines the daemon wrote meanwhile.
2. Steady load: valid CON POSTs (JSON, 4 readings, built by hand as in ``bench_coap``) at
   ``--rate`` per second for ``--seconds``, from 32 sockets, each with its own message-id
   space; separate responses are acknowledged. Prints RSS every 30 s, at the end, and
   the duplicate cache's size (``gateway_coap_duplicate_cache_entries``).

``--pythonpath DIR`` runs the daemon from another source tree (e.g. ``git archive`` of an
earlier commit unpacked in DIR) to compare. The load generator shares the machine's cores
with the daemon.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiocoap import CON, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402

from tests.bench.bench_coap import _EMPTY_ACK, request  # noqa: E402
from tests.brokers import free_port  # noqa: E402
from tests.daemon import GatewayProcess  # noqa: E402
from tests.test_coap_hostile import garbage  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(sock_path: Path, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Samples of ``/metrics`` whose names start with one of ``prefixes``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks).split(b"\r\n\r\n", 1)[-1].decode()
    out = {}
    for line in body.splitlines():
        if line.startswith(prefixes):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def drain(socks: list[socket.socket], timeout: float) -> list[Message]:
    """Answers waiting on ``socks`` (separate responses acknowledged)."""
    got = []
    ready, _, _ = select.select(socks, [], [], timeout)
    for s in ready:
        while True:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                break
            try:
                reply = Message.decode(data)
            except Exception:  # noqa: BLE001 - the generator only counts
                continue
            if reply.mtype == CON:
                s.send(_EMPTY_ACK + reply.mid.to_bytes(2, "big"))
            got.append(reply)
    return got


def send_garbage(host: str, port: int, n: int) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.setblocking(False)
    answers = 0
    datagrams = list(garbage(random.Random(2000), n))
    t0 = time.monotonic()
    for start in range(0, n, 10):
        for d in datagrams[start:start + 10]:
            s.send(d)
        slot = t0 + (start // 10 + 1) * 0.02
        while (left := slot - time.monotonic()) > 0:
            answers += len(drain([s], left))
    end = time.monotonic() + 2
    while time.monotonic() < end:
        answers += len(drain([s], 0.2))
    s.close()
    return answers


def steady(host: str, port: int, rate: float, seconds: float, pid: int,
           every: float = 30.0) -> dict[str, float]:
    socks = []
    for _ in range(32):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    names = [f"mem-{i:02d}" for i in range(len(socks))]
    seq = 0
    codes: dict[str, int] = {}
    t0 = time.monotonic()
    next_sample = t0 + every
    samples = []
    while True:
        now = time.monotonic()
        if now >= t0 + seconds:
            break
        due = int((now - t0) * rate)
        while seq < due:
            i = seq % len(socks)
            n = seq // len(socks)
            if n > 0xFFFF:
                raise SystemExit("message ids would repeat: lower --rate or --seconds")
            socks[i].send(request(names[i], n, seq))
            seq += 1
        for reply in drain(socks, 0.002):
            if reply.code != Code.EMPTY:
                codes[reply.code.dotted] = codes.get(reply.code.dotted, 0) + 1
        if now >= next_sample:
            samples.append((now - t0, rss_mib(pid)))
            print(f"  {now - t0:6.0f} s: RSS {samples[-1][1]:.1f} MiB, {seq} sent, "
                  f"{codes.get('2.04', 0)} acknowledged", flush=True)
            next_sample += every
    end = time.monotonic() + 5
    while time.monotonic() < end:
        for reply in drain(socks, 0.1):
            if reply.code != Code.EMPTY:
                codes[reply.code.dotted] = codes.get(reply.code.dotted, 0) + 1
    for s in socks:
        s.close()
    return {"sent": seq, "acknowledged": codes.get("2.04", 0),
            "other": sum(v for k, v in codes.items() if k != "2.04"),
            "rate": seq / seconds, "max_rss": max((r for _, r in samples), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--garbage", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--pythonpath", help="run the daemon from this source tree")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-coap-memory-"))
    host, port = "127.0.0.1", free_port(kind=socket.SOCK_DGRAM)
    state = tmp / "state"
    config = {
        "gateway": {"id": "bench-coap-memory", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "adapters": [{"type": "coap", "bind": host, "port": port}],
    }
    env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else None
    gw = GatewayProcess(tmp / "gw", config, env=env).start()
    prefixes = ("gateway_coap_malformed_total", "gateway_coap_dropped_total",
                "gateway_coap_duplicate_cache_entries", "gateway_coap_requests_total")
    try:
        warm = steady(host, port, 500.0, 1.0, gw.pid, every=60.0)
        time.sleep(2)
        rss0 = rss_mib(gw.pid)
        lines0 = len(gw.log_text().splitlines())
        answers = send_garbage(host, port, args.garbage)
        time.sleep(3)
        rss1 = rss_mib(gw.pid)
        lines1 = len(gw.log_text().splitlines())
        print(f"warm-up: {warm['acknowledged']} of {warm['sent']} POSTs acknowledged")
        print(f"garbage: {args.garbage} datagrams, {answers} answers; RSS {rss0:.1f} → "
              f"{rss1:.1f} MiB ({rss1 - rss0:+.1f}); {lines1 - lines0} log lines")
        try:
            for name, value in sorted(scrape(state / "gateway.sock", prefixes).items()):
                print(f"  {name} {value:g}")
        except OSError as exc:
            print(f"  (no metrics: {exc})")
        print(f"steady: {args.rate:g} POSTs/s for {args.seconds:g} s")
        r = steady(host, port, args.rate, args.seconds, gw.pid)
        time.sleep(1)
        rss2 = rss_mib(gw.pid)
        print(f"steady: {r['sent']} sent ({r['rate']:.0f}/s), {r['acknowledged']} acknowledged, "
              f"{r['other']} other answers; RSS {rss1:.1f} → {rss2:.1f} MiB "
              f"({rss2 - rss1:+.1f}), highest sample {r['max_rss']:.1f} MiB")
        try:
            for name, value in sorted(scrape(state / "gateway.sock", prefixes).items()):
                if "duplicate" in name or "2.04" in name:
                    print(f"  {name} {value:g}")
        except OSError as exc:
            print(f"  (no metrics: {exc})")
    finally:
        gw.stop()
    print(f"daemon log: {gw.log_path}")
    if os.environ.get("BENCH_SHOW_LOG"):
        print(gw.log_text()[-5000:])


if __name__ == "__main__":
    main()
