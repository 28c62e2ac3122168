"""The device registry: registration, last values, online/offline, persistence."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.core.config import DevicesSection
from gateway.core.registry import FLUSH_SOON, DeviceRegistry
from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.waiting import eventually


def section(**kw: Any) -> DevicesSection:
    return DevicesSection.model_validate({"flush_interval": 60, **kw})


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db",
                            StoreConfig.model_validate({"commit_interval": 0.005}),
                            CollectorRegistry())
    yield box
    await box.close()


@pytest.fixture
def make(tmp_path: Path, outbox: Outbox) -> Callable[..., DeviceRegistry]:
    def factory(**kw: Any) -> DeviceRegistry:
        return DeviceRegistry(section(**kw), tmp_path / "devices.json", CollectorRegistry(),
                              events=outbox.append_event)
    return factory


def reading(device: str, metric: str = "temperature", value: float = 21.0,
            ts: float | None = None) -> Reading:
    return Reading(device, metric, value, "Cel", time.time() if ts is None else ts)


async def test_first_reading_registers_device_with_latest_values(
        make: Callable[..., DeviceRegistry]) -> None:
    reg = make()
    await reg.start()
    try:
        reg.observe([reading("mqtt:kitchen", value=20.5, ts=100.0),
                     reading("mqtt:kitchen", "humidity", 40.0, ts=100.0)])
        reg.observe([reading("mqtt:kitchen", value=21.0, ts=160.0)])
        dev = reg.get("mqtt:kitchen")
        assert dev is not None
        assert dev["adapter"] == "mqtt" and dev["online"] is True
        assert dev["values"]["temperature"] == {"value": 21.0, "unit": "Cel", "ts": 160.0}
        assert dev["values"]["humidity"]["value"] == 40.0
        assert dev["first_seen"] <= dev["last_seen"]
        assert set(dev) >= {"id", "adapter", "name", "type", "location", "tags", "model",
                            "manufacturer", "first_seen", "last_seen", "online", "values"}
        assert reg.latest("mqtt:kitchen")["temperature"].value == 21.0
        assert reg.get("mqtt:nobody") is None and reg.latest("mqtt:nobody") == {}
        json.dumps(reg.all())  # JSON-ready
    finally:
        await reg.stop()


async def test_declared_devices_are_known_before_their_first_reading(
        make: Callable[..., DeviceRegistry]) -> None:
    reg = make(declared=[{"id": "zigbee:aa", "name": "Hall motion", "type": "motion",
                          "location": "hall", "tags": ["ground"]}])
    await reg.start()
    try:
        dev = reg.get("zigbee:aa")
        assert dev is not None
        assert (dev["name"], dev["type"], dev["location"], dev["tags"]) == (
            "Hall motion", "motion", "hall", ["ground"])
        assert dev["online"] is False and dev["last_seen"] is None
        reg.declare("zigbee:aa", model="RTCGQ11LM", manufacturer="LUMI")
        assert reg.get("zigbee:aa")["model"] == "RTCGQ11LM"  # type: ignore[index]
        with pytest.raises(ValueError):
            reg.declare("zigbee:aa", online=True)
    finally:
        await reg.stop()


async def test_device_goes_offline_after_silence_and_back_online(
        make: Callable[..., DeviceRegistry], outbox: Outbox) -> None:
    reg = make(offline_after=0.3)
    seen: list[tuple[str, bool]] = []
    reg.add_listener(lambda device, online: seen.append((device, online)))
    await reg.start()
    try:
        reg.observe([reading("mqtt:th-1")])
        assert reg.is_online("mqtt:th-1")
        await eventually(lambda: not reg.is_online("mqtt:th-1"), 3.0, "mqtt:th-1 offline")
        reg.observe([reading("mqtt:th-1")])
        assert reg.is_online("mqtt:th-1")
        assert seen == [("mqtt:th-1", True), ("mqtt:th-1", False), ("mqtt:th-1", True)]
        await eventually(lambda: len(reg._pending_events) == 0, 5.0,
                         "the status events handed to the outbox")
        events = await outbox.read_events(0, 100)
        bodies = [(e.kind, e.body["device"], e.body["online"]) for e in events]
        assert bodies == [("status", "mqtt:th-1", True), ("status", "mqtt:th-1", False),
                          ("status", "mqtt:th-1", True)]
        offline = events[1].body
        assert offline["ts"] - offline["last_seen"] >= 0.3
    finally:
        await reg.stop()


async def test_offline_timeout_follows_device_type(make: Callable[..., DeviceRegistry]) -> None:
    reg = make(offline_after=0.2, offline_after_by_type={"battery": 30})
    await reg.start()
    try:
        reg.declare("zigbee:door", type="battery")
        reg.observe([reading("zigbee:door"), reading("mqtt:plug")])
        await eventually(lambda: not reg.is_online("mqtt:plug"), 3.0, "mqtt:plug offline")
        assert reg.is_online("zigbee:door")
    finally:
        await reg.stop()


async def test_failing_listener_does_not_stop_the_others(
        make: Callable[..., DeviceRegistry]) -> None:
    reg = make()
    calls: list[str] = []

    def broken(device: str, online: bool) -> None:
        raise RuntimeError("bug in a rule")

    reg.add_listener(broken)
    reg.add_listener(lambda d, o: calls.append(d))
    await reg.start()
    try:
        reg.observe([reading("mqtt:a")])
        assert calls == ["mqtt:a"]
    finally:
        await reg.stop()


async def test_registry_survives_restart(make: Callable[..., DeviceRegistry],
                                         tmp_path: Path) -> None:
    reg = make(flush_interval=3600)
    await reg.start()
    reg.observe([reading("mqtt:kitchen", value=22.5, ts=1000.0)])
    reg.declare("mqtt:kitchen", location="kitchen", tags=["a", "b"])
    reg.observe([reading("mqtt:old")])
    assert reg.rename("mqtt:kitchen", "Kitchen") is True
    assert reg.rename("mqtt:nobody", "x") is False
    assert reg.remove("mqtt:old") is True and reg.remove("mqtt:old") is False
    before = reg.get("mqtt:kitchen")
    await reg.stop()

    again = make(flush_interval=3600)
    await again.start()
    try:
        after = again.get("mqtt:kitchen")
        assert after == before
        assert after is not None and after["name"] == "Kitchen" and after["tags"] == ["a", "b"]
        assert again.latest("mqtt:kitchen")["temperature"] == reading(
            "mqtt:kitchen", value=22.5, ts=1000.0)
        assert again.get("mqtt:old") is None
    finally:
        await again.stop()


async def test_new_devices_reach_the_file_soon_but_readings_do_not_write_it(
        make: Callable[..., DeviceRegistry], tmp_path: Path) -> None:
    reg = make(flush_interval=3600)
    await reg.start()
    try:
        reg.observe([reading("mqtt:new")])
        path = tmp_path / "devices.json"
        # the counter moves once the write has returned, after the file is in place
        await eventually(lambda: reg.m_flushes._value.get() >= 1, 5.0, "the first flush")
        written = path.read_text()
        assert "mqtt:new" in written
        writes = reg.m_flushes._value.get()
        for i in range(2000):
            reg.observe([reading("mqtt:new", value=float(i))])
        # asserting that no write happens needs a window: a change the registry wants
        # written soon is written FLUSH_SOON after it, so a longer window would see one
        await asyncio.sleep(FLUSH_SOON + 0.5)
        assert reg.m_flushes._value.get() == writes  # last_seen waits for flush_interval
        assert path.read_text() == written  # still the first value, not the 2000th
        (first,) = json.loads(written)["devices"].values()
        assert first["values"]["temperature"][0] == 21.0
    finally:
        await reg.stop()
    doc = json.loads(path.read_text())
    (entry,) = doc["devices"].values()
    assert entry["values"]["temperature"][0] == 1999.0  # stop() flushed the latest


async def test_unreadable_registry_file_is_moved_aside_and_registry_starts_empty(
        make: Callable[..., DeviceRegistry], tmp_path: Path) -> None:
    (tmp_path / "devices.json").write_text('{"devices": {"1": {"id": "mqtt:a", ')
    reg = make()
    await reg.start()
    try:
        assert reg.all() == []
        assert [p for p in os.listdir(tmp_path) if p.startswith("devices.json.corrupt-")]
        reg.observe([reading("mqtt:a")])
        assert reg.is_online("mqtt:a")
    finally:
        await reg.stop()
    assert "mqtt:a" in (tmp_path / "devices.json").read_text()


async def test_change_listeners_hear_of_declared_renamed_and_removed_devices_only(
        make: Callable[..., DeviceRegistry]) -> None:
    reg = make()
    changes: list[tuple[str, str]] = []
    online: list[tuple[str, bool]] = []

    def broken(device: str, change: str) -> None:
        raise RuntimeError("bug in a component")

    reg.add_change_listener(broken)
    reg.add_change_listener(lambda d, c: changes.append((d, c)))
    reg.add_listener(lambda d, o: online.append((d, o)))
    await reg.start()
    try:
        reg.declare("zigbee:lamp", name="Lamp")
        reg.declare("zigbee:lamp", name="Lamp")  # nothing changed: nothing said
        reg.declare("zigbee:lamp", model="TS0505", manufacturer="_TZ3000", location="hall",
                    endpoints=[{"id": 1, "in_clusters": [0, 6, 8]}])
        reg.observe([reading("zigbee:lamp")])
        reg.observe([reading("mqtt:new")])  # a new device on its first reading
        for _ in range(100):  # readings of known devices: not a word
            reg.observe([reading("mqtt:new"), reading("zigbee:lamp", "humidity", 40.0)])
        assert reg.rename("zigbee:lamp", "Hall lamp")
        assert reg.rename("zigbee:lamp", "Hall lamp")  # the same name: nothing said
        assert reg.remove("mqtt:new")
        assert not reg.remove("mqtt:new")
        assert changes == [("zigbee:lamp", "changed"), ("zigbee:lamp", "changed"),
                           ("mqtt:new", "changed"), ("zigbee:lamp", "changed"),
                           ("mqtt:new", "removed")]
        assert online == [("zigbee:lamp", True), ("mqtt:new", True)]  # unchanged
        reg.remove_change_listener(broken)
        reg.declare("zigbee:lamp", location="kitchen")
        assert changes[-1] == ("zigbee:lamp", "changed")
    finally:
        await reg.stop()
