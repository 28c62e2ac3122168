"""Cloud payload formats: what a cloud-side consumer receives, byte for byte."""

from __future__ import annotations

import json

from gateway.reading import Reading
from gateway.store.outbox import EventRow, TelemetryRow
from gateway.uplink.formats import (
    JsonBatchFormat,
    SenmlFormat,
    ThingsBoardFormat,
    decode_json_batch,
)

T = 1_795_000_000.0


def rows() -> list[TelemetryRow]:
    return [
        TelemetryRow(11, [Reading("mqtt:kitchen", "temperature", 21.5, "Cel", T),
                          Reading("mqtt:kitchen", "humidity", 40.0, "%RH", T)]),
        TelemetryRow(12, [Reading("mqtt:kitchen", "temperature", 21.6, "Cel", T + 2),
                          Reading("zigbee:00:11", "contact", True, None, T + 2.5)]),
        TelemetryRow(13, [Reading("mqtt:kitchen", "temperature", 21.7, "Cel", T + 4),
                          Reading("mqtt:kitchen", "humidity", float("nan"), "%RH", T + 4)]),
    ]


def test_json_batch_groups_by_device_with_shared_time_slots() -> None:
    ((topic, payload),) = JsonBatchFormat("pi-1", "gateway").telemetry(rows(), "ab12")
    assert topic == "gateway/pi-1/telemetry"
    body = json.loads(payload)
    assert body == {
        "v": 1, "gw": "pi-1", "epoch": "ab12", "seq": [11, 13], "n": 6,
        "t0": 1_795_000_000_000,
        "units": {"temperature": "Cel", "humidity": "%RH", "contact": None},
        "devices": {
            "mqtt:kitchen": {"_t": [0, 2000, 4000], "temperature": [21.5, 21.6, 21.7],
                             "humidity": [40.0, None, None]},
            "zigbee:00:11": {"_t": [2500], "contact": [True]},
        },
    }


def test_json_batch_decodes_back_to_the_readings() -> None:
    ((_, payload),) = JsonBatchFormat("pi-1", "gateway").telemetry(rows(), "ab12")
    got = sorted(decode_json_batch(payload))
    want = sorted(r for row in rows() for r in row.readings
                  if not (isinstance(r.value, float) and r.value != r.value))
    assert got == want


def test_same_metric_twice_at_one_time_gets_its_own_slot_and_unit_overrides() -> None:
    batch = [TelemetryRow(1, [Reading("a:1", "t", 1, "Cel", T), Reading("a:1", "t", 2, "Cel", T),
                              Reading("b:1", "t", 300, "K", T)])]
    ((_, payload),) = JsonBatchFormat("g", "").telemetry(batch, "e")
    body = json.loads(payload)
    assert body["devices"]["a:1"] == {"_t": [0, 0], "t": [1, 2]}
    assert body["devices"]["b:1"] == {"_t": [0], "t": [300], "_u": {"t": "K"}}
    assert sorted(decode_json_batch(payload)) == sorted(batch[0].readings)


def test_events_carry_their_sequence_and_kind() -> None:
    ev = [EventRow(5, "alert", {"rule": "hot", "severity": "warning", "device": "mqtt:k",
                                "message": "31 Cel"}, T)]
    ((topic, payload),) = JsonBatchFormat("pi-1", "gateway").events(ev, "ab12")
    assert topic == "gateway/pi-1/events"
    body = json.loads(payload)
    assert body["events"] == [{"seq": 5, "kind": "alert", "ts": T, "rule": "hot",
                               "severity": "warning", "device": "mqtt:k", "message": "31 Cel"}]


def test_senml_pack_uses_base_names_and_typed_values() -> None:
    ((topic, payload),) = SenmlFormat("pi-1", "gateway").telemetry(rows(), "e")
    assert topic == "gateway/pi-1/senml"
    pack = json.loads(payload)
    assert pack[0] == {"bn": "mqtt:kitchen:", "n": "temperature", "u": "Cel", "v": 21.5, "t": T}
    assert pack[1] == {"n": "humidity", "u": "%RH", "v": 40.0, "t": T}
    assert {"bn": "zigbee:00:11:", "n": "contact", "vb": True, "t": T + 2.5} in pack


def test_thingsboard_gateway_telemetry_shape() -> None:
    ((topic, payload),) = ThingsBoardFormat("pi-1", "").telemetry(rows(), "e")
    assert topic == "v1/gateway/telemetry"
    body = json.loads(payload)
    assert body["mqtt:kitchen"][0] == {"ts": 1_795_000_000_000,
                                       "values": {"temperature": 21.5, "humidity": 40.0}}
    assert body["zigbee:00:11"] == [{"ts": 1_795_000_002_500, "values": {"contact": True}}]
    status = [EventRow(1, "status", {"device": "mqtt:kitchen", "online": False}, T)]
    assert ThingsBoardFormat("pi-1", "").events(status, "e") == [
        ("v1/gateway/disconnect", b'{"device":"mqtt:kitchen"}')]
