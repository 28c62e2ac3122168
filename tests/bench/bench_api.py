"""Control API figures: request latency, /metrics and /api/devices size, CLI wall time,
cold start with and without the API. Prints figures; asserts nothing.

    /work/venv/bin/python tests/bench/bench_api.py [--devices 1000]
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.daemon import GatewayProcess  # noqa: E402


def request(sock_path: str, path: str) -> tuple[float, int]:
    conn = http.client.HTTPConnection("gateway", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    conn.sock.connect(sock_path)
    conn.request("GET", path)
    body = conn.getresponse().read()
    dt = time.perf_counter() - t0
    conn.close()
    return dt, len(body)


def latency(sock_path: str, path: str, n: int) -> str:
    times, size = [], 0
    for _ in range(n):
        dt, size = request(sock_path, path)
        times.append(dt * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"{path:<14} n={n:<4} p50 {statistics.median(times):6.2f} ms  p99 {p99:6.2f} ms  "
            f"body {size / 1024:7.1f} KiB")


def config(work: Path, devices: int, api: bool) -> dict[str, Any]:
    return {
        "gateway": {"state_dir": str(work / "state")}, "uplink": {"enabled": False},
        "api": {"enabled": api},
        "adapters": [{"type": "simulator", "name": "sim", "devices": devices, "interval": "1s"}],
    }


def cold_start(work: Path, devices: int, api: bool, runs: int = 3) -> list[float]:
    out = []
    for i in range(runs):
        gw = GatewayProcess(work / f"cold-{api}-{i}", config(work / f"cold-{api}-{i}", devices,
                                                              api))
        gw.start()
        m = re.search(r"ready in ([0-9.]+) s", gw.log_text())
        gw.stop()
        if m:
            out.append(float(m.group(1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gwb") as tmp:
        work = Path(tmp)
        gw = GatewayProcess(work / "gw", config(work / "gw", args.devices, True)).start()
        try:
            sock_path = str(work / "gw" / "state" / "gateway.sock")
            time.sleep(2.0)  # every simulated device has sent at least once
            print(f"daemon: {args.devices} simulated devices, {args.devices} messages/s")
            for path in ("/healthz", "/api/outbox", "/metrics"):
                print(latency(sock_path, path, args.requests))
            print(latency(sock_path, "/api/devices", max(10, args.requests // 10)))
            walls = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "gateway", "status", "--socket", sock_path],
                               capture_output=True, check=False)
                walls.append(time.perf_counter() - t0)
            print(f"gateway status (CLI process, wall): median {statistics.median(walls):.3f} s")
        finally:
            gw.stop()
        for api in (True, False):
            starts = cold_start(work, 10, api)
            print(f"cold start to ready, api {'on ' if api else 'off'}: "
                  + ", ".join(f"{s:.2f} s" for s in starts))


if __name__ == "__main__":
    main()
