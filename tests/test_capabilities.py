"""Optional adapter abilities as protocols: the real adapters have them (or not), and the
control API finds them with ``isinstance``/``issubclass`` (any class with the method counts).

The API's handlers run against a stand-in gateway (a supervisor with plain objects as its
adapters) through aiohttp's test server; the daemon-level tests of the same endpoints are
``test_api_pair.py`` and ``test_api_zigbee_pair.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.adapters.capabilities import Joiner, Publisher, Remover
from gateway.adapters.mqtt import MqttAdapter
from gateway.adapters.simulator import SimulatorAdapter
from gateway.adapters.supervisor import AdapterState
from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.api.config import ApiConfig
from gateway.api.server import ApiServer
from gateway.reading import CommandResult
from gateway.rules.ports import Publishing

CAPABILITIES = {Publisher: "publish", Joiner: "permit_join", Remover: "remove"}


@pytest.mark.parametrize(("cls", "has"), [
    (MqttAdapter, {Publisher}),
    (ZigbeeAdapter, {Joiner, Remover}),
    (SimulatorAdapter, set()),
])
def test_each_protocol_recognises_the_real_adapter_classes(cls: type, has: set[type]) -> None:
    bare = cls.__new__(cls)  # an instance, nothing started: only its class's methods
    for proto in CAPABILITIES:
        assert issubclass(cls, proto) is (proto in has), (cls.__name__, proto.__name__)
        assert isinstance(bare, proto) is (proto in has), (cls.__name__, proto.__name__)


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(("proto", "cls"), [
    (Publisher, MqttAdapter), (Joiner, ZigbeeAdapter), (Remover, ZigbeeAdapter),
    (Publishing, MqttAdapter),
])
def test_the_adapters_methods_have_the_protocols_signatures(proto: type, cls: type) -> None:
    # a runtime check only sees the name: the parameters must agree too
    name = "publish" if proto is Publishing else CAPABILITIES[proto]
    ours, theirs = getattr(proto, name), getattr(cls, name)
    assert inspect.iscoroutinefunction(ours) and inspect.iscoroutinefunction(theirs)
    assert _params(theirs) == _params(ours)


def test_the_rules_publishing_port_is_the_publisher_capability() -> None:
    assert _params(Publishing.publish) == _params(Publisher.publish)

    class Other:
        async def publish(self, topic: str, payload: bytes, qos: int = 1,
                          retain: bool = False) -> CommandResult:
            return CommandResult.sent()

    assert isinstance(Other(), Publishing) and isinstance(Other(), Publisher)


def test_a_method_set_to_none_is_not_the_ability() -> None:
    class Disabled:
        permit_join = None

    assert not isinstance(Disabled(), Joiner)
    assert not issubclass(Disabled, Joiner)


# -- the control API ---------------------------------------------------------------------------


class FakeJoiner:
    """Structurally a Joiner (and a Remover), no Adapter base class."""

    def __init__(self) -> None:
        self.joins: list[int] = []
        self.removed: list[str] = []

    def owns(self, device: str) -> bool:
        return device.startswith("zb:")

    async def permit_join(self, seconds: int) -> dict[str, Any]:
        self.joins.append(seconds)
        return {"adapter": "zb", "seconds": seconds}

    async def remove(self, device: str) -> CommandResult:
        self.removed.append(device)
        return CommandResult.delivered("left the network")


class Plain:
    """An adapter with neither ability."""

    def owns(self, device: str) -> bool:
        return device.startswith("sim:")


class Supervisor:
    def __init__(self, adapters: dict[str, Any], states: dict[str, AdapterState]) -> None:
        self.adapters = adapters
        self.states = states

    def owner_of(self, device: str) -> Any:
        return next((a for a in self.adapters.values() if a.owns(device)), None)


class Registry:
    def __init__(self, *known: str) -> None:
        self.known = set(known)

    def remove(self, device: str) -> bool:
        if device not in self.known:
            return False
        self.known.discard(device)
        return True


def gateway(sup: Supervisor, devices: Registry, tmp_path: Path) -> Any:
    config = SimpleNamespace(api=ApiConfig(command_timeout=5.0),
                             socket_path=tmp_path / "gateway.sock")
    return SimpleNamespace(config=config, metrics=CollectorRegistry(), started_at=0.0,
                           ready=True, supervisor=sup, devices=devices)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    sup = Supervisor({}, {})
    gw = gateway(sup, Registry(), tmp_path)
    server = ApiServer(gw)
    app = web.Application()
    app.router.add_post("/api/permit-join", server.permit_join)
    app.router.add_delete("/api/devices/{device}", server.remove_device)
    async with TestClient(TestServer(app)) as client:
        yield client, gw


async def test_permit_join_opens_only_the_adapters_that_can_join(
        api: tuple[TestClient[Any, Any], Any]) -> None:
    client, gw = api
    zb = FakeJoiner()
    gw.supervisor.adapters.update(zb=zb, sim=Plain())
    rsp = await client.post("/api/permit-join", json={"seconds": 30})
    assert rsp.status == 200
    body = await rsp.json()
    assert body["adapters"] == {"zb": {"ok": True, "result": {"adapter": "zb", "seconds": 30}}}
    assert zb.joins == [30]
    rsp = await client.post("/api/permit-join", json={"seconds": 10, "adapter": "sim"})
    assert rsp.status == 409
    assert (await rsp.json())["error"] == "adapter 'sim' is not running or cannot permit joining"
    assert zb.joins == [30]


async def test_permit_join_names_configured_joining_adapters_that_are_not_running(
        api: tuple[TestClient[Any, Any], Any]) -> None:
    client, gw = api
    gw.supervisor.adapters.update(sim=Plain())
    gw.supervisor.states.update(
        zigbee=AdapterState("zigbee", "zigbee", state="backoff"),  # ZigbeeAdapter: a Joiner
        sim=AdapterState("sim", "simulator", state="running"),
        mq=AdapterState("mq", "mqtt", state="backoff"))  # MqttAdapter cannot join
    rsp = await client.post("/api/permit-join", json={"seconds": 10})
    assert rsp.status == 409
    assert (await rsp.json())["error"] == ("no adapter can permit joining right now: "
                                           "zigbee (backoff) not running; see gateway status")
    gw.supervisor.states.pop("zigbee")
    rsp = await client.post("/api/permit-join", json={"seconds": 10})
    assert (await rsp.json())["error"].startswith("no running adapter can permit joining: add "
                                                  "a zigbee adapter")


async def test_removing_a_device_asks_a_remover_first_and_only_a_remover(
        api: tuple[TestClient[Any, Any], Any]) -> None:
    client, gw = api
    zb = FakeJoiner()
    gw.supervisor.adapters.update(zb=zb, sim=Plain())
    gw.devices.known.update({"zb:01", "sim:a"})
    rsp = await client.delete("/api/devices/zb:01")
    assert rsp.status == 200
    assert await rsp.json() == {"removed": "zb:01", "adapter": {
        "ok": True, "status": "delivered", "detail": "left the network"}}
    assert zb.removed == ["zb:01"] and gw.devices.known == {"sim:a"}
    rsp = await client.delete("/api/devices/sim:a")  # the simulator cannot: registry only
    assert rsp.status == 200 and await rsp.json() == {"removed": "sim:a"}
    rsp = await client.delete("/api/devices/sim:a")
    assert rsp.status == 404
