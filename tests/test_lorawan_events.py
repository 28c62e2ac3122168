"""LoRaWAN events: parsing (the fast JSON path agrees with protobuf's reference parser), and
the readings the adapter makes of them, the same as ``format: chirpstack`` makes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from chirpstack_api.gw import gw_pb2
from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.adapters.lorawan import LorawanAdapter
from gateway.adapters.lorawan.events import (
    Delivery,
    MalformedEvent,
    UnknownKind,
    dev_eui_of,
    parse_json,
    parse_payload,
)
from gateway.payloads.base import Source
from gateway.payloads.chirpstack import ChirpstackEvent
from tests.lorawan_harness import (
    DOCUMENTED_STATUS,
    DOCUMENTED_UP,
    RecordingSink,
    make_adapter,
    metric,
)

INFO = integration.DeviceInfo(tenant_id="t", application_id="a", device_profile_name="P",
                              device_name="n", dev_eui="0102030405060708",
                              device_class_enabled="CLASS_C", tags={"room": "north"})


def rich_uplink() -> integration.UplinkEvent:
    ev = integration.UplinkEvent(
        deduplication_id=str(uuid.uuid4()), device_info=INFO, dev_addr="01020304", adr=True,
        dr=5, f_cnt=4_000_000_000, f_port=223, confirmed=True, data=bytes(range(256)),
        rx_info=[gw_pb2.UplinkRxInfo(gateway_id="0016c001f1500001", uplink_id=4217106255,
                                     rssi=-120, snr=-17.25, context=b"\x00\xff",
                                     metadata={"region_config_id": "eu868"},
                                     crc_status="CRC_OK"),
                 gw_pb2.UplinkRxInfo(gateway_id="0016c001f1500002", rssi=-80, snr=9.0)],
        tx_info=gw_pb2.UplinkTxInfo(frequency=868_100_000, modulation=gw_pb2.Modulation(
            lora=gw_pb2.LoraModulationInfo(bandwidth=125000, spreading_factor=12,
                                           code_rate="CR_4_5"))),
        region_config_id="eu868")
    ev.time.FromJsonString("2024-03-01T12:00:01.123456789Z")
    ev.object.update({"t": 21.5, "nested": {"list": [1, "two", None, True, {"x": -1}]},
                      "flag": False, "none": None})
    return ev


EVENTS: list[tuple[str, Message]] = [
    ("up", rich_uplink()),
    ("up", integration.UplinkEvent()),
    ("status", integration.StatusEvent(deduplication_id="s", device_info=INFO, margin=-3,
                                       battery_level=55.5, external_power_source=True)),
    ("ack", integration.AckEvent(deduplication_id="a", device_info=INFO, queue_item_id="q",
                                 acknowledged=True, f_cnt_down=7)),
    ("txack", integration.TxAckEvent(downlink_id=3461958127, device_info=INFO,
                                     queue_item_id="q", f_cnt_down=2, gateway_id="g")),
    ("log", integration.LogEvent(device_info=INFO, level="ERROR", code="UPLINK_MIC",
                                 description="d", context={"deduplication_id": "x"})),
    ("join", integration.JoinEvent(deduplication_id="j", device_info=INFO, dev_addr="0a0b")),
]


@pytest.mark.parametrize(("kind", "event"), EVENTS)
@pytest.mark.parametrize("proto_names", [False, True])
def test_json_round_trip_gives_the_same_message(kind: str, event: Message,
                                                proto_names: bool) -> None:
    body = json_format.MessageToJson(event, preserving_proto_field_name=proto_names)
    assert parse_json(kind, body) == event
    assert parse_payload(kind, event.SerializeToString(), "auto") == event


@pytest.mark.parametrize(("kind", "doc"), [("up", DOCUMENTED_UP),
                                           ("status", DOCUMENTED_STATUS)])
def test_chirpstack_json_parses_as_the_reference_parser_does(kind: str,
                                                             doc: dict[str, object]) -> None:
    body = json.dumps({**doc, "someFutureField": {"a": 1}})
    ref = type(parse_json(kind, "{}"))()
    json_format.Parse(body, ref, ignore_unknown_fields=True)
    assert parse_json(kind, body) == ref


@pytest.mark.parametrize("body", [
    '{"fCnt": "many"}', '{"fCnt": -1}', '{"time": "yesterday"}', "[1, 2]", "{",
    '{"object": [1]}', '{"rxInfo": {"rssi": 1}}',
])
def test_bad_json_is_reported_as_bad_json(body: str) -> None:
    with pytest.raises(MalformedEvent) as err:
        parse_json("up", body)
    assert err.value.reason == "bad_json"


@pytest.mark.parametrize("body", [
    '{"data": "***"}', '{"deviceInfo": "x"}', '{"rxInfo": [{"crcStatus": "NOPE"}]}',
])
def test_odd_json_the_reference_parser_tolerates_is_tolerated_the_same_way(body: str) -> None:
    ref = integration.UplinkEvent()
    json_format.Parse(body, ref, ignore_unknown_fields=True)
    assert parse_json("up", body) == ref


def test_unusual_but_valid_json_takes_the_reference_path() -> None:
    # enum as number, url-safe base64, integer as float: valid protobuf JSON all the same
    ev = parse_json("up", '{"data": "-_8", "dr": 3.0, '
                          '"rxInfo": [{"crcStatus": 1, "snr": "NaN"}]}')
    assert isinstance(ev, integration.UplinkEvent)
    assert (ev.data, ev.dr, ev.rx_info[0].crc_status) == (b"\xfb\xff", 3, 1)


def test_unknown_kinds_are_told_apart() -> None:
    with pytest.raises(UnknownKind):
        parse_json("integration", "{}")


# -- events → readings: the adapter and format: chirpstack give the same -------------------

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "chirpstack"
EXPECTED: list[dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())


def adapter_for(tmp_path: Path, **config: Any) -> tuple[LorawanAdapter, RecordingSink]:
    sink = RecordingSink()
    adapter = make_adapter(tmp_path, sink=sink, api_token="t", tenant_id="x", **config)
    adapter.state.load()
    return adapter, sink


async def through_adapter(adapter: LorawanAdapter, kind: str, body: bytes) -> None:
    event = parse_json(kind, body)
    assert await adapter._handle(Delivery(kind, event, dev_eui_of(event) or "0" * 16))


@pytest.mark.parametrize("case", EXPECTED, ids=[c["file"] for c in EXPECTED])
async def test_same_event_gives_the_same_readings_through_the_adapter_and_the_format(
        tmp_path: Path, case: dict[str, Any]) -> None:
    adapter, sink = adapter_for(tmp_path)
    kind = case["topic"].rsplit("/", 1)[-1]
    body = (FIXTURES / case["file"]).read_bytes()
    await through_adapter(adapter, kind, body)
    via_format = ChirpstackEvent().decode(body, Source("chirpstack", topic=case["topic"]),
                                          1_800_000_000.0)
    assert [r._replace(device=r.device.split(":", 1)[1]) for r in sink.accepted] == \
        [r._replace(device=r.device.split(":", 1)[1]) for r in via_format]
    assert [(r.metric, r.value, r.unit) for r in sink.accepted] == [
        tuple(x) for x in case["readings"]]
    assert {r.device for r in sink.accepted} == {f"lora:{case['device']}"}
    adapter.state.close()


async def test_an_event_with_an_empty_deveui_is_counted_as_malformed_and_not_stored(
        tmp_path: Path) -> None:
    # the gRPC stream of a device delivered it: before, its readings went to device "lora:"
    adapter, sink = adapter_for(tmp_path)
    for name, kind in (("up.json", "up"), ("status.json", "status"),
                       ("location.json", "location")):
        doc = json.loads((FIXTURES / name).read_bytes())
        doc["deviceInfo"]["devEui"] = ""
        event = parse_json(kind, json.dumps(doc))
        assert await adapter._handle(Delivery(kind, event, "0101010101010101", "c-" + kind))
    assert sink.accepted == []
    assert metric(adapter.ctx.metrics, "gateway_lorawan_malformed_total", adapter="lora",
                  reason="no_device") == 3
    adapter.state.close()


@pytest.mark.parametrize(("fields", "battery"), [
    ({"batteryLevel": "NaN"}, []),                 # stored as battery=nan before
    ({"batteryLevelUnavailable": True}, []),
    ({"externalPowerSource": True, "batteryLevel": 0}, []),
    ({"batteryLevel": 55.5}, [55.5]),
])
async def test_status_battery_is_stored_only_when_it_is_a_level(
        tmp_path: Path, fields: dict[str, Any], battery: list[float]) -> None:
    adapter, sink = adapter_for(tmp_path)
    doc = {**json.loads((FIXTURES / "status.json").read_bytes()), **fields}
    await through_adapter(adapter, "status", json.dumps(doc).encode())
    assert sink.values("battery") == battery
    assert sink.values("link_margin") == [10]
    adapter.state.close()


async def test_profile_decoding_and_radio_switch_still_apply(tmp_path: Path) -> None:
    adapter, sink = adapter_for(tmp_path, radio_metrics=False, default_profile={
        "decoder": "cayenne", "fields": {"temperature_5": {"metric": "water_temperature"}}})
    await through_adapter(adapter, "up", (FIXTURES / "up_cayenne_codec.json").read_bytes())
    assert [(r.metric, r.value, r.unit) for r in sink.accepted] == [
        ("temperature_3", 27.2, "Cel"), ("water_temperature", 25.5, "Cel")]
    adapter.state.close()
