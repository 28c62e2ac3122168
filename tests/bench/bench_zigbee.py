"""Benchmark: Zigbee attribute reports → zigpy → the adapter → pipeline → SQLite outbox.

Not a test: it prints figures. The radio is the virtual one (``tests/zigbee_virtual.py``):
everything from zigpy's packet handling up is real, the serial link and the stick are not.

    /work/venv/bin/python -m tests.bench.bench_zigbee --devices 50 --reports 20000

Figures: reports/s end to end (until committed), CPU µs per report (this process: the
virtual devices' frame building is included, so the adapter's share is lower), resident
memory after start and after pairing, time to start the adapter with its devices loaded
from zigpy's database.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from tests import zigbee_virtual as zv
from tests.zigbee_harness import Harness, wait_for


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run(devices: int, reports: int) -> None:
    base_rss = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        await h.start_core()
        t0 = time.perf_counter()
        adapter = await h.started(report_max_interval_battery=3600)
        print(f"adapter start (new network): {time.perf_counter() - t0:.3f} s;"
              f" RSS {rss_mb():.1f} MB (was {base_rss:.1f} MB before the core and zigpy)")
        sensors = [zv.climate_sensor(f"00:15:8d:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}")
                   for i in range(devices)]
        t0 = time.perf_counter()
        for s in sensors:
            await h.pair(adapter, s)
        print(f"paired {devices} sensors (join, interview, bind, configure, first reads):"
              f" {time.perf_counter() - t0:.2f} s; RSS {rss_mb():.1f} MB")
        def accepted() -> float:
            return h.metric("gateway_readings_accepted_total", adapter="zigbee")

        before = accepted()

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for i in range(reports):
            sensors[i % devices].report(0x0402, {0x0000: 2000 + i % 1000})
            if i % 200 == 199:
                # the air is slow: never more than ~1000 reports ahead of the outbox
                await wait_for(lambda i=i: accepted() >= before + i - 1000, 60, "the outbox")
        total = before + reports
        await wait_for(lambda: accepted() >= total, 120, "every report committed")
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        dropped = h.metric("gateway_zigbee_readings_dropped_total", adapter="zigbee",
                           reason="overflow")
        print(f"{reports} reports in {wall:.2f} s: {reports / wall:,.0f} reports/s committed;"
              f" CPU {cpu / reports * 1e6:.0f} µs per report (devices' side included);"
              f" RSS {rss_mb():.1f} MB; dropped {dropped:.0f}")
        await adapter.stop()

        t0 = time.perf_counter()
        again = await h.started()
        await wait_for(lambda: len(again._devices()) == devices, 10, "devices loaded")
        print(f"restart with {devices} devices from zigpy's database:"
              f" {time.perf_counter() - t0:.3f} s")
        await h.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--reports", type=int, default=20000)
    args = p.parse_args()
    asyncio.run(run(args.devices, args.reports))


if __name__ == "__main__":
    main()
