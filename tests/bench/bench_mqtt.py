"""MQTT end to end: device broker → gateway → cloud broker, against DESIGN.md's budgets.

    /work/venv/bin/python tests/bench/bench_mqtt.py [--publishers 3] [--messages 40000]

Starts two real mosquitto brokers (devices, cloud), the real daemon (``gateway run``) with
the mqtt adapter and the uplink, and a recording cloud subscriber. A message is one device
publish of ``{"temperature", "humidity", "seq", "ts"}``: three readings, the device's
timestamp. Prints:

1. latency at 1,000 messages/s (one publisher, paced): device publish → cloud receipt,
   p50/p99, from the reading's timestamp and the cloud subscriber's receipt time;
2. sustained rate with ``--publishers`` publisher processes sending as fast as their
   in-flight window allows: messages/s from first publish to last cloud receipt, checked
   for zero loss ((device, seq) pairs at the cloud);
3. gateway CPU µs per message (utime + stime of the daemon over the run), bytes the
   daemon wrote to disk per message, peak RSS (VmHWM).

Publishers, brokers and the cloud subscriber share the machine's cores with the gateway:
the rate is a floor for what the gateway alone sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.brokers import Mosquitto  # noqa: E402
from tests.cloud_sink import CloudSink  # noqa: E402
from tests.daemon import GatewayProcess  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# -- publisher process ----------------------------------------------------------------------


async def _publish(port: int, device: str, count: int, rate: float, window: int) -> None:
    import gmqtt

    client = gmqtt.Client(f"bench-pub-{device}")
    await client.connect("127.0.0.1", port, keepalive=30)
    storage = client._persistent_storage
    topic = f"devices/{device}/telemetry"
    t0 = time.monotonic()
    for seq in range(count):
        if rate:
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        # bounded in flight: wait for PUBACKs (gmqtt offers no event for it)
        while len(storage._messages) >= window:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        payload = (f'{{"temperature":{20 + (seq % 100) / 10:.2f},"humidity":'
                   f'{40 + (seq % 50) / 5:.1f},"seq":{seq},"ts":{time.time():.4f}}}')
        client.publish(topic, payload.encode(), qos=1)
        if not rate and seq % 200 == 0:
            await asyncio.sleep(0)
    deadline = time.monotonic() + 60
    while storage._messages and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await client.disconnect()


def publisher_main(argv: list[str]) -> None:
    port, device, count, rate, window = argv
    asyncio.run(_publish(int(port), device, int(count), float(rate), int(window)))


def start_publishers(port: int, prefix: str, n: int, count: int, rate: float,
                     window: int = 500) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, __file__, "--publisher", str(port), f"{prefix}{i}",
                              str(count), str(rate), str(window)], cwd=ROOT) for i in range(n)]


# -- measuring the daemon ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def runqueue_wait(pid: int) -> float:
    """Seconds the daemon's threads were runnable but waiting for a CPU (other load)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cloud_seqs(cloud: CloudSink, prefix: str) -> dict[str, list[tuple[int, float, float]]]:
    """device → [(seq, reading ts, cloud receipt time)] from the subscriber's record."""
    from gateway.uplink.formats import decode_json_batch

    out: dict[str, list[tuple[int, float, float]]] = {}
    for m in cloud.messages("/telemetry"):
        for r in decode_json_batch(m["payload"]):
            if r.metric == "seq" and r.device.startswith(f"mqtt:{prefix}"):
                out.setdefault(r.device, []).append((int(r.value), r.ts, m["t"]))
    return out


def wait_cloud(cloud: CloudSink, prefix: str, expected: int, timeout: float) -> float:
    """Wait until ``expected`` distinct (device, seq) arrived; return last receipt time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cloud_seqs(cloud, prefix)
        distinct = sum(len({s for s, _, _ in v}) for v in got.values())
        if distinct >= expected:
            return max(t for v in got.values() for _, _, t in v)
        time.sleep(0.5)
    raise TimeoutError(f"cloud got {distinct} of {expected} messages")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--publishers", type=int, default=3)
    p.add_argument("--messages", type=int, default=40_000, help="per publisher")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    devices = Mosquitto(work / "devices").start()
    cloud_broker = Mosquitto(work / "cloud").start()
    cloud = CloudSink(cloud_broker.port, work / "cloud.jsonl")
    gw = GatewayProcess(work / "gw", {
        "gateway": {"id": "bench", "state_dir": str(work / "state"), "log_level": "info"},
        "uplink": {"host": "127.0.0.1", "port": cloud_broker.port},
        "api": {"enabled": False},
        "adapters": [{"type": "mqtt", "port": devices.port, "client_id": "bench-gw",
                      "receive_maximum": 2000,
                      "subscriptions": [{"topic": "devices/{device}/telemetry",
                                         "timestamp": "ts"}]}],
    })
    try:
        gw.start()
        pid = gw.pid
        time.sleep(1.0)
        idle_rss = peak_rss_mb(pid)

        # 1. latency at 1,000 messages/s
        n_lat = int(1000 * args.latency_seconds)
        pubs = start_publishers(devices.port, "lat", 1, n_lat, 1000.0)
        for proc in pubs:
            proc.wait(args.latency_seconds + 60)
        wait_cloud(cloud, "lat", n_lat, 60)
        lat = sorted((t - ts) * 1000 for v in cloud_seqs(cloud, "lat").values()
                     for _, ts, t in v)
        p50 = statistics.median(lat)
        p99 = lat[int(len(lat) * 0.99) - 1]

        # 2. sustained rate, zero loss; 3. CPU, disk, memory over the same run
        total = args.publishers * args.messages
        cpu0, io0, wait0 = cpu_seconds(pid), write_bytes(pid), runqueue_wait(pid)
        t0 = time.time()
        pubs = start_publishers(devices.port, "rate", args.publishers, args.messages, 0.0)
        for proc in pubs:
            proc.wait(600)
        published_at = time.time()
        last = wait_cloud(cloud, "rate", total, 300)
        cpu = cpu_seconds(pid) - cpu0
        written = write_bytes(pid) - io0
        waited = runqueue_wait(pid) - wait0
        load = os.getloadavg()[0]
        got = cloud_seqs(cloud, "rate")
        missing = sum(args.messages - len({s for s, _, _ in got.get(f"mqtt:rate{i}", [])})
                      for i in range(args.publishers))
        duplicates = sum(len(v) - len({s for s, _, _ in v}) for v in got.values())
        rss = peak_rss_mb(pid)
    finally:
        gw.stop()
        cloud.stop()
        devices.stop()
        cloud_broker.stop()

    rate = total / (last - t0)
    offered = total / (published_at - t0)
    print(f"latency at 1,000 msg/s ({n_lat} messages): p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(budget p99 <= 50 ms)")
    print(f"sustained: {total} messages from {args.publishers} publishers in "
          f"{last - t0:.1f} s = {rate:,.0f} msg/s end to end (publishers offered "
          f"{offered:,.0f} msg/s; budget >= 10,000)")
    print(f"loss: {missing} missing, {duplicates} duplicate(s) at the cloud")
    print(f"during the run the daemon used {cpu:.1f} s of CPU and waited {waited:.1f} s for "
          f"one (load average {load:.1f} on {os.cpu_count()} cores)")
    print(f"gateway CPU: {cpu * 1e6 / total:.1f} us/message (budget <= 50)")
    print(f"gateway disk writes: {written / total:.0f} B/message (budget <= 500)")
    print(f"gateway peak RSS: {rss:.1f} MB, {idle_rss:.1f} MB once started and idle (budget <= "
          "45 MB with MQTT + CoAP + rules)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--publisher":
        publisher_main(sys.argv[2:])
    else:
        main()
