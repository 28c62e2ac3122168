"""CoAP POSTs accepted per second and gateway CPU per request, against the real daemon.

    /work/venv/bin/python tests/bench/bench_coap.py [--seconds 10] [--window 64] [--devices 32]

Starts ``gateway run`` with the coap adapter only (``uplink: {enabled: false}``, so every
accepted reading stays in the outbox) on a free loopback UDP port. The load generator is
this process: ``--devices`` UDP sockets (one per simulated device, each with its own
message-id space so the gateway's duplicate detection never answers from its cache), CON
POSTs of ``{"temperature", "humidity", "seq", "ts"}`` (JSON, 4 readings) to
``/readings/<device>``, at most ``--window`` unanswered at once. Only 2.04 answers count
as accepted (a 2.04 is sent after the outbox commit). Prints requests/s accepted, answer
latency p50/p99, and the daemon's CPU µs per request (utime + stime from /proc over the
run), then checks that the outbox holds every acknowledged reading.

``--target HOST:PORT --pid PID`` runs the same load against a daemon started elsewhere.
The generator shares the machine's cores with the gateway: the rate is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiocoap import CON, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402

#: CoAP header of an empty ACK (version 1, type ACK, TKL 0, code 0.00); the mid follows
_EMPTY_ACK = bytes([0x60, 0x00])

from tests.brokers import free_port  # noqa: E402
from tests.daemon import GatewayProcess  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request(device: str, mid: int, seq: int) -> bytes:
    """A CON POST, built by hand: aiocoap's encoder would cost the generator more CPU."""
    payload = (f'{{"temperature":{20 + (seq % 100) / 10:.2f},"humidity":'
               f'{40 + (seq % 50) / 5:.1f},"seq":{seq},"ts":{time.time():.3f}}}').encode()
    token = mid.to_bytes(2, "big")
    path = device.encode()
    # ver 1, CON, TKL 2; 0.02 POST; Uri-Path (11) "readings", Uri-Path device,
    # Content-Format (12) 50; payload marker
    opts = bytes([0xB8]) + b"readings" + _option(0, len(path)) + path + bytes([0x11, 50])
    return bytes([0x42, 0x02]) + mid.to_bytes(2, "big") + token + opts + b"\xff" + payload


def _option(delta: int, length: int) -> bytes:
    if length < 13:
        return bytes([(delta << 4) | length])
    return bytes([(delta << 4) | 13, length - 13])


def load(host: str, port: int, seconds: float, window: int, devices: int) -> dict[str, float]:
    """Send CON POSTs for ``seconds`` with ``window`` in flight; count the answers."""
    socks = []
    for _ in range(devices):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    names = [f"bench-{i:03d}" for i in range(devices)]
    seqs = [0] * devices
    sent_at: dict[tuple[int, int], float] = {}
    codes: dict[str, int] = {}
    latencies: list[float] = []
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    t0 = time.monotonic()
    end = t0 + seconds
    nxt = 0
    lost = 0
    separate = 0
    while True:
        now = time.monotonic()
        # keep the window full while the run lasts, spreading requests over the devices
        while now < end and len(sent_at) < window:
            i = nxt % devices
            nxt += 1
            mid = seqs[i] & 0xFFFF
            if seqs[i] > 0xFFFF:
                raise SystemExit("message ids would repeat: use more --devices")
            socks[i].send(request(names[i], mid, seqs[i]))
            sent_at[(i, mid)] = time.monotonic()
            seqs[i] += 1
        if not sent_at:
            break
        if now > end + 10:  # bounded: whatever is still unanswered counts as lost
            lost = len(sent_at)
            break
        ready, _, _ = select.select(socks, [], [], 0.5)
        for s in ready:
            i = by_fd[s.fileno()]
            for _ in range(64):
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                reply = Message.decode(data)
                if reply.mtype == CON:  # a separate response: acknowledge it
                    s.send(_EMPTY_ACK + reply.mid.to_bytes(2, "big"))
                    separate += 1
                if reply.code == Code.EMPTY:
                    continue  # the server's "working on it" ACK; the answer follows
                key = (i, int.from_bytes(reply.token, "big"))
                started = sent_at.pop(key, None)
                if started is None:
                    continue  # a retransmitted answer we already counted
                latencies.append(time.monotonic() - started)
                code = reply.code.dotted
                codes[code] = codes.get(code, 0) + 1
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    latencies.sort()
    return {
        "sent": float(sum(seqs)),
        "accepted": float(codes.get("2.04", 0)),
        "other": float(sum(n for c, n in codes.items() if c != "2.04")),
        "lost": float(lost),
        "separate": float(separate),
        "elapsed": elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def outbox_readings(db: Path) -> int:
    """Readings the outbox holds, counted through the daemon's own reader."""
    sys.path.insert(0, str(ROOT))
    from gateway.store.config import StoreConfig
    from gateway.store.outbox import Outbox

    async def count() -> int:
        outbox = await Outbox.open(db, StoreConfig(), metrics=None)
        try:
            return outbox.stats().depth
        finally:
            await outbox.close()

    try:
        return asyncio.run(count())
    except sqlite3.Error:
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--target", help="HOST:PORT of a running daemon's coap adapter")
    ap.add_argument("--pid", type=int, help="PID of that daemon (for its CPU time)")
    args = ap.parse_args()

    gw: GatewayProcess | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-coap-"))
    if args.target:
        host, port_s = args.target.rsplit(":", 1)
        port, pid = int(port_s), args.pid
    else:
        host, port = "127.0.0.1", free_port(kind=socket.SOCK_DGRAM)
        config = {
            "gateway": {"id": "bench-coap", "state_dir": str(tmp / "state")},
            "uplink": {"enabled": False},
            "api": {"enabled": False},
            "adapters": [{"type": "coap", "bind": host, "port": port}],
        }
        gw = GatewayProcess(tmp / "gw", config).start()
        pid = gw.pid
    try:
        # warm up (imports, first commits), then measure
        load(host, port, 1.0, args.window, args.devices)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        r = load(host, port, args.seconds, args.window, args.devices)
        cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")
        rss = peak_rss_mib(pid) if pid else float("nan")
    finally:
        if gw is not None:
            gw.stop()
    total = r["accepted"] + r["other"]
    print(json.dumps({k: round(v, 3) for k, v in r.items()}))
    print(f"accepted: {r['accepted'] / r['elapsed']:,.0f} POSTs/s "
          f"({r['accepted']:.0f} of {r['sent']:.0f}; other answers {r['other']:.0f}, "
          f"unanswered {r['lost']:.0f}), window {args.window}, {args.devices} devices")
    print(f"separate responses (empty ACK first, answer later): {r['separate']:.0f}")
    print(f"answer latency: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    if total:
        print(f"gateway CPU: {1e6 * cpu / total:.0f} µs per request "
              f"({cpu:.2f} s over {r['elapsed']:.1f} s)")
    print(f"gateway peak RSS: {rss:.1f} MiB")
    if gw is not None:
        stored = outbox_readings(tmp / "state" / "outbox.db")
        # 4 readings per accepted request, warm-up included
        print(f"outbox holds {stored} readings (every acknowledged request: 4 readings each)")


if __name__ == "__main__":
    main()
