"""LoRaWAN adapter figures: CPU per uplink (decode → readings), gRPC stream and MQTT
integration throughput into a sink, catch-up after an outage. Prints figures; asserts nothing.

    /work/venv/bin/python tests/bench/bench_lorawan.py [--devices 50] [--events 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gmqtt import Client as MQTTClient  # noqa: E402
from gmqtt.mqtt.constants import MQTTv311  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from gateway.adapters.lorawan.decode import decode_lpp  # noqa: E402
from gateway.adapters.lorawan.events import parse_json  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.chirpstack_fake import TENANT, FakeChirpStack  # noqa: E402
from tests.lorawan_harness import RecordingSink, make_adapter, wait_until  # noqa: E402

PROFILES = {"LHT65": {"fields": {"TempC_SHT": {"metric": "temperature", "unit": "Cel"},
                                 "Hum_SHT": {"metric": "humidity", "unit": "%RH"},
                                 "BatV": {"metric": "battery_voltage", "unit": "V"}}}}


def cpu_per_uplink(tmp: Path, n: int = 20_000) -> None:
    cs = FakeChirpStack()
    cs.add_device(cs.add_application("a"), "0102030405060708", "d", profile="LHT65")
    adapter = make_adapter(tmp, profiles=PROFILES, server="127.0.0.1:1", api_token="t",
                           tenant_id=TENANT)
    ev = cs.uplink("0102030405060708", 1, obj={"TempC_SHT": 21.5, "Hum_SHT": 40.5,
                                                "BatV": 3.01})
    t0 = time.process_time()
    for _ in range(n):
        adapter.uplink_readings(ev)
    dt = time.process_time() - t0
    print(f"object uplink → 7 readings:        {dt / n * 1e6:7.1f} µs CPU per uplink")
    body = json_format.MessageToJson(ev, indent=None)
    t0 = time.process_time()
    for _ in range(n // 4):
        parse_json("up", body)
    dt = time.process_time() - t0
    print(f"JSON uplink event → UplinkEvent:   {dt / (n // 4) * 1e6:7.1f} µs CPU per event")
    t0 = time.process_time()
    for _ in range(n // 4):
        json_format.Parse(body, type(ev)(), ignore_unknown_fields=True)
    dt = time.process_time() - t0
    print(f"  (json_format.Parse alone:        {dt / (n // 4) * 1e6:7.1f} µs)")
    data = bytes.fromhex("0367011005686407732795")
    t0 = time.process_time()
    for _ in range(n):
        decode_lpp(data)
    dt = time.process_time() - t0
    print(f"Cayenne LPP decode (3 values):     {dt / n * 1e6:7.1f} µs CPU per payload")


async def grpc_catch_up(tmp: Path, devices: int, events: int) -> None:
    cs = FakeChirpStack(history=events)
    app = cs.add_application("a")
    euis = [f"{i:016x}" for i in range(devices)]
    for eui in euis:
        cs.add_device(app, eui, eui, profile="LHT65")
        for i in range(events):
            cs.emit(eui, "up", cs.uplink(eui, i, obj={"TempC_SHT": 20.0 + i / 10}))
    await cs.start()
    sink = RecordingSink()
    sink.delay = 0.002  # a group commit's wait, roughly
    adapter = make_adapter(tmp / "grpc", sink=sink, profiles=PROFILES, server=cs.address,
                           api_token=cs.token, tenant_id=TENANT)
    (tmp / "grpc").mkdir()
    total = devices * events
    cpu0, t0 = time.process_time(), time.perf_counter()
    await adapter.start()
    await wait_until(lambda: len(sink.values("frame_counter")) >= total, timeout=120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"gRPC: {devices} streams × {events} history events: {total / wall:7.0f} events/s, "
          f"{wall:.2f} s wall, {cpu / total * 1e6:.0f} µs CPU per event (server included)")
    # a restart replays every history: all of it must be skipped by the cursors
    await adapter.stop()
    adapter = make_adapter(tmp / "grpc", sink=sink, profiles=PROFILES, server=cs.address,
                           api_token=cs.token, tenant_id=TENANT)
    t0 = time.perf_counter()
    await adapter.start()
    await wait_until(lambda: (adapter.ctx.metrics.get_sample_value(
        "gateway_lorawan_replay_skipped_total", {"adapter": "lora"}) or 0) >= total,
        timeout=120)
    print(f"gRPC restart: {total} replayed events skipped in {time.perf_counter() - t0:.2f} s;"
          f" accepted again: {len(sink.values('frame_counter')) - total}")
    await adapter.stop()
    await cs.stop()


async def mqtt_rate(tmp: Path, n: int) -> None:
    broker = Mosquitto(tmp / "mosquitto").start()
    cs = FakeChirpStack()
    eui = "0102030405060708"
    app = cs.add_application("a")
    for i in range(20):
        cs.add_device(app, f"{i:016x}", "d", profile="LHT65")
    await cs.start()
    sink = RecordingSink()
    adapter = make_adapter(tmp / "mqtt", sink=sink, profiles=PROFILES, server=cs.address,
                           api_token=cs.token, tenant_id=TENANT, source="mqtt",
                           mqtt={"host": broker.host, "port": broker.port})
    (tmp / "mqtt").mkdir()
    await adapter.start()
    pub = MQTTClient("bench-chirpstack")
    await pub.connect(broker.host, broker.port, version=MQTTv311)
    payloads = []
    for i in range(n):
        eui = f"{i % 20:016x}"
        payloads.append((f"application/{app}/device/{eui}/event/up",
                         cs.uplink(eui, i // 20, obj={"TempC_SHT": 21.0}).SerializeToString()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    for topic, body in payloads:
        pub.publish(topic, body, qos=1)
    await wait_until(lambda: len(sink.values("temperature")) >= n, timeout=120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"MQTT: {n} uplinks from 20 devices: {n / wall:7.0f} uplinks/s, "
          f"{cpu / n * 1e6:.0f} µs CPU per uplink (publisher included)")
    await pub.disconnect()
    await adapter.stop()
    await cs.stop()
    broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--mqtt", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lorawan-"))
    try:
        cpu_per_uplink(tmp)
        asyncio.run(grpc_catch_up(tmp, args.devices, args.events))
        asyncio.run(mqtt_rate(tmp, args.mqtt))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
