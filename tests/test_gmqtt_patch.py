"""The gmqtt patches (gateway/core/gmqtt_patch.py), each against a real mosquitto.

One test per patched behaviour: PUBACK reason codes reach the caller (both modes), QoS 1
PUBLISHes are handled without a task per message, PUBACKs of one loop turn leave in one
write; and the version guard refuses any other gmqtt.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MqttPackageHandler

from gateway.core import gmqtt_patch
from tests.brokers import Mosquitto
from tests.waiting import eventually

NO_MATCHING_SUBSCRIBERS = 0x10


async def _connect(broker: Mosquitto, client_id: str, **kw: Any) -> gmqtt.Client:
    client = gmqtt.Client(client_id, **kw)
    await asyncio.wait_for(client.connect(broker.host, broker.port, version=MQTTv50), 10)
    return client


async def _subscribe(client: gmqtt.Client, topic: str) -> None:
    """Subscribe and wait for the SUBACK."""
    acked = asyncio.Event()
    client.on_subscribe = lambda *args: acked.set()
    client.subscribe(topic, qos=1)
    await asyncio.wait_for(acked.wait(), 10)


def test_the_guard_refuses_another_gmqtt_version_and_missing_internals(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gmqtt_patch.check_version(gmqtt_patch.GMQTT_VERSION)  # the installed one passes at import
    with pytest.raises(gmqtt_patch.GmqttMismatch, match="gmqtt 0.9.0 is installed"):
        gmqtt_patch.check_version("0.9.0")
    monkeypatch.delattr(MqttPackageHandler, "_send_puback")
    with pytest.raises(gmqtt_patch.GmqttMismatch, match="_send_puback"):
        gmqtt_patch.check_version(gmqtt_patch.GMQTT_VERSION)


@pytest.mark.parametrize("replace", [False, True])
async def test_puback_reason_codes_reach_the_callback(mosquitto: Mosquitto,
                                                      replace: bool) -> None:
    # mosquitto answers a QoS 1 publish nobody subscribes to with 0x10 (no matching
    # subscribers), and one that has a subscriber with 0x00: gmqtt alone reports neither
    got: list[tuple[int, int]] = []
    listener = await _connect(mosquitto, "listener")
    await _subscribe(listener, "watched/#")
    storage = gmqtt_patch.MidRecorder()
    client = await _connect(mosquitto, "publisher", persistent_storage=storage)
    gmqtt_patch.on_puback(client, lambda mid, reason: got.append((mid, reason)),
                          replace=replace)
    try:
        if replace:
            lonely = gmqtt_patch.publish_qos1(client, "nobody/listens", b"1")
            watched = gmqtt_patch.publish_qos1(client, "watched/x", b"2")
        else:
            client.publish("nobody/listens", b"1", qos=1)
            lonely = storage.last_mid
            client.publish("watched/x", b"2", qos=1)
            watched = storage.last_mid
        assert lonely != watched
        await eventually(lambda: len(got) == 2, 10, "two PUBACKs")
        assert dict(got) == {lonely: NO_MATCHING_SUBSCRIBERS, watched: 0}
        assert gmqtt_patch.receive_maximum(client) > 0
    finally:
        await client.disconnect()
        await listener.disconnect()


async def test_qos1_publishes_are_handled_without_a_task_each_and_acked_in_batches(
        mosquitto: Mosquitto) -> None:
    count = 300
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    tasks_seen: list[int] = []
    batcher = gmqtt_patch.PubackBatcher(loop)
    # a small window: the broker sends all messages only if our PUBACKs reach it
    client = gmqtt.Client("receiver", clean_session=False, optimistic_acknowledgement=False,
                          receive_maximum=20, session_expiry_interval=60)

    def on_qos1(mid: int, payload: bytes, topic: str, properties: Any) -> None:
        received.append(payload)
        tasks_seen.append(len(asyncio.all_tasks(loop)))
        batcher.queue(mid, 0)

    gmqtt_patch.take_qos1(client, on_qos1)
    gmqtt_patch.batch_pubacks(client, batcher)
    await asyncio.wait_for(client.connect(mosquitto.host, mosquitto.port, version=MQTTv50), 10)
    await _subscribe(client, "load/#")
    baseline = len(asyncio.all_tasks(loop))
    try:
        lines = "".join(f"{i}\n" for i in range(count)).encode()
        await asyncio.to_thread(
            subprocess.run, ["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port),
                             "-V", "mqttv5", "-q", "1", "-t", "load/a", "-l"],
            input=lines, check=True, timeout=30)
        await eventually(lambda: len(received) == count, 20, f"{count} messages")
        await eventually(lambda: len(batcher) == 0, 5, "the last PUBACKs written")
    finally:
        await client.disconnect()
    assert received == [str(i).encode() for i in range(count)]
    # gmqtt's own path would add a task per message in flight (up to 20 here)
    assert max(tasks_seen) <= baseline + 2, (baseline, max(tasks_seen))
    assert 1 <= batcher.writes < count, batcher.writes
