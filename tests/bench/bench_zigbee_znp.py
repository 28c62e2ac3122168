"""Benchmark: ZCL reports through the simulated Z-Stack stick → zigpy-znp → the adapter
→ pipeline → SQLite outbox.

Not a test: it prints figures. Everything from the MT bytes on a loopback socket up is
real (zigpy-znp, zigpy, the adapter, the outbox); the stick is :mod:`tests.znp_stick`.

    .venv/bin/python -m tests.bench.bench_zigbee_znp --reports 5000

Figures: time to ready on a stick that carries a network, reports/s end to end (until
committed), resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tests.bench.bench_zigbee import rss_mb
from tests.test_zigbee_stick_adapter import pair_sensor
from tests.test_zigbee_znp_adapter import TEMPERATURE, _gateway
from tests.znp_stick import ZnpStick


async def main(reports: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with ZnpStick() as stick:
            stick.preform(channel=20, pan_id=0x1A62)
            started = time.monotonic()
            async for gw in _gateway(stick, Path(tmp)):
                print(f"ready in {time.monotonic() - started:.2f} s; RSS {rss_mb():.1f} MB")
                sensor = await pair_sensor(stick, gw)
                base = len(await gw.refresh())
                started = time.monotonic()
                for i in range(reports):
                    stick.report(sensor, 1, TEMPERATURE, {0x0000: 2000 + i % 500})
                    if i % 100 == 99:
                        await asyncio.sleep(0)  # let zigpy-znp read the socket
                while len(await gw.refresh()) - base < reports:
                    if time.monotonic() - started > 120:
                        raise TimeoutError(f"only {len(gw.durable) - base} of {reports}")
                    await asyncio.sleep(0.05)
                took = time.monotonic() - started
                print(f"{reports} reports in {took:.2f} s: {reports / took:.0f} readings/s;"
                      f" RSS {rss_mb():.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=5000)
    asyncio.run(main(parser.parse_args().reports))
