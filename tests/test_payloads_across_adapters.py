"""The same device payload through MQTT and through CoAP gives the same readings.

JSON objects, a SenML JSON pack and a SenML-CBOR pack, each sent both ways.

One ``gateway run`` with both adapters; the device side is mosquitto_pub on a real local
broker and a real aiocoap client; the cloud a real mosquitto with a recording subscriber.
Readings are compared as the cloud receives them, device ids aside (``mqtt:`` vs ``coap:``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from aiocoap.numbers.codes import Code

from tests.brokers import Mosquitto
from tests.coap_helpers import client, post, udp_port
from tests.daemon import GatewayProcess

TS = 1_790_000_000
#: what each device posts: JSON objects (names a firmware author writes, nested paths, a
#: value object with its unit, a payload units map, a device time) and a SenML pack
JSON_BODIES: list[dict[str, Any]] = [
    {"tempC": 21.5, "batteryLevel": 87, "2nd_sensor": 3, "env": {"Humidity": 41.5},
     "power": {"v": 1.2, "u": "kW"}, "pressureHpa": 1013.2, "units": {"pressureHpa": "hPa"},
     "door_open": False, "ts": TS},
    {"CO2-ppm": 612, "ts": TS + 1},
]
SENML_PACK: list[dict[str, Any]] = [
    {"bn": "th-1/", "bt": TS + 2, "n": "temperature", "u": "Cel", "v": 22.25},
    {"n": "relHumidity", "u": "%RH", "v": 40},
    {"n": "door", "vb": True, "t": 1},
]
#: a SenML-CBOR pack (RFC 8428 §6 integer labels: -2 bn, -3 bt, 0 n, 1 u, 2 v, 6 t)
SENML_CBOR_PACK: list[dict[int, Any]] = [
    {-2: "th-1/", -3: TS + 10, 0: "pressure", 1: "hPa", 2: 1013.2},
    {0: "vdd", 1: "V", 2: 3.3, 6: 1},
]


def _config(state: Path, broker: Mosquitto, cloud: Mosquitto, coap_port: int) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-x", "state_dir": str(state)},
        "uplink": {"host": cloud.host, "port": cloud.port, "batch_linger": "10ms"},
        "api": {"enabled": False},
        "store": {"commit_interval": "20ms"},
        "adapters": [
            {"type": "mqtt", "host": broker.host, "port": broker.port, "client_id": "gw-x-dev",
             "reconnect_delay": 0.2,
             "subscriptions": [{"topic": "devices/{device}/json", "timestamp": "ts"},
                               {"topic": "devices/{device}/senml", "format": "senml"},
                               {"topic": "devices/{device}/senml-cbor",
                                "format": "senml+cbor"}]},
            {"type": "coap", "bind": "127.0.0.1", "port": coap_port},
        ],
    }


def _publish(broker: Mosquitto, topic: str, payload: Any) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                    "-q", "1", "-t", topic, "-s"], input=body, check=True, timeout=20)


async def _post_all(port: int) -> list[Code]:
    c = await client()
    try:
        codes = [(await post(c, f"coap://127.0.0.1:{port}/readings/th-1",
                             json.dumps(b).encode(), 50)).code for b in JSON_BODIES]
        codes.append((await post(c, f"coap://127.0.0.1:{port}/readings/th-1",
                                 json.dumps(SENML_PACK).encode(), 110)).code)
        codes.append((await post(c, f"coap://127.0.0.1:{port}/readings/th-1",
                                 cbor2.dumps(SENML_CBOR_PACK), 112)).code)
        return codes
    finally:
        await c.shutdown()


def test_same_payload_over_mqtt_and_coap_gives_the_same_readings(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., Any]) -> None:
    broker = mosquitto_factory(name="devices")
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    port = udp_port()
    gateway_factory(_config(tmp_path / "state", broker, cloud_broker, port)).start()

    for body in JSON_BODIES:
        _publish(broker, "devices/th-1/json", body)
    _publish(broker, "devices/th-1/senml", SENML_PACK)
    _publish(broker, "devices/th-1/senml-cbor", cbor2.dumps(SENML_CBOR_PACK))
    assert asyncio.run(_post_all(port)) == [Code.CHANGED] * 4

    def of(adapter: str) -> set[tuple[str, Any, str | None, float]]:
        return {(r.metric, r.value, r.unit, r.ts) for r in cloud.readings()
                if r.device == f"{adapter}:th-1"}

    expected = {
        ("temp_c", 21.5, None, TS), ("battery_level", 87, None, TS),
        ("m_2nd_sensor", 3, None, TS), ("env_humidity", 41.5, None, TS),
        ("power", 1200.0, "W", TS), ("pressure_hpa", 101320.0, "Pa", TS),
        ("door_open", False, None, TS), ("co2_ppm", 612, None, TS + 1),
        ("temperature", 22.25, "Cel", TS + 2), ("rel_humidity", 40, "%RH", TS + 2),
        ("door", True, None, TS + 3),
        ("pressure", 101320.0, "Pa", TS + 10), ("vdd", 3.3, "V", TS + 11),
    }
    cloud.wait_for(lambda: of("mqtt") == expected and of("coap") == expected, 30)
    assert of("mqtt") == of("coap") == expected
