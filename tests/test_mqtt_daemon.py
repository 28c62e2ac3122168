"""End to end through the real daemon: device broker → gateway → cloud broker.

Both brokers are real mosquitto processes, the gateway is ``gateway run`` in its own
process, the cloud side is a recording subscriber process.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.client import ApiClient
from tests.brokers import Mosquitto, free_port
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess
from tests.waiting import wait_until


def config(tmp_path: Path, broker: Mosquitto, cloud: Mosquitto, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "gateway": {"id": "gw-e2e", "state_dir": str(tmp_path / "state")},
        "uplink": {"host": cloud.host, "port": cloud.port, "batch_linger": "10ms"},
        "store": {"commit_interval": "20ms"},
        "adapters": [{
            "type": "mqtt", "host": broker.host, "port": broker.port,
            "client_id": "gw-e2e-devices", "reconnect_delay": 0.2,
            "subscriptions": [{"topic": "devices/{device}/telemetry", "timestamp": "ts"}],
        }],
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def publish(broker: Mosquitto, topic: str, payloads: list[dict[str, Any]]) -> None:
    """One device connection, QoS 1, every payload acknowledged by the broker."""
    lines = "".join(json.dumps(p) + "\n" for p in payloads)
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                    "-q", "1", "-t", topic, "-l"], input=lines.encode(), check=True, timeout=20)


def seqs(cloud: CloudSink, device: str) -> list[int]:
    return sorted(int(r.value) for r in cloud.readings()
                  if r.device == device and r.metric == "seq")


def received(api: ApiClient) -> float:
    """Readings the daemon's adapters have handed to the pipeline (durable or not)."""
    text = api.call("GET", "/metrics")
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "gateway_readings_received_total")


def events(cloud: CloudSink) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in cloud.messages("/events"):
        out.extend(json.loads(m["payload"])["events"])
    return out


@pytest.mark.slow
def test_reading_survives_sigkill_between_receipt_and_commit(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., CloudSink]) -> None:
    devices = mosquitto_factory(name="devices")
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    # the cloud is out of reach (nothing listens on the port) and commits are 5 s apart:
    # a window in which messages are received but neither committed nor acknowledged
    # by the cloud, so not durable, and the devices have no PUBACK yet
    away = config(tmp_path, devices, cloud_broker, store={"commit_interval": "5s"})
    away["uplink"]["port"] = free_port()
    gw = gateway_factory(away).start()
    api = ApiClient(tmp_path / "state" / "gateway.sock")
    started = time.monotonic()
    publish(devices, "devices/th-1/telemetry",
            [{"seq": i, "temperature": 20 + i / 10, "ts": time.time()} for i in range(50)])
    # all 50 (two readings each) are in the gateway; the next commit is seconds away
    wait_until(lambda: received(api) >= 100, 4, "the 50 messages received by the gateway")
    gw.kill()
    assert time.monotonic() - started < 4.5, "machine too slow: the kill missed the window"
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    stored = db.execute("SELECT count(*) FROM telemetry").fetchone()[0]
    db.close()
    assert stored == 0  # nothing of the 50 was durable

    again = gateway_factory(config(tmp_path, devices, cloud_broker), name="gw2").start()
    cloud.wait_for(lambda: len(seqs(cloud, "mqtt:th-1")) >= 50, 20)
    # the broker sent the unacknowledged messages again: all there, none twice
    again.stop()
    assert seqs(cloud, "mqtt:th-1") == list(range(50))


@pytest.mark.slow
def test_device_goes_offline_after_silence_comes_back_and_registry_survives_restart(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., CloudSink]) -> None:
    devices = mosquitto_factory(name="devices")
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    cfg = config(tmp_path, devices, cloud_broker, devices={
        "offline_after": "1s",
        "declared": [{"id": "mqtt:th-1", "name": "Attic sensor", "location": "attic"}]})
    gw = gateway_factory(cfg).start()
    publish(devices, "devices/th-1/telemetry", [{"temperature": 20.5, "ts": time.time()}])

    def transitions() -> list[tuple[str, bool]]:
        return [(e["device"], e["online"]) for e in events(cloud) if e["kind"] == "status"]

    cloud.wait_for(lambda: transitions() == [("mqtt:th-1", True), ("mqtt:th-1", False)], 15)
    publish(devices, "devices/th-1/telemetry", [{"temperature": 20.7, "ts": time.time()}])
    cloud.wait_for(lambda: transitions()[2:3] == [("mqtt:th-1", True)], 10)
    offline = [e for e in events(cloud) if e["kind"] == "status" and not e["online"]][0]
    assert offline["ts"] - offline["last_seen"] >= 1.0
    gw.stop()
    assert "device mqtt:th-1 offline" in gw.log_text()

    registry = tmp_path / "state" / "devices.json"
    before = {d["id"]: d for d in json.loads(registry.read_text())["devices"].values()}
    assert before["mqtt:th-1"]["values"]["temperature"][0] == 20.7
    again = gateway_factory(cfg, name="gw2").start()
    again.stop()
    after = {d["id"]: d for d in json.loads(registry.read_text())["devices"].values()}
    assert after["mqtt:th-1"]["info"]["name"] == "Attic sensor"
    assert after["mqtt:th-1"]["last_seen"] == before["mqtt:th-1"]["last_seen"]
    assert after["mqtt:th-1"]["values"] == before["mqtt:th-1"]["values"]
