"""The LoRaWAN adapter inside the real daemon process, fed by the ChirpStack gRPC stand-in.

ChirpStack cannot run here: tests/chirpstack_fake.py serves its gRPC API from a thread
of this test process. The daemon is killed with SIGKILL to check that what was accepted
stays, and that the replayed history is not accepted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.lorawan.state import DeviceStateStore
from gateway.api.client import ApiClient, device_path
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import Mosquitto
from tests.chirpstack_fake import TENANT, FakeChirpStack, ThreadedFakeChirpStack
from tests.daemon import GatewayProcess
from tests.waiting import eventually, wait_until

EUI = "0102030405060708"


@pytest.fixture
def chirpstack() -> Iterator[ThreadedFakeChirpStack]:
    server = ThreadedFakeChirpStack()
    cs = server.start()
    server.call(lambda: cs.add_device(cs.add_application("farm"), EUI, "silo", "LHT65"))
    yield server
    server.stop()


def cursor(state_dir: Path) -> str:
    """The cursor the running daemon has written so far (snapshot plus journal)."""
    store = DeviceStateStore(state_dir / "lorawan-lora.json")
    store.load()
    progress = store.devices.get(EUI)
    return progress.cursor if progress else ""


def emit_uplinks(server: ThreadedFakeChirpStack, seqs: range) -> str:
    def emit(cs: FakeChirpStack) -> str:
        last = ""
        for i in seqs:
            last = cs.emit(EUI, "up", cs.uplink(EUI, i, obj={"seq": i}))
        return last
    assert server.cs is not None
    return str(server.call(emit, server.cs))


def outbox_seqs(path: Path) -> list[Any]:
    async def read() -> list[Any]:
        box = await Outbox.open(path, StoreConfig())
        try:
            rows = await box.read_telemetry(0, 10**9)
        finally:
            await box.close()
        return [r.value for row in rows for r in row.readings
                if r.metric == "seq" and r.device == f"lora:{EUI}"]
    return asyncio.run(read())


def test_uplinks_survive_sigkill_and_replayed_history_is_not_duplicated(
        tmp_path: Path, chirpstack: ThreadedFakeChirpStack,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    assert chirpstack.cs is not None
    token_file = tmp_path / "chirpstack-token"
    token_file.write_text(chirpstack.cs.token + "\n")
    state = tmp_path / "state"
    config = {
        "gateway": {"id": "gw-lora", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "store": {"commit_interval": "5ms"},
        "adapters": [{
            "type": "lorawan", "name": "lora", "server": chirpstack.cs.address,
            "api_token": "${file:" + str(token_file) + "}", "tenant_id": TENANT,
            "radio_metrics": False, "stream": {"backoff_initial": 0.05, "backoff_max": 0.2}}],
    }
    last = emit_uplinks(chirpstack, range(0, 5))
    gw = gateway_factory(config, name="gw1").start()
    wait_until(lambda: cursor(state) == last, 15, "the first five uplinks accepted")

    # the discovered device is in the registry, and a command reaches ChirpStack's queue
    api = ApiClient(state / "gateway.sock")
    device = api.call("GET", device_path(f"lora:{EUI}"))
    assert (device["name"], device["model"]) == ("silo", "LHT65")
    result = api.call("POST", device_path(f"lora:{EUI}", "/commands"),
                      {"action": "downlink", "params": {"f_port": 7, "data": "beef"}})
    assert (result["ok"], result["status"]) == (True, "sent"), result
    queued = chirpstack.call(lambda: [(q.f_port, q.data) for q in chirpstack.cs.queue])
    assert queued == [(7, b"\xbe\xef")]
    gw.kill()

    # ChirpStack still has the first five in its history and replays them on reconnect
    last = emit_uplinks(chirpstack, range(5, 8))
    gw = gateway_factory(config, name="gw2").start()
    wait_until(lambda: cursor(state) == last, 15, "the next three uplinks accepted")
    assert gw.stop() == 0

    assert outbox_seqs(state / "outbox.db") == list(range(8))


def test_mqtt_integration_source_survives_sigkill_without_loss_or_duplicates(
        tmp_path: Path, chirpstack: ThreadedFakeChirpStack, mosquitto: Mosquitto,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    from gmqtt import Client as MQTTClient
    from gmqtt.mqtt.constants import MQTTv311

    cs = chirpstack.cs
    assert cs is not None
    token_file = tmp_path / "chirpstack-token"
    token_file.write_text(cs.token)
    state = tmp_path / "state"
    app = chirpstack.call(lambda: cs.devices[EUI]["app"])
    config = {
        "gateway": {"id": "gw-lora", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "store": {"commit_interval": "5ms"},
        "adapters": [{
            "type": "lorawan", "name": "lora", "server": cs.address,
            "api_token": "${file:" + str(token_file) + "}", "tenant_id": TENANT,
            "radio_metrics": False, "source": "mqtt",
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port,
                     "client_id": "gw-lora-sigkill", "reconnect_delay": 0.2}}],
    }

    def publish(seqs: range) -> None:
        async def run() -> None:
            pub = MQTTClient(f"chirpstack-{seqs.start}")
            await pub.connect(mosquitto.host, mosquitto.port, version=MQTTv311)
            for i in seqs:
                ev = chirpstack.call(lambda i=i: cs.uplink(EUI, i, obj={"seq": i}))
                pub.publish(f"application/{app}/device/{EUI}/event/up", ev.SerializeToString(),
                            qos=1)
            # the broker has every one of them before this "ChirpStack" goes away
            await eventually(lambda: pub._persistent_storage.is_empty, 5, "the broker's PUBACKs")
            await pub.disconnect()
        asyncio.run(run())

    def accepted() -> int:
        store = DeviceStateStore(state / "lorawan-lora.json")
        store.load()
        progress = store.devices.get(EUI)
        return len(progress.dedup) if progress else 0

    gw = gateway_factory(config, name="gw1").start()
    publish(range(0, 6))
    wait_until(lambda: accepted() == 6, 15, "six uplinks accepted")
    gw.kill()
    publish(range(6, 10))  # the broker keeps them for the persistent session
    gw = gateway_factory(config, name="gw2").start()
    wait_until(lambda: accepted() == 10, 15, "the four sent while the gateway was down")
    assert gw.stop() == 0
    assert outbox_seqs(state / "outbox.db") == list(range(10))
