"""Every decoder, fed anything: readings or its own clean error, never another exception.

What a decoder produces then meets the core's Reading checks, which name a reason for
anything the store cannot keep (never raise).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.lorawan.config import LayoutField
from gateway.adapters.lorawan.decode import DecodeError as LoraDecodeError
from gateway.adapters.lorawan.decode import decode_layout, decode_lpp, flatten_object
from gateway.adapters.lorawan.events import EVENT_TYPES, MalformedEvent, parse_json
from gateway.adapters.mqtt.config import SubscriptionConfig
from gateway.adapters.mqtt.topics import TopicTemplate
from gateway.adapters.zigbee.clusters import METRICS, normalise
from gateway.payloads import REASONS, DecodeError, Format, Source, available, format_class
from gateway.reading import Reading, ReadingLimits

NOW = 1_800_000_000.0
LIMITS = ReadingLimits()
EXAMPLES = settings(max_examples=300, deadline=None)

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.integers(min_value=-(10**400), max_value=10**400),
                     st.text(max_size=30))
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=30)
# SenML-shaped packs: records with the usual keys and arbitrary values
senml_records = st.lists(st.dictionaries(
    st.sampled_from(["bn", "bt", "bu", "bv", "n", "u", "v", "vb", "vs", "vd", "t", "ut", "s"]),
    _scalars, max_size=8), max_size=6)

#: every built-in format, with a subscription topic template and a topic it matches
SUBSCRIPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "json": ({"topic": "devices/{device}/telemetry"}, "devices/d1/telemetry"),
    "cbor": ({"topic": "devices/{device}/cbor"}, "devices/d1/cbor"),
    "senml": ({"topic": "senml/in"}, "senml/in"),
    "senml+cbor": ({"topic": "senml/{device}"}, "senml/d1"),
    "value": ({"topic": "sensors/{device}/{metric}"}, "sensors/d1/temperature"),
    "zigbee2mqtt": ({"topic": "zigbee2mqtt/{device}"}, "zigbee2mqtt/plug"),
    "tasmota": ({"topic": "tele/{device}/+"}, "tele/plug/SENSOR"),
    "shelly": ({"topic": "shellies/{device}/#"}, "shellies/plug/relay/0/power"),
    "shelly_rpc": ({"topic": "{device}/events/rpc"}, "shellyplus1-a1/events/rpc"),
    "esphome": ({"topic": "{device}/{component}/{object}/state"}, "node/sensor/temp/state"),
    "cayenne_lpp": ({"topic": "lpp/{device}"}, "lpp/d1"),
    "chirpstack": ({"topic": "application/+/device/+/event/+"},
                   "application/a1/device/0102030405060708/event/up"),
}


def _decoders() -> list[tuple[Format, Source]]:
    out = []
    for name, (sub, topic) in SUBSCRIPTIONS.items():
        config = SubscriptionConfig.model_validate({**sub, "format": name})
        slots = TopicTemplate(config.topic).match(topic)
        assert slots is not None, name
        out.append((format_class(name)(config), Source("mqtt", slots.get("device"), topic,
                                                         slots)))
    return out


DECODERS = _decoders()


def test_every_installed_format_is_fed_here() -> None:
    assert set(SUBSCRIPTIONS) >= set(available())


def decode_each(payload: bytes) -> None:
    for fmt, source in DECODERS:
        try:
            readings = fmt.decode(payload, source, NOW)
        except DecodeError as exc:
            assert exc.reason in REASONS and str(exc)
            continue
        checked(readings)


def checked(readings: list[Reading]) -> None:
    assert all(isinstance(r, Reading) for r in readings)
    LIMITS.problems(readings, NOW)  # never raises, whatever the decoder let through


@EXAMPLES
@given(st.binary(max_size=200))
def test_mqtt_decoders_take_any_bytes(payload: bytes) -> None:
    decode_each(payload)


@EXAMPLES
@given(json_values)
def test_mqtt_decoders_take_any_json(value: Any) -> None:
    decode_each(json.dumps(value).encode())


@EXAMPLES
@given(senml_records)
def test_senml_decoder_takes_any_pack(pack: list[dict[str, Any]]) -> None:
    decode_each(json.dumps(pack).encode())


def test_deep_nesting_is_a_decode_error_in_every_format() -> None:
    for payload in (b"[" * 5000, b'{"a":' * 5000, b"[" * 100_000 + b"]" * 100_000):
        decode_each(payload)


@EXAMPLES
@given(st.binary(max_size=64))
def test_cayenne_lpp_takes_any_bytes(data: bytes) -> None:
    try:
        out = decode_lpp(data)
    except LoraDecodeError:
        return
    assert all(isinstance(name, str) for name, _, _ in out)


_LAYOUT = [LayoutField.model_validate(f) for f in (
    {"name": "temperature", "type": "int16", "scale": 0.01, "unit": "Cel"},
    {"name": "humidity", "type": "uint8", "scale": 0.5, "unit": "%RH"},
    {"name": "pressure", "type": "float32"},
    {"name": "door", "type": "bool", "bit": 3},
    {"name": "energy", "type": "float64", "endian": "little"},
)]


@EXAMPLES
@given(st.binary(max_size=32))
def test_byte_layout_takes_any_bytes(data: bytes) -> None:
    try:
        decode_layout(data, _LAYOUT)
    except LoraDecodeError:
        pass


@EXAMPLES
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_codec_objects_flatten_whatever_they_hold(obj: dict[str, Any]) -> None:
    for name, _, _ in flatten_object(obj):
        assert isinstance(name, str)


@EXAMPLES
@given(st.sampled_from(sorted(EVENT_TYPES)),
       st.one_of(st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
                 json_values.map(json.dumps)))
def test_chirpstack_json_events_parse_or_are_malformed(kind: str, body: str) -> None:
    try:
        parse_json(kind, body)
    except MalformedEvent as exc:
        assert exc.reason


def test_chirpstack_deeply_nested_event_is_malformed_not_a_recursion_error() -> None:
    for body in ("[" * 5000, '{"object":' * 5000):
        try:
            parse_json("up", body)
        except MalformedEvent as exc:
            assert exc.reason == "bad_json"


_ATTRS = sorted(METRICS)


@EXAMPLES
@given(st.sampled_from(_ATTRS), st.one_of(_scalars, st.binary(max_size=8)))
def test_zigbee_attribute_values_normalise_or_give_nothing(key: tuple[int, int],
                                                          value: Any) -> None:
    cluster, attr = key
    try:
        out = normalise(cluster, attr, value, lambda _: None)
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        return  # the adapter counts these as malformed (one rate-limited line)
    for metric, _, _ in out:
        assert isinstance(metric, str)
