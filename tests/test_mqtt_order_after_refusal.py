"""Per-device order holds across an outbox refusal: held MQTT messages are not overtaken.

DESIGN.md ("Accepted means durable"): a refused MQTT message stays unacknowledged and is
retried in order until the outbox takes it; a later message from the same source never
overtakes a held one. The broker and the devices are real (mosquitto, gmqtt clients
publishing QoS 1 with per-device sequence numbers); the sink is a test double of the
outbox's refusal (queue full, disk full), switched on and off by the test, because the
point is the moment the store starts accepting again while devices keep publishing.
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
from gateway.reading import Reading
from tests.brokers import Mosquitto
from tests.waiting import eventually

DEVICES = 4


class RefusingSink:
    """Stands in for the outbox: accepts, or refuses whole batches while ``refusing``.

    ``refuse_calls`` refuses that many calls, then accepts. ``commit_delay`` makes each
    call wait like a group commit does, so batches overlap as they do in front of the
    real outbox; whether a call is refused is decided when its "commit" ends.
    """

    def __init__(self, commit_delay: float = 0.0) -> None:
        self.accepted: list[Reading] = []
        self.calls = 0
        self.refused_calls = 0
        self.refusing = False
        self.refuse_calls = 0
        self.commit_delay = commit_delay

    async def accept(self, readings: Sequence[Reading]) -> bool:
        self.calls += 1
        if self.commit_delay:
            await asyncio.sleep(self.commit_delay)
        if self.refusing or self.refuse_calls:
            self.refuse_calls = max(0, self.refuse_calls - 1)
            self.refused_calls += 1
            return False
        self.accepted.extend(readings)
        return True

    def seqs(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for r in self.accepted:
            if r.metric == "seq":
                out.setdefault(r.device, []).append(int(r.value))
        return out

    def messages(self) -> int:
        return sum(1 for r in self.accepted if r.metric == "seq")

    def accepts_more(self, count: int) -> Callable[[], bool]:
        """A condition: ``count`` more messages accepted than now."""
        target = self.messages() + count
        return lambda: self.messages() >= target


def order_violations(seqs: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """(device, earlier seq, later seq) wherever a device's sequence does not increase."""
    return [(dev, a, b) for dev, got in seqs.items() for a, b in zip(got, got[1:], strict=False)
            if b <= a]


#: how often the tests look: their conditions race publishers that keep going, and each
#: test acts the moment one holds
LOOK = 0.005


class Harness:
    def __init__(self, broker: Mosquitto, tmp_path: Path, sink: RefusingSink) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.sink = sink
        self.metrics = CollectorRegistry()
        self.adapters: list[MqttAdapter] = []

    async def adapter(self, **kw: Any) -> MqttAdapter:
        cfg = MqttConfig.model_validate({
            "type": "mqtt", "name": "mqtt", "host": self.broker.host, "port": self.broker.port,
            "client_id": "gw-order", "reconnect_delay": 0.2,
            "subscriptions": [{"topic": "devices/{device}/telemetry", "timestamp": "ts"}],
            **kw})
        ctx = AdapterContext(name="mqtt", sink=self.sink, state_dir=self.tmp_path,
                             metrics=self.metrics)
        adapter = MqttAdapter(cfg, ctx)
        await adapter.start()
        self.adapters.append(adapter)
        return adapter

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.get_sample_value(name, {"adapter": "mqtt", **labels})
        return 0.0 if value is None else value

    def held(self) -> float:
        return self.metric("gateway_mqtt_held")


@pytest.fixture
async def devices(mosquitto: Mosquitto) -> AsyncIterator[list[gmqtt.Client]]:
    clients = []
    for n in range(DEVICES):
        client = gmqtt.Client(f"order-device-{n}")
        await client.connect(mosquitto.host, mosquitto.port, keepalive=10)
        clients.append(client)
    yield clients
    for client in clients:
        await client.disconnect()


def payload(seq: int) -> bytes:
    return json.dumps({"temperature": 20 + seq / 100, "seq": seq, "ts": time.time()}).encode()


async def publish_paced(clients: list[gmqtt.Client], count: int, gap: float = 0.004) -> None:
    """Every device publishes ``count`` QoS 1 messages with increasing seq, interleaved."""
    for seq in range(count):
        for n, client in enumerate(clients):
            client.publish(f"devices/d{n}/telemetry", payload(seq), qos=1)
        await asyncio.sleep(gap)


async def publish_until(clients: list[gmqtt.Client], done: asyncio.Event,
                        gap: float = 0.003) -> int:
    """Like :func:`publish_paced` until ``done`` is set; returns how many each published."""
    seq = 0
    while not done.is_set():
        for n, client in enumerate(clients):
            client.publish(f"devices/d{n}/telemetry", payload(seq), qos=1)
        seq += 1
        await asyncio.sleep(gap)
    return seq


def assert_each_message_once_in_order(sink: RefusingSink, count: int) -> None:
    seqs = sink.seqs()
    violations = order_violations(seqs)
    assert not violations, f"{len(violations)} order violations, e.g. {violations[:3]}"
    assert seqs == {f"mqtt:d{n}": list(range(count)) for n in range(DEVICES)}


async def stop_all(h: Harness) -> None:
    h.sink.refusing, h.sink.refuse_calls = False, 0
    for adapter in h.adapters:
        await adapter.stop()


async def test_messages_arriving_while_one_is_held_wait_behind_it(
        mosquitto: Mosquitto, tmp_path: Path, devices: list[gmqtt.Client]) -> None:
    count = 150
    h = Harness(mosquitto, tmp_path, RefusingSink(commit_delay=0.002))
    await h.adapter(receive_maximum=200)
    try:
        publishing = asyncio.ensure_future(publish_paced(devices, count))
        await eventually(lambda: h.sink.messages() >= 40, 10.0, "first messages accepted",
                         step=LOOK)
        h.sink.refusing = True  # the outbox fills up...
        await eventually(lambda: h.held() >= 40, 10.0, "messages held after the refusal", step=LOOK)
        h.sink.refusing = False  # ...and takes readings again while devices keep publishing
        assert not publishing.done(), "publishers finished before the store came back"
        await publishing
        await eventually(lambda: h.sink.messages() >= DEVICES * count, 15.0,
                         f"all {DEVICES * count} messages accepted", step=LOOK)
        await eventually(lambda: h.held() == 0, 10.0, "nothing held", step=LOOK)
        assert_each_message_once_in_order(h.sink, count)
        refused = h.metric("gateway_mqtt_messages_total", result="refused")
        accepted = h.metric("gateway_mqtt_messages_total", result="accepted")
        assert 1 <= refused <= DEVICES * count and accepted == DEVICES * count
    finally:
        await stop_all(h)


async def test_a_store_refusing_several_times_in_a_row_keeps_per_device_order(
        mosquitto: Mosquitto, tmp_path: Path, devices: list[gmqtt.Client]) -> None:
    h = Harness(mosquitto, tmp_path, RefusingSink())
    await h.adapter()
    done = asyncio.Event()
    try:
        publishing = asyncio.ensure_future(publish_until(devices, done))
        await eventually(lambda: h.sink.messages() >= 20, 10.0, "first messages accepted",
                         step=LOOK)
        # a store failing on and off: the retries of the held head are refused too
        for _ in range(3):
            h.sink.refuse_calls = 3
            await eventually(lambda: h.sink.refuse_calls == 0, 10.0, "three refusals", step=LOOK)
            await eventually(h.sink.accepts_more(20), 10.0, "messages accepted again", step=LOOK)
        done.set()
        count = await publishing
        await eventually(lambda: h.sink.messages() >= DEVICES * count, 15.0,
                         f"all {DEVICES * count} messages accepted", step=LOOK)
        assert_each_message_once_in_order(h.sink, count)
    finally:
        await stop_all(h)


async def test_stopping_while_messages_are_held_leaves_them_to_the_broker_in_order(
        mosquitto: Mosquitto, tmp_path: Path, devices: list[gmqtt.Client]) -> None:
    count = 30
    h = Harness(mosquitto, tmp_path, RefusingSink())
    first = await h.adapter()
    h.sink.refusing = True  # the store is failing: everything is held
    await publish_paced(devices, count, gap=0.0)
    await eventually(lambda: h.held() == DEVICES * count, 10.0, "every message held", step=LOOK)
    t0 = time.monotonic()
    await asyncio.wait_for(first.stop(), 5)
    # the wait for acceptance ends at once: held messages are not "being accepted"
    assert time.monotonic() - t0 < 1.5
    h.adapters.remove(first)
    assert h.sink.accepted == [] and h.held() == 0
    h.sink.refusing = False
    await h.adapter()  # same session: none of them was acknowledged
    try:
        await eventually(lambda: h.sink.messages() >= DEVICES * count, 10.0,
                         "held messages sent again by the broker", step=LOOK)
        assert_each_message_once_in_order(h.sink, count)
    finally:
        await stop_all(h)


async def test_held_messages_wait_on_the_ingest_path_and_go_in_merged_sink_calls(
        mosquitto: Mosquitto, tmp_path: Path, devices: list[gmqtt.Client]) -> None:
    # the adapter base's ingest path holds them (counted as work in flight, drained and
    # given up by the stop deadline), and the backlog leaves in a few large sink calls
    count = 30
    h = Harness(mosquitto, tmp_path, RefusingSink())
    adapter = await h.adapter()
    try:
        h.sink.refusing = True
        await publish_paced(devices, count, gap=0.002)
        await eventually(lambda: h.held() == DEVICES * count, 10.0, "every message held",
                         step=LOOK)
        assert adapter.ingest.held() and adapter.ingest.busy >= 1
        assert adapter.ingest.refusals >= 1
        calls = h.sink.calls
        h.sink.refusing = False
        await eventually(lambda: h.sink.messages() >= DEVICES * count, 10.0,
                         "the held messages accepted", step=LOOK)
        assert h.sink.calls - calls <= 3, f"{h.sink.calls - calls} sink calls for the backlog"
        assert_each_message_once_in_order(h.sink, count)
        await eventually(lambda: h.held() == 0 and adapter.ingest.busy == 0, 5.0,
                         "nothing left on the ingest path", step=LOOK)
        assert h.metric("gateway_mqtt_messages_total", result="accepted") == DEVICES * count
    finally:
        await stop_all(h)
