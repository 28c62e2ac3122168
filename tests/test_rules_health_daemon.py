"""Health rules in the real daemon: a real cloud mosquitto stopped and started, fake Pi files.

The uplink is the real one against a real broker: stopping the broker makes
``gateway.uplink_down_for`` grow; the rule fires after its ``for``, its alert waits in the
outbox and reaches the cloud once the broker is back, where the rule clears. The thermal
zone and the firmware flags are files the test writes (``health:`` points at them: this
machine is no Pi). A webhook receiver is a real aiohttp server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.brokers import Mosquitto, free_port
from tests.daemon import GatewayProcess
from tests.waiting import wait_until


class Receiver:
    """A webhook endpoint on its own event loop in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.got: list[dict[str, Any]] = []
        self.first_fails = True
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "webhook receiver did not start"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.first_fails:
            self.first_fails = False  # the first try fails: the gateway must retry
            return web.Response(status=503)
        self.got.append(body)
        return web.Response(text="ok")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app)
        self._loop.run_until_complete(self.runner.setup())
        self._loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def states(self, rule: str) -> list[str]:
        return [b["state"] for b in self.got if b["rule"] == rule]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


def cloud_alerts(sink: Any) -> list[dict[str, Any]]:
    out = []
    for m in sink.messages("/events"):
        out.extend(e for e in json.loads(m["payload"])["events"] if e["kind"] == "alert")
    return out


def test_uplink_down_alerts_after_for_and_clears_when_the_cloud_is_back(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., Any], gateway_factory: Callable[..., GatewayProcess],
        receiver: Receiver) -> None:
    cloud = mosquitto_factory(name="cloud", persistence=True)
    sink = cloud_sink_factory(cloud.port)
    thermal, throttled = tmp_path / "temp", tmp_path / "get_throttled"
    thermal.write_text("52000\n")
    throttled.write_text("0\n")
    hook = {"webhook": {"url": receiver.url, "backoff": "50ms"}}
    gw = gateway_factory({
        "gateway": {"id": "gw-health", "state_dir": str(tmp_path / "state")},
        "uplink": {"host": "127.0.0.1", "port": cloud.port, "backoff_initial": 0.2,
                   "backoff_max": 0.5, "batch_linger": "20ms"},
        "api": {"enabled": False},
        "health": {"thermal_path": str(thermal), "throttled_path": str(throttled)},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 1, "interval": "0.2s"}],
        "rules": [
            {"name": "uplink_down", "when": "gateway.uplink_down_for > 1s", "for": "2s",
             "actions": [{"alert": {"severity": "critical",
                                    "message": "cloud unreachable for {round(value)} s"}}, hook],
             "on_clear": [{"alert": {"severity": "info", "message": "cloud back"}}, hook]},
            {"name": "cpu_hot", "when": "gateway.cpu_temp > 80", "clear": "gateway.cpu_temp < 75",
             "actions": [{"alert": {"message": "CPU at {value} {unit}"}}, hook],
             "on_clear": [hook]},
            {"name": "undervoltage", "when": "gateway.undervoltage",
             "actions": [{"alert": {"message": "under-voltage (flags {gateway.throttled_flags})"}},
                         hook],
             "on_clear": [hook]},
        ],
    }).start()
    gw.wait_for_log("uplink connected", 15)

    cloud.stop()
    gw.wait_for_log("ALERT uplink_down [critical] gateway:gw-health: cloud unreachable", 15)
    wait_until(lambda: receiver.states("uplink_down") == ["firing"], 10, "webhook: firing")
    (firing,) = [b for b in receiver.got if b["rule"] == "uplink_down"]
    assert firing["device"] == "gateway:gw-health" and firing["metric"] == "gateway.uplink_down_for"
    assert firing["value"] >= 1 and firing["condition"] == "gateway.uplink_down_for > 1s"

    cloud.start()
    gw.wait_for_log("rule uplink_down cleared on gateway:gw-health", 15)
    wait_until(lambda: receiver.states("uplink_down") == ["firing", "cleared"], 10,
               "webhook: cleared")
    # the alert waited in the outbox while the cloud was away, then left
    wait_until(lambda: [(a["rule"], a["state"]) for a in cloud_alerts(sink)
                        if a["rule"] == "uplink_down"] == [("uplink_down", "firing"),
                                                           ("uplink_down", "cleared")],
               20, "both uplink alerts at the cloud")

    thermal.write_text("83500\n")
    throttled.write_text("50005\n")
    wait_until(lambda: receiver.states("cpu_hot") == ["firing"]
               and receiver.states("undervoltage") == ["firing"], 10, "Pi alerts")
    gw.wait_for_log("CPU at 83.5 Cel", 5)
    gw.wait_for_log("under-voltage (flags 327685)", 5)
    thermal.write_text("60000\n")
    throttled.write_text("50000\n")
    wait_until(lambda: receiver.states("cpu_hot") == ["firing", "cleared"]
               and receiver.states("undervoltage") == ["firing", "cleared"], 10, "Pi clears")
    assert gw.stop() == 0
