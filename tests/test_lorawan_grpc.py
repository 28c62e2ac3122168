"""LoRaWAN adapter against a ChirpStack stand-in speaking the real gRPC API on loopback.

ChirpStack cannot run here; tests/chirpstack_fake.py is built from chirpstack_api's
generated servicers and replays history, checks tokens and drops streams as it does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chirpstack_api.integration import integration_pb2 as integration
from prometheus_client import CollectorRegistry

from gateway.adapters.lorawan.chirpstack import ChirpStackRefused
from gateway.adapters.lorawan.state import DeviceStateStore
from gateway.reading import Command
from tests.chirpstack_fake import TENANT, FakeChirpStack
from tests.lorawan_harness import (
    RecordingDirectory,
    RecordingSink,
    make_adapter,
    metric,
    wait_until,
)

EUI = "0102030405060708"
EUI2 = "a1b2c3d4e5f60718"
FAST = {"stream": {"backoff_initial": 0.05, "backoff_max": 0.2}}


@pytest.fixture
async def chirpstack() -> AsyncIterator[FakeChirpStack]:
    cs = FakeChirpStack()
    app = cs.add_application("garden")
    cs.add_device(app, EUI, "greenhouse", profile="Dragino LHT65", tags={"type": "climate"})
    cs.add_device(app, EUI2, "valve", profile="Cayenne")
    await cs.start()
    yield cs
    await cs.stop()


def settings(cs: FakeChirpStack, **extra: Any) -> dict[str, Any]:
    return {"server": cs.address, "api_token": cs.token, "tenant_id": TENANT, **FAST, **extra}


async def test_discovery_pages_through_applications_and_devices(tmp_path: Path) -> None:
    cs = FakeChirpStack()
    apps = [cs.add_application(f"app-{i}") for i in range(3)]
    for i in range(7):
        cs.add_device(apps[i % 3], f"{i:016x}", f"sensor-{i}", profile=f"profile-{i % 2}")
    await cs.start()
    directory = RecordingDirectory()
    adapter = make_adapter(tmp_path, directory=directory, page_size=2, **settings(cs))
    try:
        await adapter.start()
        assert set(adapter.devices) == {f"{i:016x}" for i in range(7)}
        assert directory.declared["lora:0000000000000004"]["name"] == "sensor-4"
        assert directory.declared["lora:0000000000000004"]["model"] == "profile-0"
        assert directory.declared["lora:0000000000000004"]["application"] == "app-1"
        # every List call asked for a page (limit 0 would have returned only the count)
        assert cs.list_requests and all(limit == 2 for _, limit, _ in cs.list_requests)
        assert max(off for kind, _, off in cs.list_requests if kind == "applications") == 2
    finally:
        await adapter.stop()
        await cs.stop()


async def test_discovered_device_declared_with_name_profile_and_type(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    directory = RecordingDirectory()
    adapter = make_adapter(tmp_path, directory=directory, **settings(chirpstack))
    await adapter.start()
    try:
        info = directory.declared[f"lora:{EUI}"]
        assert (info["name"], info["model"], info["type"]) == ("greenhouse", "Dragino LHT65",
                                                               "climate")
        assert info["tags"] == ["type=climate"] and info["dev_eui"] == EUI
    finally:
        await adapter.stop()


@pytest.mark.parametrize(("token", "tenant", "code", "hint"), [
    ("wrong-token", TENANT, "UNAUTHENTICATED", "api_token"),
    ("test-token", "6a0c6c6e-2f43-4d27-9d6b-2c1f8f0f1f11", "PERMISSION_DENIED", "tenant_id"),
    ("test-token", "not-a-uuid", "INVALID_ARGUMENT", "tenant_id"),
])
async def test_refused_first_contact_fails_start_with_what_to_fix(
        tmp_path: Path, chirpstack: FakeChirpStack, token: str, tenant: str, code: str,
        hint: str) -> None:
    adapter = make_adapter(tmp_path, **{**settings(chirpstack), "api_token": token,
                                        "tenant_id": tenant})
    with pytest.raises(ChirpStackRefused) as err:
        await adapter.start()
    assert code in str(err.value) and hint in str(err.value)
    assert "wrong-token" not in str(err.value)  # the secret never appears in messages


async def test_uplink_object_becomes_readings_with_radio_metadata(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    profiles = {"Dragino LHT65": {"fields": {
        "TempC_SHT": {"metric": "temperature", "unit": "Cel"},
        "Hum_SHT": {"metric": "humidity", "unit": "%RH"},
        "BatV": {"metric": "battery_voltage", "unit": "V"},
        "Ext_sensor": {"drop": True}}}}
    adapter = make_adapter(tmp_path, sink=sink, profiles=profiles, **settings(chirpstack))
    await adapter.start()
    try:
        ev = chirpstack.uplink(EUI, 7, obj={"TempC_SHT": 21.37, "Hum_SHT": 48.1, "BatV": 3.05,
                                            "Ext_sensor": "Temperature Sensor", "count": 12},
                               rssi=-97, snr=-3.25, dr=2)
        chirpstack.emit(EUI, "up", ev)
        await wait_until(lambda: len(sink.accepted) >= 8, what="uplink readings")
        got = {r.metric: (r.value, r.unit) for r in sink.accepted}
        assert got == {"temperature": (21.37, "Cel"), "humidity": (48.1, "%RH"),
                       "battery_voltage": (3.05, "V"), "count": (12, None),
                       "rssi": (-97, "dBm"), "snr": (-3.25, "dB"),
                       "frame_counter": (7, None), "data_rate": (2, None)}
        # integers come back as int though a protobuf Struct carries every number as a double
        assert type(got["count"][0]) is int
        assert {r.device for r in sink.accepted} == {f"lora:{EUI}"}
        assert abs(sink.accepted[0].ts - ev.time.ToMicroseconds() / 1e6) < 1e-3
    finally:
        await adapter.stop()


async def test_cayenne_profile_decodes_raw_bytes(tmp_path: Path,
                                                 chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False,
                           profiles={"Cayenne": {"decoder": "cayenne"}}, **settings(chirpstack))
    await adapter.start()
    try:
        data = bytes.fromhex("0367011005686407732795")
        chirpstack.emit(EUI2, "up", chirpstack.uplink(EUI2, 1, data=data))
        await wait_until(lambda: len(sink.accepted) == 3, what="cayenne readings")
        assert {r.metric: (r.value, r.unit) for r in sink.accepted} == {
            "temperature_3": (27.2, "Cel"), "relative_humidity_5": (50.0, "%RH"),
            "barometric_pressure_7": (101330, "Pa")}
    finally:
        await adapter.stop()


async def test_status_event_gives_battery_and_margin(tmp_path: Path,
                                                     chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.emit(EUI, "status", integration.StatusEvent(
            deduplication_id="s-1", device_info=chirpstack.device_info(EUI), margin=12,
            battery_level=87.5))
        await wait_until(lambda: sink.values("battery") == [87.5], what="battery")
        assert sink.values("link_margin") == [12]
        assert [r.unit for r in sink.accepted if r.metric == "battery"] == ["%EL"]
    finally:
        await adapter.stop()


async def test_history_replayed_on_reconnect_is_not_accepted_twice(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    for i in range(3):
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, i, obj={"seq": i}))
    await adapter.start()
    try:
        await wait_until(lambda: sink.values("seq") == [0, 1, 2], what="history")
        for _round in range(3):
            calls = chirpstack.stream_calls[EUI]
            chirpstack.drop_streams()
            await wait_until(lambda c=calls: chirpstack.stream_calls[EUI] > c and
                             chirpstack.active_streams == 2, what="stream reopened")
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 3, obj={"seq": 3}))
        await wait_until(lambda: sink.values("seq") == [0, 1, 2, 3], what="new uplink")
        assert metric(adapter.ctx.metrics, "gateway_lorawan_replay_skipped_total",
                      adapter="lora") >= 9
        assert metric(adapter.ctx.metrics, "gateway_lorawan_source_reconnects_total",
                      adapter="lora", source="grpc") >= 3
    finally:
        await adapter.stop()


async def test_cursor_survives_restart_so_history_is_not_duplicated(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    registry = CollectorRegistry()
    first = RecordingSink()
    adapter = make_adapter(tmp_path, registry, sink=first, radio_metrics=False,
                           **settings(chirpstack))
    for i in range(4):
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, i, obj={"seq": i}))
    await adapter.start()
    await wait_until(lambda: first.values("seq") == [0, 1, 2, 3], what="first run")
    await adapter.stop()
    saved = json.loads((tmp_path / "lorawan-lora.json").read_text())
    assert saved["devices"][EUI]["cursor"] == chirpstack.history[EUI][-1].id

    chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 4, obj={"seq": 4}))
    second = RecordingSink()
    adapter = make_adapter(tmp_path, registry, sink=second, radio_metrics=False,
                           **settings(chirpstack))
    await adapter.start()
    try:
        await wait_until(lambda: second.values("seq") == [4], what="only the new uplink")
        await wait_until(lambda: metric(registry, "gateway_lorawan_replay_skipped_total",
                                        adapter="lora") >= 4, what="replay skipped")
        assert second.values("seq") == [4]
    finally:
        await adapter.stop()


async def test_cursor_advances_only_after_readings_are_accepted(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    sink.refuse = True
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 1, obj={"seq": 1}))
    await wait_until(lambda: sink.refused_calls >= 1, what="a refusal")
    await adapter.stop()  # stops while refused: nothing durable, so no cursor either
    state = tmp_path / "lorawan-lora.json"
    saved = json.loads(state.read_text()) if state.exists() else {"devices": {}}
    assert saved["devices"].get(EUI, {}).get("cursor", "") == ""

    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        await wait_until(lambda: sink.values("seq") == [1], what="the refused uplink, again")
    finally:
        await adapter.stop()
    assert json.loads(state.read_text())["devices"][EUI]["cursor"] == \
        chirpstack.history[EUI][-1].id


async def test_refused_readings_are_retried_until_accepted(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    sink.refuse = True
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 1, obj={"seq": 1}))
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 2, obj={"seq": 2}))
        await wait_until(lambda: sink.refused_calls >= 2, what="refusals")
        sink.refuse = False
        await wait_until(lambda: sink.values("seq") == [1, 2], what="retried in order")
    finally:
        await adapter.stop()


async def test_chirpstack_down_then_back_loses_and_duplicates_nothing(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 0, obj={"seq": 0}))
        await wait_until(lambda: sink.values("seq") == [0], what="first uplink")
        await chirpstack.stop()
        # while the API is down, ChirpStack keeps receiving: the events land in its history
        for i in range(1, 6):
            chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, i, obj={"seq": i}))
        await wait_until(lambda: metric(adapter.ctx.metrics,
                                        "gateway_lorawan_source_reconnects_total",
                                        adapter="lora", source="grpc") >= 2,
                         what="reconnect attempts while down")
        await chirpstack.start()
        await wait_until(lambda: len(sink.values("seq")) >= 6, timeout=10, what="catch-up")
        assert sink.values("seq") == [0, 1, 2, 3, 4, 5]
        assert metric(adapter.ctx.metrics, "gateway_lorawan_uplinks_missed_total",
                      adapter="lora") == 0
    finally:
        await adapter.stop()


async def test_outage_longer_than_history_is_counted_as_missed_uplinks(
        tmp_path: Path) -> None:
    cs = FakeChirpStack(history=3)
    cs.add_device(cs.add_application("a"), EUI, "d")
    await cs.start()
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(cs))
    await adapter.start()
    try:
        cs.emit(EUI, "up", cs.uplink(EUI, 10, obj={"seq": 10}))
        await wait_until(lambda: sink.values("seq") == [10], what="first")
        await cs.stop()
        for i in range(11, 18):
            cs.emit(EUI, "up", cs.uplink(EUI, i, obj={"seq": i}))
        await cs.start()
        await wait_until(lambda: sink.values("seq")[-1:] == [17], timeout=10, what="catch-up")
        assert sink.values("seq") == [10, 15, 16, 17]
        assert metric(adapter.ctx.metrics, "gateway_lorawan_uplinks_missed_total",
                      adapter="lora") == 4
    finally:
        await adapter.stop()
        await cs.stop()


async def test_same_deduplication_id_is_accepted_once(tmp_path: Path,
                                                      chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        ev = chirpstack.uplink(EUI, 1, obj={"seq": 1})
        chirpstack.emit(EUI, "up", ev)
        chirpstack.emit(EUI, "up", ev)  # same deduplication_id under a new stream id
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 2, obj={"seq": 2}))
        await wait_until(lambda: sink.values("seq") == [1, 2], what="both uplinks")
        assert metric(adapter.ctx.metrics, "gateway_lorawan_duplicates_total",
                      adapter="lora") == 1
    finally:
        await adapter.stop()


async def test_garbage_in_stream_is_counted_and_skipped(tmp_path: Path,
                                                        chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False,
                           profiles={"Cayenne": {"decoder": "cayenne"}}, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.emit_raw(EUI, "up", "{not json")
        chirpstack.emit_raw(EUI, "up", '{"fCnt": "many"}')
        chirpstack.emit_raw(EUI, "something-newer", "{}")  # ignored, not malformed
        chirpstack.emit(EUI2, "up", chirpstack.uplink(EUI2, 1, data=b"\x03\x67\x01"))  # short
        chirpstack.emit(EUI, "log", integration.LogEvent(
            device_info=chirpstack.device_info(EUI), level=integration.ERROR,
            code=integration.UPLINK_CODEC, description="TypeError: x is undefined"))
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 3, obj={"seq": 3}))  # a good one
        await wait_until(lambda: sink.values("seq") == [3], what="good uplink after garbage")
        reg = adapter.ctx.metrics
        assert metric(reg, "gateway_lorawan_malformed_total", adapter="lora",
                      reason="bad_json") == 2
        await wait_until(lambda: metric(reg, "gateway_lorawan_malformed_total",
                                        adapter="lora", reason="payload") == 1,
                         what="bad cayenne payload counted")
        assert metric(reg, "gateway_lorawan_malformed_total", adapter="lora",
                      reason="codec") == 1
        assert metric(reg, "gateway_lorawan_events_total", adapter="lora", kind="other") == 1
        assert not adapter.failed.done()
    finally:
        await adapter.stop()


async def test_unknown_fields_in_event_json_are_ignored(tmp_path: Path,
                                                        chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        body = {"deduplicationId": "x-1", "deviceInfo": {"devEui": EUI, "futureField": 1},
                "fCnt": 5, "object": {"seq": 5}, "somethingNew": {"a": [1, 2]}}
        chirpstack.emit_raw(EUI, "up", json.dumps(body))
        await wait_until(lambda: sink.values("seq") == [5], what="uplink with unknown fields")
    finally:
        await adapter.stop()


async def test_downlink_enqueued_and_reported_acknowledged(tmp_path: Path,
                                                           chirpstack: FakeChirpStack) -> None:
    adapter = make_adapter(tmp_path, **settings(chirpstack))
    await adapter.start()
    try:
        task = asyncio.create_task(adapter.send(Command(
            f"lora:{EUI}", "downlink", {"f_port": 10, "data": "0a0b", "confirmed": True,
                                        "expires_in": 600, "wait": 5})))
        await wait_until(lambda: bool(chirpstack.queue), what="queue item")
        item = chirpstack.queue[0]
        assert (item.dev_eui, item.f_port, item.data, item.confirmed) == (EUI, 10, b"\n\x0b",
                                                                          True)
        assert item.HasField("expires_at")
        chirpstack.deliver(item.id, acknowledged=True)
        result = await task
        assert (result.ok, result.status) == (True, "delivered"), result
    finally:
        await adapter.stop()


async def test_downlink_without_wait_reports_enqueue_and_templates_work(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    profiles = {"Cayenne": {"decoder": "cayenne", "commands": {
        "open": {"f_port": 2, "data": "01"}, "set": {"f_port": 3, "object": {"level": 1}}}}}
    adapter = make_adapter(tmp_path, profiles=profiles, **settings(chirpstack))
    await adapter.start()
    try:
        r = await adapter.send(Command(f"lora:{EUI2}", "open"))
        assert (r.ok, r.status) == (True, "sent") and chirpstack.queue[-1].id in r.detail
        assert (chirpstack.queue[-1].f_port, chirpstack.queue[-1].data) == (2, b"\x01")
        r = await adapter.send(Command(f"lora:{EUI2}", "set", {"object": {"level": 7}}))
        assert r.ok and dict(chirpstack.queue[-1].object) == {"level": 7.0}
        r = await adapter.send(Command(f"lora:{EUI2}", "explode"))
        assert r.status == "unsupported" and "open" in r.detail
        # a payload given with a named command replaces the template's; flags may be text
        r = await adapter.send(Command(f"lora:{EUI2}", "open",
                                       {"data_base64": "Ag==", "confirmed": "true"}))
        assert r.ok and (chirpstack.queue[-1].data, chirpstack.queue[-1].confirmed) == (
            b"\x02", True)
        r = await adapter.send(Command(f"lora:{EUI2}", "downlink",
                                       {"f_port": 4, "data": "01", "confirmed": "false"}))
        assert r.ok and chirpstack.queue[-1].confirmed is False
        r = await adapter.send(Command(f"lora:{EUI2}", "downlink",
                                       {"f_port": 4, "data": "01", "confirmed": "maybe"}))
        assert r.status == "refused"
    finally:
        await adapter.stop()


async def test_bad_downlinks_are_refused_with_reason(tmp_path: Path,
                                                     chirpstack: FakeChirpStack) -> None:
    adapter = make_adapter(tmp_path, **settings(chirpstack))
    await adapter.start()
    try:
        r = await adapter.send(Command(f"lora:{EUI}", "downlink", {"f_port": 0, "data": "01"}))
        assert r.status == "refused" and "f_port" in r.detail
        r = await adapter.send(Command(f"lora:{EUI}", "downlink", {"f_port": 1, "data": "zz"}))
        assert r.status == "refused"
        r = await adapter.send(Command("lora:ffffffffffffffff", "downlink",
                                       {"f_port": 1, "data": "01"}))
        assert r.status == "unknown_device"
        assert not chirpstack.queue
    finally:
        await adapter.stop()


async def test_downlink_without_ack_times_out(tmp_path: Path,
                                              chirpstack: FakeChirpStack) -> None:
    adapter = make_adapter(tmp_path, **settings(chirpstack))
    await adapter.start()
    try:
        r = await adapter.send(Command(f"lora:{EUI}", "downlink",
                                       {"f_port": 5, "data": "01", "wait": 0.3}))
        assert (r.ok, r.status) == (False, "timeout")
    finally:
        await adapter.stop()


async def test_revoked_token_fails_the_adapter(tmp_path: Path,
                                               chirpstack: FakeChirpStack) -> None:
    adapter = make_adapter(tmp_path, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.token = "rotated"
        chirpstack.drop_streams()
        exc = await asyncio.wait_for(adapter.failed, 5)
        assert isinstance(exc, ChirpStackRefused) and "UNAUTHENTICATED" in str(exc)
    finally:
        await adapter.stop()


async def test_device_added_later_is_found_by_the_next_discovery(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    directory = RecordingDirectory()
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, directory=directory, radio_metrics=False,
                           discovery_interval=1, **settings(chirpstack))
    await adapter.start()
    try:
        new = "00000000000000aa"
        chirpstack.add_device(chirpstack.devices[EUI]["app"], new, "late", profile="Late")
        chirpstack.emit(new, "up", chirpstack.uplink(new, 1, obj={"seq": 1}))
        await wait_until(lambda: f"lora:{new}" in directory.declared, timeout=3,
                         what="the new device declared")
        await wait_until(lambda: sink.values("seq", f"lora:{new}") == [1], what="its uplink")
        assert metric(adapter.ctx.metrics, "gateway_lorawan_devices", adapter="lora") == 3
    finally:
        await adapter.stop()


async def test_chirpstack_unreachable_at_start_follows_known_devices(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    adapter = make_adapter(tmp_path, **settings(chirpstack))
    await adapter.start()  # a first run: the device list is saved with the cursors
    await adapter.stop()
    await chirpstack.stop()

    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    try:
        assert set(adapter.devices) == {EUI, EUI2}
        chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 1, obj={"seq": 1}))
        await chirpstack.start()
        await wait_until(lambda: sink.values("seq") == [1], timeout=5, what="uplink after start")
        await wait_until(lambda: adapter.discovered.is_set(), timeout=5, what="discovery")
    finally:
        await adapter.stop()


async def test_first_start_without_chirpstack_discovers_once_it_is_up(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    await chirpstack.stop()
    directory = RecordingDirectory()
    adapter = make_adapter(tmp_path, directory=directory, **settings(chirpstack))
    await adapter.start()
    try:
        assert adapter.devices == {}
        await chirpstack.start()
        await wait_until(lambda: f"lora:{EUI}" in directory.declared, timeout=5,
                         what="discovery after ChirpStack came up")
    finally:
        await adapter.stop()


@pytest.fixture
def server_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made with openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=chirpstack.local",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return key, cert


async def test_tls_with_a_private_ca(tmp_path: Path, server_cert: tuple[Path, Path]) -> None:
    key, cert = server_cert
    cs = FakeChirpStack(tls=(key.read_bytes(), cert.read_bytes()))
    cs.add_device(cs.add_application("a"), EUI, "d")
    await cs.start()
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, tls=True,
                           ca_file=str(cert), **settings(cs))
    try:
        await adapter.start()
        cs.emit(EUI, "up", cs.uplink(EUI, 1, obj={"seq": 1}))
        await wait_until(lambda: sink.values("seq") == [1], what="uplink over TLS")
    finally:
        await adapter.stop()
    # without the CA the server's certificate is not trusted: discovery cannot even start
    untrusting = make_adapter(tmp_path / "x", tls=True, **settings(cs))
    (tmp_path / "x").mkdir()
    try:
        await untrusting.start()
        assert untrusting.devices == {} and not untrusting.discovered.is_set()
    finally:
        await untrusting.stop()
        await cs.stop()


async def test_more_devices_than_a_connection_carries_streams_are_all_heard(
        tmp_path: Path) -> None:
    cs = FakeChirpStack(max_concurrent_streams=10)
    app = cs.add_application("a")
    euis = [f"{i:016x}" for i in range(25)]
    for eui in euis:
        cs.add_device(app, eui, eui)
    await cs.start()
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False,
                           **{**settings(cs), "stream": {"per_connection": 10}})
    await adapter.start()
    try:
        await wait_until(lambda: cs.active_streams == 25, what="25 streams open")
        for eui in euis:
            cs.emit(eui, "up", cs.uplink(eui, 1, obj={"seq": 1}))
        await wait_until(lambda: len(sink.values("seq")) == 25, what="every device heard")
        assert adapter.client is not None and adapter.client.stream_channels == 3
        # discovery and downlinks have their own connection: not stuck behind the streams
        r = await adapter.send(Command(f"lora:{euis[-1]}", "downlink",
                                       {"f_port": 1, "data": "00"}))
        assert r.ok
    finally:
        await adapter.stop()
        await cs.stop()


async def test_stop_finishes_the_event_being_accepted_and_saves_its_cursor(
        tmp_path: Path, chirpstack: FakeChirpStack) -> None:
    sink = RecordingSink()
    sink.delay = 0.5  # a slow commit is in progress when stop comes
    adapter = make_adapter(tmp_path, sink=sink, radio_metrics=False, **settings(chirpstack))
    await adapter.start()
    last = chirpstack.emit(EUI, "up", chirpstack.uplink(EUI, 1, obj={"seq": 1}))
    await wait_until(lambda: metric(adapter.ctx.metrics, "gateway_lorawan_events_total",
                                    adapter="lora", kind="up") == 1, what="accept under way")
    await adapter.stop()
    assert sink.values("seq") == [1]
    store = DeviceStateStore(tmp_path / "lorawan-lora.json")
    store.load()
    assert store.devices[EUI].cursor == last


async def test_location_event_gives_coordinates(tmp_path: Path,
                                                chirpstack: FakeChirpStack) -> None:
    from chirpstack_api.common import common_pb2

    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, **settings(chirpstack))
    await adapter.start()
    try:
        chirpstack.emit(EUI, "location", integration.LocationEvent(
            deduplication_id="l-1", device_info=chirpstack.device_info(EUI),
            location=common_pb2.Location(latitude=37.344214, longitude=-8.839375, altitude=2,
                                         accuracy=12.5)))
        await wait_until(lambda: len(sink.accepted) == 4, what="location readings")
        assert {r.metric: (r.value, r.unit) for r in sink.accepted} == {
            "latitude": (37.344214, "lat"), "longitude": (-8.839375, "lon"),
            "altitude": (2.0, "m"), "location_accuracy": (12.5, "m")}
    finally:
        await adapter.stop()
