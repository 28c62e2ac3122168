"""Health and metrics follow the cloud link: a real mosquitto as the cloud, stopped mid-run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.client import ApiClient
from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess
from tests.waiting import wait_until


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    raise KeyError(name)


async def get(sock: str, path: str) -> tuple[int, str]:
    conn = aiohttp.UnixConnector(path=sock)
    async with aiohttp.ClientSession(connector=conn) as session, \
            session.get(f"http://gateway{path}") as resp:
        return resp.status, await resp.text()


async def test_health_and_metrics_follow_the_uplink_and_the_outbox_drains(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cloud = mosquitto_factory(name="cloud")
    state = tmp_path / "state"
    gw = gateway_factory({
        "gateway": {"id": "gw-health", "state_dir": str(state)},
        "uplink": {"host": "127.0.0.1", "port": cloud.port, "backoff_initial": 0.2,
                   "backoff_max": 0.5, "ack_timeout": 5, "batch_linger": "20ms"},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 3, "interval": "0.1s"}],
    }).start()
    gw.wait_for_log("uplink connected", 15)
    sock = str(state / "gateway.sock")
    api = ApiClient(sock)

    _, health = api.request("GET", "/healthz")
    assert health["status"] == "ok" and health["uplink"]["connected"] is True
    assert health["uplink"]["connected_since"] <= time.time()
    _, text = await get(sock, "/metrics")
    assert metric(text, "gateway_uplink_connected") == 1
    acked = metric(text, "gateway_uplink_readings_total")
    wait_until(lambda: metric(api.call("GET", "/metrics"), "gateway_uplink_readings_total")
               > acked, 10, "more readings acknowledged by the cloud")

    cloud.stop()  # the cloud goes away: readings pile up in the outbox
    wait_until(lambda: api.request("GET", "/healthz")[1]["uplink"]["connected"] is False, 15,
               "uplink seen disconnected")
    status, health = api.request("GET", "/healthz")
    assert status == 200 and health["status"] == "degraded"
    assert any("uplink is not connected" in p for p in health["problems"])
    _, text = await get(sock, "/metrics")
    assert metric(text, "gateway_uplink_connected") == 0
    # ~90 readings/s arrive: a backlog of a few seconds builds up
    wait_until(lambda: api.call("GET", "/api/outbox")["depth"] > 200, 15,
               "a backlog in the outbox while offline")
    backlog = api.call("GET", "/api/outbox")["depth"]

    cloud.start()  # back: the backlog drains and health is ok again
    wait_until(lambda: api.request("GET", "/healthz")[1]["status"] == "ok", 20, "health back to ok")
    # drained: what waits is back to the few readings of the batches in flight
    wait_until(lambda: api.call("GET", "/api/outbox")["depth"] < min(100, backlog // 2), 20,
               "the backlog draining")
