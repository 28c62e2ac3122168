"""The Zigbee adapter through real zigpy code on a virtual radio (the stick cannot run here).

Readings go through the real pipeline into a real SQLite outbox; devices into the real
device registry. Each test uses its own virtual network and state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import zigpy.types as t
from zigpy.zcl import foundation

from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.reading import Command
from tests import zigbee_virtual as zv
from tests.zigbee_harness import Harness, wait_for


async def test_sensor_joins_is_interviewed_bound_and_reporting_configured(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)

    assert dev_id == "zigbee:00:15:8d:00:01:02:03:04"
    assert zb.registry is not None
    info = zb.registry.get(dev_id)
    assert info is not None
    assert info["model"] == "lumi.weather" and info["manufacturer"] == "LUMI"
    assert info["type"] == "battery" and info["role"] == "end_device"
    assert info["lqi"] == 200 and info["rssi"] == -55
    assert info["endpoints"][0]["in_clusters"] == [0x0000, 0x0001, 0x0402, 0x0403, 0x0405]
    # bound to the coordinator, reports asked for with the battery max interval
    assert {c for _, c in sensor.bindings} == {0x0001, 0x0402, 0x0403, 0x0405}
    assert sensor.reporting[(1, 0x0402, 0x0000)] == (30, 3600)
    assert sensor.reporting[(1, 0x0001, 0x0021)] == (3600, 3600)
    # the first values are read right after configuration
    assert (await zb.wait_reading(dev_id, "temperature")).value == 21.5
    assert (await zb.wait_reading(dev_id, "humidity")).value == 45.5
    assert (await zb.wait_reading(dev_id, "battery")).unit == "%EL"


async def test_device_cannot_join_while_joining_is_closed(zb: Harness) -> None:
    adapter = await zb.started()
    assert not zb.net.join(zv.climate_sensor())
    opened = await adapter.permit_join(5)
    assert opened["seconds"] == 5 and zb.net.permit_open
    await adapter.permit_join(0)
    assert not zb.net.permit_open
    with pytest.raises(ValueError, match="0 to 254"):
        await adapter.permit_join(255)


async def test_attribute_reports_become_readings_in_senml_units(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)

    sensor.report(0x0402, {0x0000: -512})       # centi-degrees
    sensor.report(0x0405, {0x0000: 6123})       # centi-%RH
    sensor.report(0x0403, {0x0000: 998})        # 0.1 kPa
    sensor.report(0x0001, {0x0021: 101, 0x0020: 29})  # half-percent, 100 mV
    r = await zb.wait_reading(dev_id, "temperature", -5.12)
    assert r.unit == "Cel"
    assert (await zb.wait_reading(dev_id, "humidity", 61.23)).unit == "%RH"
    assert (await zb.wait_reading(dev_id, "pressure", 99800.0)).unit == "Pa"
    assert (await zb.wait_reading(dev_id, "battery", 50.5)).unit == "%EL"
    assert (await zb.wait_reading(dev_id, "battery_voltage", 2.9)).unit == "V"


async def test_unknown_attributes_become_readings_under_a_raw_name(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)
    # min_measured_value: zigpy knows its name, the unit table does not
    sensor.report(0x0402, {0x0001: -4000})
    await zb.wait_reading(dev_id, "temperature_min_measured_value", -4000)


async def test_plug_metering_uses_the_multiplier_and_divisor_it_reports(zb: Harness) -> None:
    adapter = await zb.started()
    plug = zv.smart_plug()
    dev_id = await zb.pair(adapter, plug)
    info = zb.registry.get(dev_id) if zb.registry else None
    assert info is not None and info["type"] == "mains" and info["role"] == "router"
    assert plug.reporting[(1, 0x0006, 0x0000)] == (0, 240)  # mains max interval

    plug.report(0x0B04, {0x050B: 1234, 0x0505: 2301, 0x0508: 5250})
    assert (await zb.wait_reading(dev_id, "power", 123.4)).unit == "W"   # ÷10
    assert (await zb.wait_reading(dev_id, "voltage", 230.1)).unit == "V"  # ÷10
    assert (await zb.wait_reading(dev_id, "current", 5.25)).unit == "A"   # ÷1000
    plug.report(0x0702, {0x0000: 54321})  # kWh × 1/1000 → Wh
    assert (await zb.wait_reading(dev_id, "energy", 54321.0)).unit == "Wh"


async def test_ias_zone_is_enrolled_and_alarms_become_readings(zb: Harness) -> None:
    adapter = await zb.started()
    door = zv.door_sensor()
    dev_id = await zb.pair(adapter, door)
    assert zb.net.node_info is not None
    # our address written as CIE, and an enroll response sent without being asked
    assert door.endpoints[1].in_clusters[0x0500][0x0010] == zb.net.node_info.ieee
    assert any(c == 0x0500 and name == "enroll_response" for c, _, name, _ in door.received)

    door.zone_status_change(0x0001)  # Alarm_1 on a contact switch: open
    await zb.wait_reading(dev_id, "contact", False)
    door.zone_status_change(0x0008)  # closed, battery low
    await zb.wait_reading(dev_id, "contact", True)
    await zb.wait_reading(dev_id, "battery_low", True)

    before = sum(1 for _, _, name, _ in door.received if name == "enroll_response")
    door.enroll_request()
    await wait_for(lambda: sum(1 for _, _, name, _ in door.received
                               if name == "enroll_response") > before,
                   what="an enroll response to the enroll request")


async def test_on_off_toggle_and_level_are_delivered_and_the_plug_reports_state(
        zb: Harness) -> None:
    adapter = await zb.started()
    plug = zv.smart_plug()
    dev_id = await zb.pair(adapter, plug)

    result = await adapter.send(Command(dev_id, "on"))
    assert result.ok and result.status == "delivered"
    await zb.wait_reading(dev_id, "on_off", True)
    assert (await adapter.send(Command(dev_id, "toggle"))).status == "delivered"
    await zb.wait_reading(dev_id, "on_off", False)
    assert (await adapter.send(Command(dev_id, "level", {"level": 50}))).status == "delivered"
    assert plug.endpoints[1].in_clusters[0x0008][0x0000] == 127
    assert (await zb.wait_reading(dev_id, "level", 50.0)).unit == "%"
    assert zb.metric("gateway_zigbee_commands_total", adapter="zigbee",
                     status="delivered") == 3


async def test_generic_command_and_attribute_write_report_their_results(zb: Harness) -> None:
    adapter = await zb.started()
    plug = zv.smart_plug()
    dev_id = await zb.pair(adapter, plug)

    res = await adapter.send(Command(dev_id, "command", {
        "cluster": "on_off", "command": "off_with_effect",
        "args": {"effect_id": 0, "effect_variant": 0}}))
    assert res.status == "delivered", res
    assert plug.received[-1][2] == "off_with_effect"

    res = await adapter.send(Command(dev_id, "write", {
        "cluster": "0x0006", "attribute": "on_time", "value": 30}))
    assert res.status == "delivered", res
    assert plug.endpoints[1].in_clusters[0x0006][0x4001] == 30

    plug.refuse_writes[(0x0006, 0x4002)] = foundation.Status.READ_ONLY
    res = await adapter.send(Command(dev_id, "write", {
        "cluster": 6, "attribute": "off_wait_time", "value": 5}))
    assert res.status == "refused" and "READ_ONLY" in res.detail

    res = await adapter.send(Command(dev_id, "read", {
        "cluster": "on_off", "attributes": ["on_time", "global_scene_control"]}))
    assert res.status == "delivered" and "on_time=30" in res.detail
    assert "global_scene_control=error UNSUPPORTED_ATTRIBUTE" in res.detail

    res = await adapter.send(Command(dev_id, "command", {"cluster": 0x0300, "command": 0}))
    assert res.status == "refused" and "no cluster" in res.detail
    res = await adapter.send(Command(dev_id, "dance"))
    assert res.status == "unsupported"
    res = await adapter.send(Command("zigbee:00:00:00:00:00:00:00:99", "on"))
    assert res.status == "unknown_device"


async def test_command_to_a_sleeping_device_times_out(zb: Harness) -> None:
    adapter = await zb.started(command_timeout=0.5)
    plug = zv.smart_plug()
    dev_id = await zb.pair(adapter, plug)
    plug.awake = False
    res = await adapter.send(Command(dev_id, "on"))
    assert res.status == "timeout" and not res.ok
    plug.reachable = False
    res = await adapter.send(Command(dev_id, "off"))
    assert res.status == "timeout" and "not delivered" in res.detail
    assert zb.metric("gateway_zigbee_commands_total", adapter="zigbee", status="timeout") == 2


async def test_configuration_is_retried_when_a_sleepy_device_next_talks(zb: Harness) -> None:
    adapter = await zb.started(command_timeout=0.2, configure_retry=0.1)
    sensor = zv.climate_sensor()
    sensor.deaf_to = {"Bind_req"}  # asleep again before binding
    dev_id = await zb.pair(adapter, sensor, state="interviewed")
    await wait_for(lambda: adapter._configuring.get(str(sensor.ieee)) is None, 5,
                   "the first configuration attempt to give up")
    assert zb.registry is not None
    assert zb.registry.get(dev_id)["interview"] == "interviewed"  # type: ignore[index]
    assert not sensor.reporting

    sensor.deaf_to = set()
    sensor.report(0x0402, {0x0000: 1999})  # it wakes up and reports: configure now
    await wait_for(lambda: (zb.registry.get(dev_id) or {}).get("interview") == "configured",
                   5, "configuration on check-in")
    assert (1, 0x0402, 0x0000) in sensor.reporting
    await zb.wait_reading(dev_id, "temperature", 19.99)


async def test_known_devices_are_reloaded_from_the_database_after_restart(zb: Harness) -> None:
    first = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(first, sensor)
    pan = zb.net.network_info.pan_id if zb.net.network_info else None
    binds = len(sensor.bindings)
    await first.stop()

    second = await zb.started()
    assert second.app is not None and second.app.state.network_info.pan_id == pan
    assert t.EUI64.convert("00:15:8d:00:01:02:03:04") in second.app.devices
    sensor.report(0x0402, {0x0000: 2345})  # no rejoin: the device just keeps reporting
    await zb.wait_reading(dev_id, "temperature", 23.45)
    assert len(sensor.bindings) == binds  # configured once, not again after the restart
    assert (zb.state_dir / "zigbee" / "zigbee.db").exists()


async def test_lost_link_fails_the_adapter_and_a_restart_keeps_the_network(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)
    epid = zb.net.network_info.extended_pan_id if zb.net.network_info else None

    zb.net.unplug()
    exc = await wait_for(lambda: adapter.failed.done() and adapter.failed.result(), 2,
                         "the adapter to fail")
    assert isinstance(exc, ConnectionError)
    await adapter.stop()
    with pytest.raises(Exception, match="unplugged"):
        await zb.adapter().start()  # what the supervisor's next attempt meets

    zb.net.plug_in()
    again = await zb.started()
    assert again.app is not None
    assert again.app.state.network_info.extended_pan_id == epid
    sensor.report(0x0405, {0x0000: 5000})
    await zb.wait_reading(dev_id, "humidity", 50.0)
    assert zb.metric("gateway_zigbee_connection_lost_total", adapter="zigbee") == 1


async def test_refused_readings_are_kept_and_retried_then_counted_when_dropped(
        zb: Harness) -> None:
    adapter = await zb.started(retry_for=0.3)
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)

    refusals = iter([True, True, True])  # the store is full three times, then accepts
    zb.refuse = lambda readings: next(refusals, False)
    sensor.report(0x0402, {0x0000: 1111})
    await zb.wait_reading(dev_id, "temperature", 11.11)
    assert zb.metric("gateway_zigbee_readings_dropped_total", adapter="zigbee",
                     reason="refused") == 0

    zb.refuse = lambda readings: True  # full for longer than retry_for
    sensor.report(0x0402, {0x0000: 2222})
    await wait_for(lambda: zb.metric("gateway_zigbee_readings_dropped_total",
                                     adapter="zigbee", reason="refused") == 1, 3,
                   "the refused reading to be counted as dropped")
    zb.refuse = None
    sensor.report(0x0402, {0x0000: 3333})
    await zb.wait_reading(dev_id, "temperature", 33.33)
    assert not [r for r in await zb.readings() if r.value == 22.22]


async def test_malformed_reports_are_counted_and_the_adapter_keeps_going(zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)

    sensor.report_raw(0x0402, b"\x00\x00\x29\x01")  # int16 value cut short
    sensor.report_raw(0x0402, b"\x00\x00\x42\x03abc")  # a string for a temperature
    await wait_for(lambda: zb.metric("gateway_zigbee_malformed_total", adapter="zigbee") == 2,
                   2, "two malformed reports counted")
    sensor.report(0x0402, {0x0000: 2020})
    await zb.wait_reading(dev_id, "temperature", 20.2)
    assert adapter.app is not None and not adapter.failed.done()


async def test_remove_makes_the_device_leave_the_network(zb: Harness) -> None:
    adapter = await zb.started()
    plug = zv.smart_plug()
    dev_id = await zb.pair(adapter, plug)

    res = await adapter.remove(dev_id)
    assert res.status == "delivered", res
    assert plug.left
    assert adapter.app is not None
    await wait_for(lambda: plug.ieee not in adapter.app.devices, 2, "zigpy to drop the device")
    assert zb.registry is not None and zb.registry.get(dev_id) is None
    assert (await adapter.remove(dev_id)).status == "unknown_device"


async def test_backup_exports_open_coordinator_json_and_restores_a_replaced_stick(
        zb: Harness) -> None:
    adapter = await zb.started()
    sensor = zv.climate_sensor()
    await zb.pair(adapter, sensor)
    done = await adapter.backup()
    latest = Path(done["latest"])
    ocb = json.loads(await asyncio.to_thread(latest.read_text))
    assert ocb["metadata"]["format"] == "zigpy/open-coordinator-backup"
    assert ocb["pan_id"] == done["pan_id"][2:].lower()
    assert any(d["ieee_address"] == "00158d0001020304" for d in ocb["devices"])
    old = zb.net.network_info
    assert old is not None
    await adapter.stop()

    # a new, empty stick and zigpy's database lost: the exported file brings the network back
    await zb.net.app.shutdown() if zb.net.app else None
    zb.net.network_info = zb.net.node_info = None
    (zb.state_dir / "zigbee" / "zigbee.db").unlink()
    restored = await zb.started()
    info = zb.net.network_info
    assert info is not None and restored.app is not None
    assert (info.pan_id, info.extended_pan_id, info.channel) == (
        old.pan_id, old.extended_pan_id, old.channel)
    assert info.network_key.key == old.network_key.key
    assert info.network_key.tx_counter > old.network_key.tx_counter  # moved past the old one


async def test_devices_on_two_endpoints_get_distinct_metrics(zb: Harness) -> None:
    adapter = await zb.started()
    double = zv.VirtualDevice("00:12:4b:00:22:33:44:55", [
        zv.VirtualEndpoint(1, 0x0100, {0x0000: {}, 0x0006: {0x0000: False}}),
        zv.VirtualEndpoint(2, 0x0100, {0x0006: {0x0000: False}}),
    ], model="DOUBLE", manufacturer="Acme")
    dev_id = await zb.pair(adapter, double)
    res = await adapter.send(Command(dev_id, "on", {"endpoint": 2}))
    assert res.status == "delivered"
    await zb.wait_reading(dev_id, "on_off_2", True)
    assert double.endpoints[1].in_clusters[0x0006][0x0000] is False


async def test_supervisor_restarts_the_adapter_once_the_stick_is_back(zb: Harness) -> None:
    from gateway.adapters.supervisor import Supervisor

    sup = Supervisor({"zigbee": ("zigbee", lambda: zb.adapter())}, zb.metrics,
                     backoff_initial=0.05, backoff_max=0.2)
    await sup.start()
    try:
        first = sup.adapters["zigbee"]
        assert isinstance(first, ZigbeeAdapter)
        sensor = zv.climate_sensor()
        dev_id = await zb.pair(first, sensor)
        zb.net.unplug()
        await wait_for(lambda: sup.states["zigbee"].restarts >= 2, 5,
                       "restart attempts while the stick is out")
        assert sup.states["zigbee"].state in ("backoff", "starting")
        assert "unplugged" in (sup.states["zigbee"].last_error or "")
        zb.net.plug_in()
        await wait_for(lambda: sup.states["zigbee"].state == "running", 5, "running again")
        sensor.report(0x0402, {0x0000: 1717})
        await zb.wait_reading(dev_id, "temperature", 17.17)
    finally:
        await sup.stop()


async def test_a_silent_mains_device_goes_offline_before_a_battery_one(tmp_path: Path) -> None:
    from gateway.core.config import DevicesSection

    h = Harness(tmp_path, DevicesSection(offline_after=0.5,
                                         offline_after_by_type={"battery": 30.0}))
    await h.start_core()
    try:
        adapter = await h.started()
        plug_id = await h.pair(adapter, zv.smart_plug())
        sensor_id = await h.pair(adapter, zv.climate_sensor())
        assert h.registry is not None
        registry = h.registry
        await wait_for(lambda: registry.is_online(plug_id) and registry.is_online(sensor_id),
                       5, "both online after their first readings")
        await wait_for(lambda: not registry.is_online(plug_id), 5, "the plug to go offline")
        assert registry.is_online(sensor_id)
    finally:
        await h.close()


async def test_a_paired_device_survives_a_crash_right_after_pairing(zb: Harness) -> None:
    crashed = await zb.started()
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(crashed, sensor)
    # zigpy's database worker commits the device row (forced) shortly after the interview
    db = zb.state_dir / "zigbee" / "zigbee.db"

    def device_row() -> bool:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return bool(conn.execute("SELECT 1 FROM devices_v16 WHERE ieee = ?",
                                     (str(sensor.ieee),)).fetchall())

    await wait_for(device_row, 5, "zigpy to commit the device")
    # then a crash: nothing is shut down or flushed; a new process opens the same files
    old_app = crashed.app
    crashed.app = None
    copy = zb.tmp / "after-crash"
    await asyncio.to_thread(shutil.copytree, zb.state_dir / "zigbee", copy / "zigbee")
    try:
        zb.state_dir = copy
        after = await zb.started(name="zigbee")
        assert after.app is not None and sensor.ieee in after.app.devices
        assert after.app.devices[sensor.ieee].model == "lumi.weather"
        sensor.report(0x0402, {0x0000: 1234})
        await zb.wait_reading(dev_id, "temperature", 12.34)
    finally:
        await old_app.shutdown()
        await crashed.stop()


async def test_stop_hands_queued_readings_to_the_pipeline_first(zb: Harness) -> None:
    adapter = await zb.started(retry_for=10)
    sensor = zv.climate_sensor()
    dev_id = await zb.pair(adapter, sensor)
    refusals = iter([True] * 5)  # the store is busy for a moment when the gateway stops
    zb.refuse = lambda readings: next(refusals, False)
    sensor.report(0x0402, {0x0000: 3030})
    await wait_for(lambda: any(r.value == 30.3 for r in adapter._pending), 2,
                   "the reading to be queued")
    await adapter.stop()
    assert not adapter._pending
    await zb.wait_reading(dev_id, "temperature", 30.3, within=0.5)
    assert zb.metric("gateway_zigbee_readings_dropped_total", adapter="zigbee",
                     reason="shutdown") == 0


async def test_a_corrupt_zigbee_database_is_set_aside_and_the_network_restored(
        zb: Harness) -> None:
    adapter = await zb.started()
    await adapter.backup()
    old = zb.net.network_info
    assert old is not None
    await adapter.stop()
    db = zb.state_dir / "zigbee" / "zigbee.db"
    await asyncio.to_thread(db.write_bytes, b"this is not a database" * 100)
    zb.net.network_info = zb.net.node_info = None  # and a blank stick, for good measure

    again = await zb.started()
    assert again.app is not None
    assert [p.name.split(".corrupt-")[0] for p in db.parent.glob("*.corrupt-*")] == ["zigbee.db"]
    info = zb.net.network_info
    assert info is not None and (info.pan_id, info.extended_pan_id) == (
        old.pan_id, old.extended_pan_id)


async def test_stopping_during_start_leaves_no_database_thread_behind(zb: Harness) -> None:
    def db_threads() -> int:
        return sum(1 for t in threading.enumerate()
                   if "_connection_worker_thread" in t.name and t.is_alive())

    before = db_threads()
    for delay in (0.0, 0.005, 0.02, 0.05, 0.1):
        adapter = zb.adapter()
        starting = asyncio.create_task(adapter.start())
        await asyncio.sleep(delay)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await adapter.stop()
    # an open zigpy database keeps a non-daemon thread: it would hang the daemon's exit
    await wait_for(lambda: db_threads() == before, 3, "zigpy's database threads to end")
