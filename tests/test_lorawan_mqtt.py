"""LoRaWAN adapter fed by ChirpStack's MQTT integration through a real mosquitto broker.

The events are real ``integration.UplinkEvent`` protobufs (and ChirpStack-style JSON),
published at QoS 1 as ChirpStack's MQTT integration does; discovery and downlinks still
go to the gRPC stand-in (tests/chirpstack_fake.py), since ChirpStack cannot run here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from gmqtt import Client as MQTTClient
from gmqtt.mqtt.constants import MQTTv311
from google.protobuf import json_format

from gateway.adapters.lorawan import LorawanAdapter
from gateway.reading import Command
from tests.brokers import Mosquitto
from tests.chirpstack_fake import TENANT, FakeChirpStack
from tests.lorawan_harness import (
    DOCUMENTED_STATUS,
    DOCUMENTED_UP,
    RecordingSink,
    make_adapter,
    metric,
    wait_until,
)

EUI = "0102030405060708"


@pytest.fixture
async def chirpstack() -> AsyncIterator[FakeChirpStack]:
    cs = FakeChirpStack()
    cs.add_device(cs.add_application("garden"), EUI, "greenhouse", profile="LHT65")
    await cs.start()
    yield cs
    await cs.stop()


@pytest.fixture
async def publisher(mosquitto: Mosquitto) -> AsyncIterator[MQTTClient]:
    """What ChirpStack's MQTT integration is to the broker: a QoS 1 publisher."""
    client = MQTTClient(f"chirpstack-{uuid.uuid4().hex[:6]}")
    await client.connect(mosquitto.host, mosquitto.port, version=MQTTv311)
    yield client
    await client.disconnect()


def topic(cs: FakeChirpStack, kind: str = "up") -> str:
    return f"application/{cs.devices[EUI]['app']}/device/{EUI}/event/{kind}"


def mqtt_adapter(tmp_path: Path, cs: FakeChirpStack, broker: Mosquitto, sink: RecordingSink,
                 **extra: Any) -> LorawanAdapter:
    mqtt = {"host": broker.host, "port": broker.port, "client_id": "gw-lora-test",
            "reconnect_delay": 0.2, **extra.pop("mqtt", {})}
    return make_adapter(tmp_path, sink=sink, radio_metrics=False, server=cs.address,
                        api_token=cs.token, tenant_id=TENANT, source="mqtt", mqtt=mqtt, **extra)


async def test_protobuf_uplink_becomes_readings(tmp_path: Path, chirpstack: FakeChirpStack,
                                                mosquitto: Mosquitto,
                                                publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink, profiles={
        "LHT65": {"fields": {"TempC": {"metric": "temperature", "unit": "Cel"}}}})
    await adapter.start()
    try:
        ev = chirpstack.uplink(EUI, 3, obj={"TempC": 19.5, "alarm": False})
        publisher.publish(topic(chirpstack), ev.SerializeToString(), qos=1)
        await wait_until(lambda: len(sink.accepted) == 2, what="readings")
        assert {r.metric: (r.value, r.unit) for r in sink.accepted} == {
            "temperature": (19.5, "Cel"), "alarm": (False, None)}
    finally:
        await adapter.stop()


async def test_json_uplink_with_unknown_fields_is_parsed(tmp_path: Path,
                                                         chirpstack: FakeChirpStack,
                                                         mosquitto: Mosquitto,
                                                         publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        ev = chirpstack.uplink(EUI, 4, obj={"co2": 612})
        body = json.loads(json_format.MessageToJson(ev))
        body["addedInAFutureRelease"] = {"x": 1}
        body["deviceInfo"]["alsoNew"] = True
        publisher.publish(topic(chirpstack), json.dumps(body).encode(), qos=1)
        await wait_until(lambda: sink.values("co2") == [612], what="co2 reading")
    finally:
        await adapter.stop()


async def test_garbage_is_counted_and_the_source_keeps_going(tmp_path: Path,
                                                             chirpstack: FakeChirpStack,
                                                             mosquitto: Mosquitto,
                                                             publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        publisher.publish(topic(chirpstack), b"\xff\xff\xff garbage", qos=1)
        publisher.publish(topic(chirpstack), b'{"fCnt": [', qos=1)
        publisher.publish(topic(chirpstack, "weird"), b"{}", qos=1)
        ev = chirpstack.uplink(EUI, 5, obj={"seq": 5})
        publisher.publish(topic(chirpstack), ev.SerializeToString(), qos=1)
        await wait_until(lambda: sink.values("seq") == [5], what="good message after garbage")
        reg = adapter.ctx.metrics
        await wait_until(lambda: sum(metric(reg, "gateway_lorawan_malformed_total",
                                            adapter="lora", reason=r)
                                     for r in ("bad_protobuf", "bad_json")) == 2,
                         what="two malformed messages counted")
        # an event type this adapter does not know (a newer ChirpStack) is ignored, not bad
        assert metric(reg, "gateway_lorawan_events_total", adapter="lora", kind="other") == 1
        assert not adapter.failed.done()
    finally:
        await adapter.stop()


async def test_persistent_session_delivers_what_arrived_while_stopped(
        tmp_path: Path, chirpstack: FakeChirpStack, mosquitto: Mosquitto,
        publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    await adapter.stop()  # the session (and its subscription) stays on the broker
    for i in range(5):
        ev = chirpstack.uplink(EUI, i, obj={"seq": i})
        publisher.publish(topic(chirpstack), ev.SerializeToString(), qos=1)
    await asyncio.sleep(0.2)
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        await wait_until(lambda: len(sink.values("seq")) >= 5, what="queued uplinks")
        await asyncio.sleep(0.2)
        assert sorted(sink.values("seq")) == [0, 1, 2, 3, 4]
    finally:
        await adapter.stop()


async def test_unaccepted_message_is_not_acknowledged_and_comes_again(
        tmp_path: Path, chirpstack: FakeChirpStack, mosquitto: Mosquitto,
        publisher: MQTTClient) -> None:
    refusing = RecordingSink()
    refusing.refuse = True
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, refusing)
    await adapter.start()
    ev = chirpstack.uplink(EUI, 9, obj={"seq": 9})
    publisher.publish(topic(chirpstack), ev.SerializeToString(), qos=1)
    await wait_until(lambda: refusing.refused_calls >= 1, what="a refusal")
    await adapter.stop()  # stops while the store refuses: no PUBACK goes out

    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        await wait_until(lambda: sink.values("seq") == [9], what="redelivery")
    finally:
        await adapter.stop()


async def test_an_uplink_waiting_behind_a_held_one_is_not_accepted_at_stop(
        tmp_path: Path, chirpstack: FakeChirpStack, mosquitto: Mosquitto,
        publisher: MQTTClient) -> None:
    refusing = RecordingSink()
    refusing.refuse = True
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, refusing)
    await adapter.start()
    for seq in (1, 2):
        publisher.publish(topic(chirpstack), chirpstack.uplink(EUI, seq, obj={"seq": seq})
                          .SerializeToString(), qos=1)
    await wait_until(lambda: refusing.refused_calls >= 1, what="a refusal")
    # the store takes readings again just as the adapter stops: uplink 1 is withheld (the
    # broker sends it again), so uplink 2, queued behind it, must be withheld too
    refusing.refuse = False
    await adapter.stop()
    assert refusing.values("seq") == []

    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        await wait_until(lambda: len(sink.values("seq")) == 2, what="both again")
        assert sink.values("seq") == [1, 2]
    finally:
        await adapter.stop()


async def test_redelivered_uplink_is_accepted_once(tmp_path: Path, chirpstack: FakeChirpStack,
                                                   mosquitto: Mosquitto,
                                                   publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        ev = chirpstack.uplink(EUI, 1, obj={"seq": 1})
        for _ in range(3):  # e.g. a PUBACK lost in a reconnect: the broker sends it again
            publisher.publish(topic(chirpstack), ev.SerializeToString(), qos=1)
        publisher.publish(topic(chirpstack), chirpstack.uplink(EUI, 2, obj={"seq": 2})
                          .SerializeToString(), qos=1)
        await wait_until(lambda: 2 in sink.values("seq"), what="second uplink")
        await wait_until(lambda: metric(adapter.ctx.metrics, "gateway_lorawan_duplicates_total",
                                        adapter="lora") == 2, what="duplicates counted")
        assert sorted(sink.values("seq")) == [1, 2]
    finally:
        await adapter.stop()


async def test_broker_restart_is_survived(tmp_path: Path, chirpstack: FakeChirpStack,
                                          mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(name="persist", persistence=True)
    sink = RecordingSink()
    adapter = mqtt_adapter(tmp_path, chirpstack, broker, sink)
    await adapter.start()
    try:
        broker.stop()
        broker.start()
        pub = MQTTClient("chirpstack-after-restart")
        await pub.connect(broker.host, broker.port, version=MQTTv311)
        try:
            source = adapter.source
            assert source is not None
            await wait_until(lambda: getattr(source, "connected", False), timeout=10,
                             what="reconnected")
            await asyncio.sleep(0.1)
            pub.publish(topic(chirpstack), chirpstack.uplink(EUI, 1, obj={"seq": 1})
                        .SerializeToString(), qos=1)
            await wait_until(lambda: sink.values("seq") == [1], timeout=10, what="uplink")
        finally:
            await pub.disconnect()
    finally:
        await adapter.stop()


async def test_ack_over_mqtt_completes_a_waiting_downlink(tmp_path: Path,
                                                          chirpstack: FakeChirpStack,
                                                          mosquitto: Mosquitto,
                                                          publisher: MQTTClient) -> None:
    from chirpstack_api.integration import integration_pb2 as integration

    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, RecordingSink())
    await adapter.start()
    try:
        task = asyncio.create_task(adapter.send(Command(
            f"lora:{EUI}", "downlink", {"f_port": 2, "data": "ff", "confirmed": True,
                                        "wait": 5})))
        await wait_until(lambda: bool(chirpstack.queue), what="enqueue")
        qid = chirpstack.queue[0].id
        ack = integration.AckEvent(deduplication_id="a-1",
                                   device_info=chirpstack.device_info(EUI), queue_item_id=qid,
                                   acknowledged=True, f_cnt_down=1)
        publisher.publish(topic(chirpstack, "ack"), ack.SerializeToString(), qos=1)
        result = await asyncio.wait_for(task, 5)
        assert (result.ok, result.status) == (True, "delivered")
    finally:
        await adapter.stop()


async def test_burst_for_one_device_is_accepted_in_order_without_false_gaps(
        tmp_path: Path, chirpstack: FakeChirpStack, mosquitto: Mosquitto,
        publisher: MQTTClient) -> None:
    sink = RecordingSink()
    sink.delay = 0.005  # like the outbox's group commit: handlers overlap
    adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink)
    await adapter.start()
    try:
        for i in range(30):
            publisher.publish(topic(chirpstack), chirpstack.uplink(EUI, i, obj={"seq": i})
                              .SerializeToString(), qos=1)
        await wait_until(lambda: len(sink.values("seq")) == 30, what="the burst")
        assert sink.values("seq") == list(range(30))
        assert metric(adapter.ctx.metrics, "gateway_lorawan_uplinks_missed_total",
                      adapter="lora") == 0
    finally:
        await adapter.stop()


async def test_chirpstack_json_events_become_readings(tmp_path: Path,
                                                      chirpstack: FakeChirpStack,
                                                      mosquitto: Mosquitto,
                                                      publisher: MQTTClient) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, server=chirpstack.address,
                           api_token=chirpstack.token, tenant_id=TENANT, source="mqtt",
                           mqtt={"host": mosquitto.host, "port": mosquitto.port,
                                 "encoding": "json"},
                           profiles={"LHT65": {"fields": {
                               "TempC": {"metric": "temperature", "unit": "Cel"},
                               "battery_volts": {"metric": "battery_voltage", "unit": "V"}}}})
    await adapter.start()
    try:
        publisher.publish(topic(chirpstack), json.dumps(DOCUMENTED_UP).encode(), qos=1)
        publisher.publish(f"application/x/device/{EUI}/event/status",
                          json.dumps(DOCUMENTED_STATUS).encode(), qos=1)
        await wait_until(lambda: sink.values("battery") == [64.2], what="status readings")
        got = {r.metric: (r.value, r.unit) for r in sink.accepted}
        assert got["temperature"] == (22, "Cel") and got["battery_voltage"] == (3.1, "V")
        assert (got["rssi"], got["snr"], got["frame_counter"], got["data_rate"]) == (
            (-101, "dBm"), (-4.5, "dB"), (42, None), (3, None))
        assert got["link_margin"] == (7, "dB")
        ts = {r.metric: r.ts for r in sink.accepted}
        assert ts["temperature"] == pytest.approx(1709294401.123457)
    finally:
        await adapter.stop()


async def test_retained_status_state_is_taken_once_across_restarts(
        tmp_path: Path, chirpstack: FakeChirpStack, mosquitto: Mosquitto,
        publisher: MQTTClient) -> None:
    from chirpstack_api.integration import integration_pb2 as integration

    status = integration.StatusEvent(deduplication_id="st-1",
                                     device_info=chirpstack.device_info(EUI), margin=5,
                                     battery_level=71.0)
    publisher.publish(f"application/x/device/{EUI}/state/status", status.SerializeToString(),
                      qos=1, retain=True)
    sink = RecordingSink()
    for _run in range(2):
        adapter = mqtt_adapter(tmp_path, chirpstack, mosquitto, sink,
                               mqtt={"host": mosquitto.host, "port": mosquitto.port,
                                     "client_id": f"gw-lora-{_run}"})
        await adapter.start()
        try:
            await wait_until(lambda a=adapter: metric(
                a.ctx.metrics, "gateway_lorawan_events_total", adapter="lora",
                kind="status") >= 1, what="the retained status")
        finally:
            await adapter.stop()
    assert sink.values("battery") == [71.0]


async def test_unreachable_integration_broker_fails_start_naming_it(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    from tests.brokers import free_port

    port = free_port()
    adapter = make_adapter(tmp_path, server=chirpstack.address, api_token=chirpstack.token,
                           tenant_id=TENANT, source="mqtt", mqtt={"port": port})
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*mqtt.host"):
        await adapter.start()
    await adapter.stop()
