"""Benchmark: simulator → rules-less pipeline → outbox → uplink → a real cloud mosquitto.

Not a test: it prints figures to compare with the budgets in DESIGN.md.

    .venv/bin/python -m tests.bench.bench_spine            # all phases
    .venv/bin/python -m tests.bench.bench_spine --phase max --messages 200000

Phases:
  max      as fast as the gateway goes: readings/s, CPU µs per message and per reading,
           peak RSS, bytes written to disk per message, cloud bytes per value
  latency  1,000 messages/s: p50/p99 from the simulated device's timestamp to the
           cloud subscriber's receipt
  drain    the cloud away for a while at 2,000 messages/s, then back: backlog drained
           per second while ingestion continues

A message is one simulated device publish of 3 values (seq, temperature, humidity).
The simulator runs inside the gateway process, so its cost is counted in the gateway's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.brokers import Mosquitto
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess

VALUES_PER_MESSAGE = 3
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def config(state: Path, port: int, devices: int, interval: float, count: int,
           **uplink: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "bench", "state_dir": str(state), "log_level": "warning"},
        "store": {"max_bytes": "1GiB"},
        "uplink": {"host": "127.0.0.1", "port": port, "backoff_initial": 0.2,
                   "backoff_max": 1.0, **uplink},
        "api": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": devices,
                      "interval": interval, "metrics": ["seq", "temperature", "humidity"],
                      "count": count}],
    }


class Run:
    def __init__(self, work: Path, name: str) -> None:
        self.work = work / name
        self.work.mkdir(parents=True)
        self.cloud = Mosquitto(self.work / "cloud").start()
        self.sink = CloudSink(self.cloud.port, self.work / "cloud.jsonl", "gateway/+/telemetry")
        self.gw: GatewayProcess | None = None
        self._offset = 0
        self._values = 0
        self._bytes = 0

    def start_gateway(self, cfg: dict[str, Any]) -> GatewayProcess:
        self.gw = GatewayProcess(self.work / "gw", cfg)
        # readiness is logged at info; the bench runs at warning, so wait on the socket-less
        # way: the process is up once it has written its state directory
        self.gw.start(wait_ready=0)
        deadline = time.monotonic() + 20
        while not (Path(cfg["gateway"]["state_dir"]) / "outbox.db").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(self.gw.log_text())
            time.sleep(0.01)
        return self.gw

    def cloud_values(self) -> tuple[int, int]:
        """(values received, payload bytes received) so far; reads only what is new."""
        if not self.sink.out.exists():
            return 0, 0
        with open(self.sink.out, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # a line being written stays for next time
        for line in chunk[:end].splitlines():
            m = json.loads(line)
            self._bytes += len(m["payload"].encode())
            self._values += int(m["payload"].split('"n":', 1)[1].split(",", 1)[0])
        self._offset += end
        return self._values, self._bytes

    def wait_values(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cloud_values()[0] >= n:
                return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"cloud got {self.cloud_values()[0]} of {n} values")

    def close(self) -> None:
        if self.gw:
            self.gw.stop()
        self.sink.stop()
        self.cloud.stop()


def phase_max(work: Path, messages: int, devices: int) -> dict[str, float]:
    run = Run(work, "max")
    try:
        per_device = messages // devices
        total_values = per_device * devices * VALUES_PER_MESSAGE
        state = work / "max" / "state"
        gw = run.start_gateway(config(state, run.cloud.port, devices, 1e-6 * devices,
                                      per_device, batch_max_readings=5000))
        pid = gw.pid
        cpu0, io0, t0 = proc_cpu(pid), proc_io(pid), time.monotonic()
        t_end = run.wait_values(total_values, timeout=600)
        cpu1, io1 = proc_cpu(pid), proc_io(pid)
        rss = proc_peak_rss_mb(pid)
        values, size = run.cloud_values()
        elapsed = t_end - t0
        n_msgs = per_device * devices
        return {
            "messages": n_msgs,
            "messages_per_s": n_msgs / elapsed,
            "readings_per_s": total_values / elapsed,
            "cpu_us_per_message": (cpu1 - cpu0) / n_msgs * 1e6,
            "cpu_us_per_reading": (cpu1 - cpu0) / total_values * 1e6,
            "peak_rss_mb": rss,
            "disk_bytes_per_message": (io1["write_bytes"] - io0["write_bytes"]) / n_msgs,
            "cloud_bytes_per_value": size / values,
        }
    finally:
        run.close()


def phase_latency(work: Path, rate: int, seconds: float, devices: int) -> dict[str, float]:
    from gateway.uplink.formats import decode_json_batch

    run = Run(work, "latency")
    try:
        per_device = int(rate * seconds / devices)
        state = work / "latency" / "state"
        gw = run.start_gateway(config(state, run.cloud.port, devices, devices / rate,
                                      per_device))
        pid = gw.pid
        cpu0, t0 = proc_cpu(pid), time.monotonic()
        run.wait_values(per_device * devices * VALUES_PER_MESSAGE, timeout=seconds * 3 + 30)
        cpu1, elapsed = proc_cpu(pid), time.monotonic() - t0
        lat = []
        for m in run.sink.messages("/telemetry"):
            for r in decode_json_batch(m["payload"]):
                if r.metric == "seq":
                    lat.append((m["t"] - r.ts) * 1000)
        lat.sort()
        return {
            "rate_msgs_per_s": rate,
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(len(lat) * 0.99) - 1],
            "max_ms": lat[-1],
            "cpu_share_of_one_core": (cpu1 - cpu0) / elapsed,
            "peak_rss_mb": proc_peak_rss_mb(pid),
        }
    finally:
        run.close()


def phase_drain(work: Path, rate: int, outage: float, devices: int) -> dict[str, float]:
    run = Run(work, "drain")
    try:
        total_seconds = outage + 30
        per_device = int(rate * total_seconds / devices)
        state = work / "drain" / "state"
        run.start_gateway(config(state, run.cloud.port, devices, devices / rate, per_device,
                                 batch_max_readings=5000))
        time.sleep(2)
        run.cloud.stop()
        time.sleep(outage)
        received_before, _ = run.cloud_values()
        produced_so_far = int((outage + 2) * rate * VALUES_PER_MESSAGE)
        backlog = produced_so_far - received_before
        t0 = time.monotonic()
        run.cloud.start()
        # caught up: the cloud has everything produced until now (ingestion goes on)
        while True:
            now_produced = int((time.monotonic() - t0 + outage + 2) * rate * VALUES_PER_MESSAGE)
            got, _ = run.cloud_values()
            if got >= now_produced * 0.98 or time.monotonic() - t0 > 120:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        return {
            "backlog_messages": backlog / VALUES_PER_MESSAGE,
            "catch_up_s": elapsed,
            "drain_messages_per_s": (backlog / VALUES_PER_MESSAGE) / elapsed,
        }
    finally:
        run.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phase", choices=["all", "max", "latency", "drain"], default="all")
    p.add_argument("--messages", type=int, default=150_000)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--outage", type=float, default=20.0)
    p.add_argument("--workdir", default=None,
                   help="state directory parent (default: a temp dir on disk, not tmpfs)")
    args = p.parse_args()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="gateway-bench-", dir="/var/tmp"))
    try:
        results: dict[str, dict[str, float]] = {}
        if args.phase in ("all", "max"):
            results["max"] = phase_max(base, args.messages, args.devices)
        if args.phase in ("all", "latency"):
            results["latency"] = phase_latency(base, 1000, 20, args.devices)
        if args.phase in ("all", "drain"):
            results["drain"] = phase_drain(base, 2000, args.outage, args.devices)
        for phase, figures in results.items():
            print(f"[{phase}]")
            for k, v in figures.items():
                print(f"  {k:26s} {v:12.2f}")
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
