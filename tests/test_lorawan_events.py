"""LoRaWAN event parsing: the fast JSON path agrees with protobuf's reference JSON parser."""

from __future__ import annotations

import json
import uuid

import pytest
from chirpstack_api.gw import gw_pb2
from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.adapters.lorawan.events import (
    MalformedEvent,
    UnknownKind,
    parse_json,
    parse_payload,
)
from tests.lorawan_harness import DOCUMENTED_STATUS, DOCUMENTED_UP

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
