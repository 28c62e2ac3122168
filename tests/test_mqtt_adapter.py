"""The MQTT adapter in-process against a real mosquitto: acknowledgement, refusal, commands.

Devices are real gmqtt clients on the same broker. The sink is a test stand-in for the
core pipeline (tested on its own and end to end in test_mqtt_daemon.py), so each test can
hold or refuse a batch at the exact moment it needs to.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.mqtt import MqttAdapter
from gateway.adapters.mqtt.config import MqttConfig
from gateway.core.config import DevicesSection
from gateway.core.registry import DeviceRegistry
from gateway.reading import Command, Reading
from tests.brokers import Mosquitto, free_port
from tests.waiting import eventually


class GateSink:
    """Records batches; can hold them (``gate``) or refuse the next ``refuse`` ones."""

    def __init__(self) -> None:
        self.calls: list[list[Reading]] = []
        self.accepted: list[Reading] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse = 0

    async def accept(self, readings: Sequence[Reading]) -> bool:
        self.calls.append(list(readings))
        await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            return False
        self.accepted.extend(readings)
        return True


def adapter_config(broker: Mosquitto, **kw: Any) -> MqttConfig:
    return MqttConfig.model_validate({
        "type": "mqtt", "name": "mqtt", "host": broker.host, "port": broker.port,
        "client_id": "gw-test", "reconnect_delay": 0.2,
        "subscriptions": [{"topic": "devices/{device}/telemetry", "timestamp": "ts",
                           "device_type": "climate"},
                          {"topic": "sensors/{device}/{metric}", "format": "value"}],
        **kw})


class Harness:
    def __init__(self, broker: Mosquitto, tmp_path: Path) -> None:
        self.broker = broker
        self.metrics = CollectorRegistry()
        self.sink = GateSink()
        self.devices = DeviceRegistry(DevicesSection(), tmp_path / "devices.json", self.metrics)
        self.tmp_path = tmp_path
        self.adapters: list[MqttAdapter] = []

    async def adapter(self, **kw: Any) -> MqttAdapter:
        ctx = AdapterContext(name="mqtt", sink=self.sink, state_dir=self.tmp_path,
                             metrics=self.metrics, devices=self.devices)
        a = MqttAdapter(adapter_config(self.broker, **kw), ctx)
        await a.start()
        self.adapters.append(a)
        return a

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def h(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(mosquitto, tmp_path)
    yield harness
    harness.sink.gate.set()
    for a in harness.adapters:
        await a.stop()


@pytest.fixture
async def device(mosquitto: Mosquitto) -> AsyncIterator[gmqtt.Client]:
    client = gmqtt.Client("device-1")
    await client.connect(mosquitto.host, mosquitto.port, keepalive=10)
    yield client
    await client.disconnect()


def telemetry(seq: int) -> bytes:
    return json.dumps({"temperature": 20 + seq / 10, "seq": seq, "ts": time.time()}).encode()


def acknowledged(client: gmqtt.Client) -> bool:
    """Every QoS 1 message ``client`` published has its PUBACK from the broker."""
    return bool(client._persistent_storage.is_empty)


def seqs(readings: list[Reading], device: str) -> list[Any]:
    return [r.value for r in readings if r.metric == "seq" and r.device == device]


async def test_readings_reach_the_sink_with_device_ids_and_type(
        h: Harness, device: gmqtt.Client) -> None:
    await h.adapter()
    device.publish("devices/kitchen/telemetry", telemetry(1), qos=1)
    device.publish("sensors/garage/humidity", b"41.5", qos=1)
    await eventually(lambda: len(h.sink.accepted) == 3, 5.0, "three readings accepted")
    got = {(r.device, r.metric): r.value for r in h.sink.accepted}
    assert got == {("mqtt:kitchen", "temperature"): 20.1, ("mqtt:kitchen", "seq"): 1,
                   ("mqtt:garage", "humidity"): 41.5}
    assert h.devices.get("mqtt:kitchen")["type"] == "climate"  # type: ignore[index]
    assert h.metric("gateway_mqtt_messages_total", adapter="mqtt", result="accepted") == 2


async def test_puback_is_withheld_until_the_sink_accepts(
        h: Harness, device: gmqtt.Client) -> None:
    adapter = await h.adapter()
    # accepted normally: acknowledged, so a reconnect does not bring it back
    device.publish("devices/a/telemetry", telemetry(1), qos=1)
    await eventually(lambda: len(h.sink.accepted) == 2, 5.0, "mqtt:a accepted")
    # held in the sink: no PUBACK yet
    h.sink.gate.clear()
    device.publish("devices/b/telemetry", telemetry(2), qos=1)
    await eventually(lambda: len(h.sink.calls) == 2, 5.0, "mqtt:b at the sink")
    # drop the connection under the adapter (what a crash does); gmqtt reconnects with
    # the same session and the broker sends what we never acknowledged again
    assert adapter._client is not None
    adapter._client._connection._transport.abort()
    await eventually(lambda: len(h.sink.calls) == 3 and adapter.connects == 2, 5.0,
                     "a reconnect and mqtt:b sent again")
    redelivered = {r.device for r in h.sink.calls[2]}
    assert redelivered == {"mqtt:b"}
    h.sink.gate.set()
    await eventually(lambda: len(h.sink.accepted) == 6, 5.0, "mqtt:a once and mqtt:b twice")
    # a later message on mqtt:a's topic: the broker keeps a topic's order, so a second
    # copy of mqtt:a's first message would reach us before it
    device.publish("devices/a/telemetry", telemetry(3), qos=1)
    await eventually(lambda: 3 in seqs(h.sink.accepted, "mqtt:a"), 5.0, "the later message")
    assert seqs(h.sink.accepted, "mqtt:a") == [1, 3]  # it had been acknowledged
    assert len(h.sink.calls) == 4


async def test_refused_message_is_held_then_accepted_once(
        h: Harness, device: gmqtt.Client) -> None:
    await h.adapter()
    h.sink.refuse = 3
    device.publish("devices/a/telemetry", telemetry(7), qos=1)
    await eventually(lambda: len(h.sink.accepted) == 2, 10.0, "accepted after three refusals")
    assert len(h.sink.calls) == 4
    assert [r.value for r in h.sink.accepted if r.metric == "seq"] == [7]
    assert h.metric("gateway_mqtt_messages_total", adapter="mqtt", result="refused") == 1
    assert h.metric("gateway_mqtt_held", adapter="mqtt") == 0


async def test_nack_mode_answers_quota_exceeded_and_mosquitto_then_discards_the_message(
        h: Harness, device: gmqtt.Client) -> None:
    adapter = await h.adapter(on_refused="nack")
    h.sink.refuse = 1
    device.publish("devices/a/telemetry", telemetry(1), qos=1)
    await eventually(lambda: h.metric("gateway_mqtt_messages_total", adapter="mqtt",
                                      result="refused") == 1, 5.0, "the refusal counted")
    # reconnecting with the same session brings nothing back: mosquitto took the 0x97
    # PUBACK as final, which is why hold (the default) exists. The PUBACK must have
    # reached the broker first (an abort with unread data resets the connection and the
    # kernel drops what it had not sent yet): queued, written, and then a publish of our
    # own answered, which mosquitto reads after the PUBACK on the same connection
    assert adapter._client is not None
    transport = adapter._client._connection._transport
    await eventually(lambda: not adapter._pubacks and transport.get_write_buffer_size() == 0,
                     5.0, "the 0x97 PUBACK written")
    probe = await adapter.publish("probe/after-puback", b"1", qos=1)
    assert probe.ok, probe
    adapter._client._connection._transport.abort()
    await eventually(lambda: adapter.connects == 2, 5.0, "a reconnect")
    # a message sent again would come before a later one on its topic
    device.publish("devices/a/telemetry", telemetry(2), qos=1)
    await eventually(lambda: seqs(h.sink.accepted, "mqtt:a") == [2], 5.0, "the later message")
    assert len(h.sink.calls) == 2  # the refused one, then only the later one


async def test_malformed_and_oversized_payloads_are_counted_and_nothing_else_is_lost(
        h: Harness, device: gmqtt.Client, caplog: pytest.LogCaptureFixture) -> None:
    await h.adapter(max_payload=256)
    for _ in range(3):  # repeats of one problem are counted, not logged again
        device.publish("devices/bad/telemetry", b"{not json", qos=1)
    device.publish("devices/bad/telemetry", b"[1,2,3]", qos=1)
    device.publish("devices/big/telemetry", b'{"x": "' + b"a" * 300 + b'"}', qos=1)
    device.publish("sensors/s1/temperature", b"warm", qos=1)
    device.publish("devices/good/telemetry", telemetry(1), qos=1)
    await eventually(lambda: len(h.sink.accepted) == 2, 5.0, "the good message accepted")
    assert {r.device for r in h.sink.accepted} == {"mqtt:good"}
    m = h.metric
    assert m("gateway_mqtt_messages_total", adapter="mqtt", result="malformed") == 5
    assert m("gateway_mqtt_messages_total", adapter="mqtt", result="oversized") == 1
    # devices the registry does not know share one label: invented ids cannot grow memory
    assert m("gateway_mqtt_malformed_total", adapter="mqtt", device="unknown",
             reason="bad_json") == 3
    assert m("gateway_mqtt_malformed_total", adapter="mqtt", device="unknown",
             reason="bad_shape") == 1
    assert m("gateway_mqtt_malformed_total", adapter="mqtt", device="unknown",
             reason="oversized") == 1
    assert m("gateway_mqtt_malformed_total", adapter="mqtt", device="mqtt:bad",
             reason="bad_json") == 0
    # logged once per device and reason (repeats within a minute are counted), with an excerpt
    bad_logs = [r.getMessage() for r in caplog.records if "mqtt:bad" in r.getMessage()]
    assert len(bad_logs) == 2 and "'{not json'" in bad_logs[0]


async def test_command_is_published_at_qos1_and_the_result_reported(
        h: Harness, mosquitto: Mosquitto) -> None:
    adapter = await h.adapter(commands={"topic": "devices/{device}/set"})
    got: list[tuple[str, bytes, int]] = []
    subacks: list[int] = []
    plug = gmqtt.Client("plug")
    plug.on_message = lambda c, t, p, q, props: got.append((t, p, q))
    plug.on_subscribe = lambda c, mid, qos, props: subacks.append(mid)
    await plug.connect(mosquitto.host, mosquitto.port)
    plug.subscribe("devices/plug/set", qos=1)
    await eventually(lambda: subacks, 5.0, "the plug's SUBACK")
    try:
        result = await adapter.send(Command("mqtt:plug", "set", {"state": "ON"}))
        assert result.ok and result.status == "sent", result
        await eventually(lambda: len(got) == 1, 5.0, "the command at the plug")
        assert got == [("devices/plug/set", b'{"state":"ON"}', 1)]
        # nobody listens on the lamp's topic: the broker says so and the caller hears it
        nobody = await adapter.send(Command("mqtt:lamp", "set", {"state": "ON"}))
        assert (nobody.ok, nobody.status) == (False, "refused") and "no device" in nobody.detail
        other = await adapter.send(Command("mqtt:plug", "reboot"))
        assert other.status == "unsupported"
        published = await adapter.publish("alerts/local", b"hot", qos=1)
        assert published.ok and published.status == "sent"
    finally:
        await plug.disconnect()


async def test_publish_refused_by_the_broker_acl_is_reported(
        mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read devices/#\ntopic read sensors/#\ntopic write allowed/#\n")
    broker = mosquitto_factory(extra=f"acl_file {acl}", name="acl")
    h = Harness(broker, tmp_path)
    adapter = await h.adapter()
    try:
        ok = await adapter.publish("allowed/x", b"1")
        assert ok.ok
        denied = await adapter.publish("forbidden/x", b"1")
        assert (denied.ok, denied.status) == (False, "refused")
        assert "0x87" in denied.detail
    finally:
        await adapter.stop()


async def test_start_fails_fast_with_a_readable_error_when_the_broker_is_down(
        tmp_path: Path) -> None:
    cfg = MqttConfig.model_validate({"type": "mqtt", "port": free_port(), "connect_timeout": 2,
                                     "subscriptions": [{"topic": "d/{device}"}]})
    ctx = AdapterContext(name="mqtt", sink=GateSink(), state_dir=tmp_path,
                         metrics=CollectorRegistry())
    adapter = MqttAdapter(cfg, ctx)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the device broker"):
        await adapter.start()
    assert time.monotonic() - t0 < 3


async def test_messages_sent_while_the_gateway_is_away_arrive_after_it_returns(
        h: Harness, device: gmqtt.Client) -> None:
    first = await h.adapter()
    await first.stop()
    h.adapters.remove(first)
    for seq in range(5):
        device.publish("devices/a/telemetry", telemetry(seq), qos=1)
    # the broker has taken all five while no gateway is connected
    await eventually(lambda: acknowledged(device), 5.0, "the broker's PUBACKs")
    assert h.sink.calls == []
    await h.adapter()
    await eventually(lambda: len(h.sink.accepted) == 10, 5.0, "the five messages")
    assert [r.value for r in h.sink.accepted if r.metric == "seq"] == [0, 1, 2, 3, 4]


async def test_stop_drains_accepted_work_and_leaves_the_rest_to_the_broker(
        h: Harness, device: gmqtt.Client) -> None:
    adapter = await h.adapter()
    h.sink.refuse = 10**6  # the store is failing: everything is held
    device.publish("devices/a/telemetry", telemetry(1), qos=1)
    await eventually(lambda: h.metric("gateway_mqtt_held", adapter="mqtt") == 1, 5.0,
                     "the message held")
    await asyncio.wait_for(adapter.stop(), 5)
    h.adapters.remove(adapter)
    h.sink.refuse = 0
    await h.adapter()  # same session: the held message was never acknowledged
    await eventually(lambda: len(h.sink.accepted) == 2, 5.0, "the held message sent again")


async def test_adapter_reconnects_and_resubscribes_after_the_broker_restarts(
        h: Harness, mosquitto: Mosquitto) -> None:
    adapter = await h.adapter()
    mosquitto.stop()  # no persistence: the broker forgets our session and subscriptions
    await eventually(lambda: h.metric("gateway_mqtt_connected", adapter="mqtt") == 0, 5.0,
                     "the adapter disconnected")
    mosquitto.start()
    await eventually(lambda: adapter.connects == 2, 10.0, "a reconnect")
    device = gmqtt.Client("device-after-restart")
    await device.connect(mosquitto.host, mosquitto.port)
    try:
        # retained: it reaches the adapter whether it comes before or after the
        # resubscription's SUBACK, and only through a subscription
        device.publish("devices/a/telemetry", telemetry(3), qos=1, retain=True)
        await eventually(lambda: len(h.sink.accepted) == 2, 5.0, "a message after the restart")
    finally:
        await device.disconnect()
    assert h.metric("gateway_mqtt_connected", adapter="mqtt") == 1


async def test_stop_acknowledges_what_is_accepted_during_the_drain(
        h: Harness, device: gmqtt.Client) -> None:
    adapter = await h.adapter()
    h.sink.gate.clear()  # a commit in progress when the stop begins
    for seq in range(20):
        device.publish("devices/a/telemetry", telemetry(seq), qos=1)
    await eventually(lambda: sum(len(c) for c in h.sink.calls) == 40, 5.0,
                     "all twenty at the sink")
    stopping = asyncio.ensure_future(adapter.stop())
    await eventually(lambda: adapter._stopping, 5.0, "the stop begun")
    # that the stop does not end needs a window: far longer than a stop with nothing to
    # wait for takes, far shorter than the drain timeout
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waits for the commit...
    h.sink.gate.set()
    await asyncio.wait_for(stopping, 5)  # ...then acknowledges and disconnects
    h.adapters.remove(adapter)
    calls = len(h.sink.calls)
    # mosquitto reads one packet per socket per loop turn: a new session under the same
    # client id arriving at once can take over before it has read our last PUBACKs (the
    # messages would come again: duplicates, not loss). A restart is never that fast.
    await asyncio.sleep(0.5)
    await h.adapter()
    # a message sent again would come before a later one on its topic
    device.publish("devices/a/telemetry", telemetry(20), qos=1)
    await eventually(lambda: 20 in seqs(h.sink.accepted, "mqtt:a"), 5.0, "the later message")
    # nothing came back: every PUBACK left before we did
    assert seqs(h.sink.accepted, "mqtt:a") == list(range(21))
    assert len(h.sink.calls) == calls + 1


async def test_zigbee2mqtt_device_list_fills_in_models_and_vendors(
        h: Harness, mosquitto: Mosquitto) -> None:
    # what zigbee2mqtt 1.x retains on <base>/bridge/devices (trimmed to the fields we read)
    devices = [
        {"ieee_address": "0x00124b0018e1d3f2", "type": "Coordinator", "friendly_name":
         "Coordinator", "definition": None},
        {"ieee_address": "0x00158d0004a1b2c3", "type": "EndDevice",
         "friendly_name": "living_room_climate",
         "definition": {"model": "WSDCGQ11LM", "vendor": "Xiaomi",
                        "description": "Aqara temperature, humidity and pressure sensor"}},
        {"ieee_address": "0x680ae2fffe0a1b2c", "type": "Router", "friendly_name": "hall/plug",
         "definition": {"model": "E1603", "vendor": "IKEA"}},
    ]
    bridge = gmqtt.Client("z2m")
    await bridge.connect(mosquitto.host, mosquitto.port)
    bridge.publish("zigbee2mqtt/bridge/devices", json.dumps(devices).encode(), qos=1,
                   retain=True)
    # retained by the broker before the adapter subscribes: it comes as a retained message
    await eventually(lambda: acknowledged(bridge), 5.0, "the broker's PUBACK")
    await h.adapter(subscriptions=[{"topic": "zigbee2mqtt/{device}", "format": "zigbee2mqtt"}])
    try:
        await eventually(lambda: h.devices.get("mqtt:living_room_climate") is not None, 5.0,
                         "the device list read")
        dev = h.devices.get("mqtt:living_room_climate")
        assert dev is not None
        assert (dev["model"], dev["manufacturer"], dev["ieee_address"]) == (
            "WSDCGQ11LM", "Xiaomi", "0x00158d0004a1b2c3")
        assert h.devices.get("mqtt:Coordinator") is None
        assert h.devices.get("mqtt:hall/plug") is None  # not addressable as one topic level
        bridge.publish("zigbee2mqtt/living_room_climate",
                       b'{"temperature": 22.66, "humidity": 52.43}', qos=1)
        await eventually(lambda: len(h.sink.accepted) == 2, 5.0, "the device's readings")
        assert h.sink.calls[0][0].device == "mqtt:living_room_climate"
    finally:
        await bridge.disconnect()
