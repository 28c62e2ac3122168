"""The gateway as a CoAP client: observing and polling real aiocoap devices, sending commands."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from gateway.reading import Command
from tests.coap_helpers import Actuator, Device, DeviceResource, Gateway, PlainResource, eventually


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    d = Device()
    try:
        yield d
    finally:
        await d.stop()


async def _gateway(tmp_path: Path, device: Device, **spec: Any) -> Gateway:
    return await Gateway(tmp_path, {"devices": [
        {"id": "node-1", "address": device.address, "name": "Greenhouse node", "type": "climate",
         **spec}]}).start()


async def test_observe_notifications_reach_the_outbox(tmp_path: Path, device: Device) -> None:
    sensor = device.add("/sensors/climate", DeviceResource({"temperature": 18.0}))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[{"path": "/sensors/climate"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 18.0 for r in rs))
        for i in range(1, 11):
            sensor.set(temperature=18.0 + i)
        # notifications may be merged while one is being stored: wait for the final state
        stored = await gw.wait_stored(lambda rs: any(r.value == 28.0 for r in rs))
        assert all(r.device == "coap:node-1" and r.metric == "temperature" for r in stored)
        values = [r.value for r in stored]
        assert values == sorted(values)  # in the order the device sent them
        assert sensor.gets <= 11  # observed, not polled
        assert gw.directory.declared["coap:node-1"] == {"name": "Greenhouse node",
                                                        "type": "climate"}
        assert gw.metric("gateway_coap_observe_registrations_total", adapter="coap") == 1
    finally:
        await gw.stop()


async def test_observation_is_registered_again_after_the_device_reboots(
        tmp_path: Path, device: Device) -> None:
    sensor = device.add("/t", DeviceResource({"temperature": 10.0}))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[{"path": "/t", "quiet_after": "1s"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 10.0 for r in rs))
        await device.stop()  # reboot: the device forgets its observers
        rebooted = Device(device.port)
        sensor2 = rebooted.add("/t", DeviceResource({"temperature": 11.0}))
        await rebooted.start()
        try:
            # the gateway notices the silence and registers again
            await gw.wait_stored(lambda rs: any(r.value == 11.0 for r in rs))
            sensor2.set(temperature=12.0)
            await gw.wait_stored(lambda rs: any(r.value == 12.0 for r in rs))
            assert gw.metric("gateway_coap_observe_registrations_total", adapter="coap") >= 2
            assert sensor.gets >= 1
        finally:
            await rebooted.stop()
    finally:
        await gw.stop()


async def test_resource_without_observe_is_polled(tmp_path: Path, device: Device) -> None:
    plain = device.add("/lux", PlainResource("312"))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[
        {"path": "/lux", "metric": "illuminance", "unit": "lux", "poll_interval": "0.2s"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 312 for r in rs))
        plain.text = "400"
        stored = await gw.wait_stored(lambda rs: any(r.value == 400 for r in rs))
        assert {(r.metric, r.unit) for r in stored} == {("illuminance", "lx")}
        assert plain.gets >= 2
    finally:
        await gw.stop()


async def test_malformed_notification_is_counted_and_observation_goes_on(
        tmp_path: Path, device: Device) -> None:
    sensor = device.add("/s", DeviceResource({"temperature": 5.0}))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[{"path": "/s"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 5.0 for r in rs))
        sensor.set(temperature=[1, 2])  # not a value
        await eventually(lambda: gw.metric("gateway_coap_notifications_total", adapter="coap",
                                           result="malformed") == 1, what="malformed counted")
        sensor.set(temperature=6.0)
        await gw.wait_stored(lambda rs: any(r.value == 6.0 for r in rs))
    finally:
        await gw.stop()


async def test_refused_notification_is_kept_until_the_outbox_takes_it(
        tmp_path: Path, device: Device) -> None:
    sensor = device.add("/s", DeviceResource({"temperature": 5.0}))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[{"path": "/s"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 5.0 for r in rs))
        assert gw.sink is not None
        gw.sink.refuse = True  # a full queue
        sensor.set(temperature=7.0)
        await eventually(lambda: gw.metric("gateway_coap_notifications_total", adapter="coap",
                                           result="refused") >= 1, what="refusal")
        gw.sink.refuse = False
        await gw.wait_stored(lambda rs: any(r.value == 7.0 for r in rs))
    finally:
        await gw.stop()


async def test_a_refused_notification_is_retried_with_the_ingest_backoff_and_in_order(
        tmp_path: Path, device: Device) -> None:
    # held on the ingest path with (device, path) as its source: retried on the one
    # backoff (50 ms doubling), not once a second, and the resource's later states after it
    from gateway.adapters.ingest import RETRY_INITIAL

    sensor = device.add("/s", DeviceResource({"temperature": 5.0}))
    await device.start()
    gw = await _gateway(tmp_path, device, resources=[{"path": "/s"}])
    try:
        await gw.wait_stored(lambda rs: any(r.value == 5.0 for r in rs))
        assert gw.sink is not None and gw.adapter is not None
        gw.sink.refuse = True  # a full queue
        calls = gw.sink.calls
        t0 = time.monotonic()
        sensor.set(temperature=7.0)
        await eventually(lambda: gw.adapter is not None
                         and gw.adapter.ingest.held(("coap:node-1", "/s")), what="held")
        # the first three retries come within 50 + 100 + 200 ms (jittered, at most 1.5 x)
        await eventually(lambda: gw.sink is not None and gw.sink.calls >= calls + 4,
                         what="retries")
        assert time.monotonic() - t0 < 1.0, "retried once a second, not on the backoff"
        assert RETRY_INITIAL < 0.2
        # counted once as refused, however often it was retried
        assert gw.metric("gateway_coap_notifications_total", adapter="coap",
                         result="refused") == 1
        sensor.set(temperature=8.0)  # a later state waits behind the held one
        gw.sink.refuse = False
        stored = await gw.wait_stored(lambda rs: any(r.value == 8.0 for r in rs))
        values = [r.value for r in stored if r.metric == "temperature"]
        assert values.index(7.0) < values.index(8.0)
        assert values.count(7.0) == 1
        assert gw.metric("gateway_coap_notifications_total", adapter="coap",
                         result="dropped") == 0
    finally:
        await gw.stop()


async def test_command_result_is_the_devices_response_code(tmp_path: Path,
                                                           device: Device) -> None:
    relay = device.add("/relay", Actuator(Code.CHANGED))
    locked = device.add("/locked", Actuator(Code.FORBIDDEN))
    await device.start()
    gw = await _gateway(tmp_path, device, commands={
        "set": {"path": "/relay", "method": "PUT"},
        "on": {"path": "/relay", "method": "POST", "payload": "1", "format": "text"},
        "open": {"path": "/locked"}})
    assert gw.adapter is not None
    try:
        ok = await gw.adapter.send(Command("coap:node-1", "set", {"level": 40}))
        assert ok.ok and ok.status == "delivered" and ok.detail.startswith("2.04")
        assert relay.bodies[-1] == (50, b'{"level":40}')
        on = await gw.adapter.send(Command("coap:node-1", "on"))
        assert on.ok and relay.bodies[-1] == (0, b"1")
        refused = await gw.adapter.send(Command("coap:node-1", "open"))
        assert not refused.ok and refused.status == "refused" and "4.03" in refused.detail
        assert locked.bodies == [(50, b"{}")]
        unknown = await gw.adapter.send(Command("coap:node-1", "explode"))
        assert unknown.status == "unsupported" and "set" in unknown.detail
        stranger = await gw.adapter.send(Command("coap:nobody", "set"))
        assert stranger.status == "unknown_device"
    finally:
        await gw.stop()


async def test_command_to_a_silent_device_times_out(tmp_path: Path, device: Device) -> None:
    # nothing listens on the device's port: the CON request is never answered
    gw = await _gateway(tmp_path, device, commands={"set": {"path": "/r", "timeout": "0.5s"}})
    assert gw.adapter is not None
    try:
        result = await gw.adapter.send(Command("coap:node-1", "set", {"x": 1}))
        assert not result.ok and result.status in ("timeout", "error")
    finally:
        await gw.stop()


async def test_firmware_goes_out_block_wise_in_the_devices_block_size(
        tmp_path: Path, device: Device) -> None:
    fw = device.add("/fw", Actuator(Code.CHANGED))
    await device.start()
    image = bytes(range(256)) * 40  # 10 KiB
    files = tmp_path / "coap" / "files"
    files.mkdir(parents=True)
    (files / "node-1.2.bin").write_bytes(image)
    gw = await _gateway(tmp_path, device, block_size=64,
                        commands={"firmware": {"path": "/fw", "method": "PUT", "format": "file",
                                               "timeout": "60s"}})
    assert gw.adapter is not None
    try:
        result = await gw.adapter.send(Command("coap:node-1", "firmware",
                                               {"file": "node-1.2.bin"}))
        assert result.ok, result
        assert fw.bodies == [(42, image)]
        assert set(fw.block_sizes) == {64} and len(fw.block_sizes) == len(image) // 64
        escape = await gw.adapter.send(Command("coap:node-1", "firmware",
                                               {"file": "../outbox.db"}))
        assert escape.status == "refused"
    finally:
        await gw.stop()
