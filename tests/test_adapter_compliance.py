"""Every adapter type against the Adapter contract of shared/DESIGN.md, through its real path.

One suite, parametrized over the input paths of every installed adapter type:

- ``simulator``;
- ``mqtt``: a gmqtt device on real mosquitto; the adapter reaches the broker through a
  loopback relay that reads its PUBACKs (and their reason codes) on the wire;
- ``coap``: a real aiocoap client posting readings, retrying after 5.03 as a device does;
- ``coap-observe``: the adapter observing a resource on a real aiocoap device;
- ``zigbee``: real zigpy behind the virtual radio, a paired virtual sensor, readings on
  into the real pipeline and SQLite outbox;
- ``lorawan``: the gRPC ChirpStack stand-in; the acknowledgement is the cursor on disk;
- ``lorawan-mqtt``: ChirpStack's MQTT integration through mosquitto, PUBACKs on the wire.

The sink is ``tests.compliance.GateSink``: it holds or refuses a batch on demand, which a
real outbox cannot be made to do on time. Each adapter runs under an instance name other
than its type, so device ids must come from the name.

Checked for each path:

1. accept-then-ack: no PUBACK / 2.04 / saved cursor while ``accept`` is held, one after;
   a refused batch is offered again, the device is not acknowledged meanwhile, and the
   batch arrives exactly once (for the simulator and zigbee, which acknowledge nothing,
   this is the check);
2. refusal as the device hears it: 5.03 with Max-Age (coap), no PUBACK until accepted
   (mqtt's default hold) or 0x97 (``on_refused: nack``), the cursor left behind (lorawan);
   a refusal that outlasts zigbee's ``retry_for`` is counted and logged; a payload unit
   outside SenML never reaches a Reading;
3. a malformed payload is counted in ``gateway_<type>_malformed_total``, logged, and the
   next good payload still arrives;
4. ``stop()`` finishes a batch whose ``accept`` is in progress, then returns promptly; it
   is bounded too while ``accept`` never returns, and while the sink refuses, after
   which the message arrives once the adapter is back (where the broker session,
   ChirpStack's history or the device keeps it) or its loss is counted and logged (where
   the device will not send it again); each adapter's own drain limit is below the
   supervisor's stop timeout; a restarted adapter (a new instance on the same metrics
   registry, as the supervisor makes) keeps working;
5. device ids ``<name>:<native id>``, ``owns()``, snake_case metrics, SenML units, value
   and timestamp types, and the class registered under the type's entry point;
6. ``send()`` to an unknown device returns a failed ``CommandResult`` and never raises.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import cbor2
import gmqtt
import pytest
from aiocoap import Context
from aiocoap.numbers.codes import Code
from chirpstack_api.integration import integration_pb2 as integration
from gmqtt.mqtt.constants import MQTTv311
from prometheus_client import CollectorRegistry

from gateway.adapters import ingest
from gateway.adapters.base import Adapter, AdapterContext
from gateway.adapters.coap import CoapAdapter
from gateway.adapters.coap.config import CoapConfig
from gateway.adapters.lorawan.state import cursor_key
from gateway.adapters.mqtt import MqttAdapter
from gateway.adapters.mqtt.config import MqttConfig
from gateway.adapters.registry import adapter_class, available_types
from gateway.adapters.simulator import SimulatorAdapter, SimulatorConfig
from gateway.adapters.supervisor import STOP_TIMEOUT
from gateway.reading import Command, CommandResult, Reading
from tests import coap_helpers
from tests import zigbee_virtual as zv
from tests.brokers import Mosquitto
from tests.chirpstack_fake import TENANT, FakeChirpStack
from tests.compliance import SENML_UNITS, GateSink, MqttTap, eventually
from tests.lorawan_harness import make_adapter
from tests.zigbee_harness import Harness as ZigbeeHarness

#: stop() must return within this long once the batch it waits for is accepted
STOP_BOUND = 5.0
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


class Driver(abc.ABC):
    """One adapter type, started on a GateSink, and a device that talks to it."""

    type: ClassVar[str]
    #: whether the device hears an acknowledgement (PUBACK, 2.04, cursor) at all
    acknowledges: ClassVar[bool]
    #: whether the device sends a refused message again (False: the gateway must keep it,
    #: and a loss must at least be counted); None where there is no device
    resends: ClassVar[bool | None] = True
    #: what send() says of a device it does not know
    unknown_status: ClassVar[str] = "unknown_device"
    #: a message the tests can make the first one the sink sees
    first_seq: ClassVar[int] = 1

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.name = f"{self.type}-east"
        self.sink = GateSink()
        self.metrics = CollectorRegistry()
        self.log = logging.getLogger(f"gateway.adapter.{self.name}")
        self._adapter: Adapter | None = None
        self.stopped = False

    @property
    def adapter(self) -> Adapter:
        assert self._adapter is not None, "adapter not started"
        return self._adapter

    #: the drain limit the adapter is given (shortened by the tests of stop)
    drain_timeout = ingest.DRAIN_TIMEOUT

    def context(self) -> AdapterContext:
        return AdapterContext(name=self.name, sink=self.sink, state_dir=self.tmp,
                              metrics=self.metrics, log=self.log,
                              drain_timeout=self.drain_timeout)

    @abc.abstractmethod
    async def start(self, **options: Any) -> Adapter:
        """Start the adapter (and whatever stands for its devices' world)."""

    @abc.abstractmethod
    async def send_good(self, seq: int) -> None:
        """The device sends one good message marked ``seq``."""

    async def send_bad(self) -> None:
        """The device sends one malformed payload."""
        raise NotImplementedError

    @abc.abstractmethod
    def native(self, seq: int) -> str:
        """The native id of the device sending message ``seq``."""

    def marker(self, r: Reading) -> int | None:
        """The ``seq`` of the message ``r`` came from, if ``r`` carries it."""
        return int(r.value) if r.metric == "seq" else None

    def acked(self, seq: int) -> bool:
        """Whether the device got a success acknowledgement for message ``seq``."""
        raise NotImplementedError

    @abc.abstractmethod
    def unknown_commands(self) -> list[Command]:
        """Commands for devices this adapter does not know."""

    async def send_variety(self) -> None:
        """The devices send what else the adapter decodes (other formats, units, devices);
        returns once it arrived."""
        return None

    async def send_unit(self, unit: str, seq: int) -> None:
        """The device sends a value in ``unit`` (named in its own payload) and seq ``seq``."""
        raise NotImplementedError

    def malformed_total(self) -> float:
        wanted = f"gateway_{self.type}_malformed_total"
        return sum(s.value for m in self.metrics.collect() for s in m.samples
                   if s.name == wanted)

    async def stop(self) -> None:
        self.stopped = True
        await self.adapter.stop()

    async def close(self) -> None:
        self.sink.gate.set()
        self.sink.refusing = False
        if self._adapter is not None and not self.stopped:
            await self.stop()

    # -- helpers for the checks -----------------------------------------------------------

    def seqs(self, readings: list[Reading]) -> list[int]:
        return [s for s in map(self.marker, readings) if s is not None]


class SimulatorDriver(Driver):
    """The simulator's one device emits seq 0, 1, 2... by itself every 0.1 s."""

    type = "simulator"
    acknowledges = False
    resends = None
    first_seq = 0  # its device counts from 0, and later messages queue behind a refused one

    async def start(self, **options: Any) -> Adapter:
        cfg = SimulatorConfig(type="simulator", name=self.name, devices=1, interval=0.1,
                              metrics=["temperature", "humidity", "pressure", "illuminance",
                                       "power", "battery", "seq"], seed=1,
                              **options)
        self._adapter = SimulatorAdapter(cfg, self.context())
        self.stopped = False
        await self._adapter.start()
        return self._adapter

    async def send_good(self, seq: int) -> None:
        return None  # the simulated device sends on its own clock

    def native(self, seq: int) -> str:
        return "sim-1"

    def unknown_commands(self) -> list[Command]:
        return [Command(f"{self.name}:sim-9", "on"), Command(f"{self.name}:no such", "off")]


class MqttDriver(Driver):
    """A gmqtt device on mosquitto; the adapter reaches the broker through a PUBACK tap."""

    type = "mqtt"
    acknowledges = True
    unknown_status = "refused"  # no device list: nobody subscribed to its command topic

    def __init__(self, tmp: Path, broker: Mosquitto) -> None:
        super().__init__(tmp)
        self.broker = broker
        self.tap = MqttTap(broker.host, broker.port)
        self.device: gmqtt.Client | None = None

    async def start(self, **options: Any) -> Adapter:
        first = self._adapter is None
        if first:
            await self.tap.start()
        cfg = MqttConfig.model_validate({
            "type": "mqtt", "name": self.name, "host": self.tap.host, "port": self.tap.port,
            "client_id": "gw-compliance", "reconnect_delay": 0.2,
            "subscriptions": [{"topic": "devices/{device}/telemetry",
                               "units": {"temperature": "°C", "humidity": "%"}},
                              {"topic": "senml/{device}", "format": "senml"},
                              {"topic": "z2m/{device}", "format": "zigbee2mqtt"},
                              {"topic": "sensors/{device}/{metric}", "format": "value",
                               "units": {"temperature": "°F", "pressure": "hPa"}}],
            "commands": {"topic": "devices/{device}/set", "timeout": 3}, **options})
        self._adapter = MqttAdapter(cfg, self.context())
        self.stopped = False
        await self._adapter.start()
        if first:
            self.device = gmqtt.Client("compliance-device")
            await self.device.connect(self.broker.host, self.broker.port, keepalive=10)
        return self._adapter

    @staticmethod
    def topic(native: str) -> str:
        return f"devices/{native}/telemetry"

    async def send_good(self, seq: int) -> None:
        assert self.device is not None
        body = {"seq": seq, "temperature": 21.5, "humidity": 40}
        self.device.publish(self.topic(self.native(seq)), json.dumps(body).encode(), qos=1)

    async def send_bad(self) -> None:
        assert self.device is not None
        self.device.publish(self.topic("broken"), b"{not json", qos=1)

    async def send_variety(self) -> None:
        assert self.device is not None
        pack = [{"bn": "pack-", "n": "temperature", "u": "°C", "v": 21.5},
                {"n": "pressure", "u": "hPa", "v": 1013.2}, {"n": "energy", "u": "kWh", "v": 2},
                {"n": "humidity", "u": "%", "v": 40}, {"n": "seq", "v": 11}]
        self.device.publish("senml/s1", json.dumps(pack).encode(), qos=1)
        z2m = {"temperature": 20.5, "humidity": 41, "pressure": 1012, "battery": 87,
               "voltage": 2950, "state": "ON", "linkquality": 120, "illuminance_lux": 300}
        self.device.publish("z2m/plug", json.dumps(z2m).encode(), qos=1)
        self.device.publish("sensors/v1/temperature", b"70.5", qos=1)
        self.device.publish("sensors/v1/pressure", b"1009", qos=1)
        plug, v1 = f"{self.name}:plug", f"{self.name}:v1"
        await eventually(lambda: 11 in self.seqs(self.sink.accepted)
                         and plug in {r.device for r in self.sink.accepted}
                         and len([r for r in self.sink.accepted if r.device == v1]) == 2,
                         10, "the senml, zigbee2mqtt and value messages")

    async def send_unit(self, unit: str, seq: int) -> None:
        assert self.device is not None
        pack = [{"n": "length", "u": unit, "v": 3}, {"n": "seq", "v": seq}]
        self.device.publish(f"senml/{self.native(seq)}", json.dumps(pack).encode(), qos=1)

    def native(self, seq: int) -> str:
        return f"d{seq}"

    def acked(self, seq: int) -> bool:
        return any(code < 0x80 for code in self.tap.acks_for(self.topic(self.native(seq))))

    def unknown_commands(self) -> list[Command]:
        return [Command(f"{self.name}:ghost", "set", {"state": "ON"}),
                Command(f"{self.name}:a/+/b", "set", {"state": "ON"})]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.device is not None:
                await self.device.disconnect()
            await self.tap.stop()


class CoapDriver(Driver):
    """A real aiocoap client posting JSON; like a device, it retries after a 5.03."""

    type = "coap"
    acknowledges = True

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.port = coap_helpers.udp_port()
        self.client: Context | None = None
        #: response codes (and Max-Age) each message's requests got, retries included
        self.answers: dict[int, list[tuple[Code, int | None]]] = {}
        self.bad_answers: list[Code] = []
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def start(self, **options: Any) -> Adapter:
        cfg = CoapConfig.model_validate({"type": "coap", "name": self.name,
                                         "bind": "127.0.0.1", "port": self.port,
                                         "retry_after": 1, **options})
        self._adapter = CoapAdapter(cfg, self.context())
        self.stopped = False
        await self._adapter.start()
        if self.client is None:
            self.client = await coap_helpers.client()
        return self._adapter

    async def _device(self, seq: int) -> None:
        assert self.client is not None
        body = json.dumps({"seq": seq, "temperature": 21.5, "humidity": 40,
                           "units": {"temperature": "Cel", "humidity": "%RH"}}).encode()
        answers = self.answers.setdefault(seq, [])
        for _attempt in range(200):
            try:
                resp = await coap_helpers.post(self.client,
                                               f"{self.uri}/readings/{self.native(seq)}", body,
                                               50, within=15)
            except Exception:  # noqa: BLE001 - the gateway is away: a device tries again
                await asyncio.sleep(0.1)
                continue
            answers.append((resp.code, resp.opt.max_age))
            if resp.code != Code.SERVICE_UNAVAILABLE:
                return
            await asyncio.sleep(0.05)  # a device would wait Max-Age; the test is in a hurry

    async def send_good(self, seq: int) -> None:
        task = asyncio.get_running_loop().create_task(self._device(seq))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def send_bad(self) -> None:
        assert self.client is not None
        resp = await coap_helpers.post(self.client, f"{self.uri}/readings/broken",
                                       b'{"temperature": 21.', 50)
        self.bad_answers.append(resp.code)

    async def send_variety(self) -> None:
        assert self.client is not None
        # SenML+CBOR with RFC 8428's integer labels (bn -2, n 0, u 1, v 2), aliases for units
        pack = cbor2.dumps([{-2: "node/", 0: "pressure", 1: "hPa", 2: 1013.2},
                            {0: "illuminance", 1: "lux", 2: 300}, {0: "seq", 2: 12}])
        body = json.dumps({"battery": {"v": 87, "u": "%"}, "power": {"v": 1.5, "u": "kW"},
                           "open": True, "mode": "eco", "seq": 13}).encode()
        for fmt, payload in ((112, pack), (50, body)):
            resp = await coap_helpers.post(self.client, f"{self.uri}/readings/v1", payload, fmt)
            assert resp.code == Code.CHANGED, resp

    async def send_unit(self, unit: str, seq: int) -> None:
        assert self.client is not None
        pack = json.dumps([{"n": "length", "u": unit, "v": 3}, {"n": "seq", "v": seq}]).encode()
        resp = await coap_helpers.post(self.client, f"{self.uri}/readings/{self.native(seq)}",
                                       pack, 110)
        self.answers.setdefault(seq, []).append((resp.code, resp.opt.max_age))

    def native(self, seq: int) -> str:
        return f"d{seq}"

    def acked(self, seq: int) -> bool:
        return any(code == Code.CHANGED for code, _ in self.answers.get(seq, []))

    def unknown_commands(self) -> list[Command]:
        return [Command(f"{self.name}:ghost", "on"), Command(f"{self.name}:a/b", "on")]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            for task in list(self._requests):
                task.cancel()
            await asyncio.gather(*self._requests, return_exceptions=True)
            if self.client is not None:
                await self.client.shutdown()


class CoapObserveDriver(CoapDriver):
    """The other CoAP path: the adapter observes a resource on a real aiocoap device."""

    acknowledges = False  # a notification has no application-level answer
    resends = False

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.device = coap_helpers.Device()
        self.sensor = self.device.add("/sensors/climate", coap_helpers.DeviceResource(
            self._state(0)))

    @staticmethod
    def _state(seq: int) -> dict[str, Any]:
        return {"seq": seq, "temperature": 21.5, "units": {"temperature": "Cel"}}

    async def start(self, **options: Any) -> Adapter:
        first = self._adapter is None
        if first:
            await self.device.start()
        adapter = await super().start(devices=[{
            "id": "node-1", "address": self.device.address,
            "resources": [{"path": "/sensors/climate", "quiet_after": 30}]}], **options)
        if first:  # the registration's first answer is seq 0: later checks start from it
            await eventually(lambda: 0 in self.seqs(self.sink.accepted), 10,
                             "the observation's first answer")
        return adapter

    async def send_good(self, seq: int) -> None:
        self.sensor.value = self._state(seq)
        self.sensor.updated_state()

    async def send_bad(self) -> None:
        self.sensor.value = {"temperature": [1, 2]}  # a list where a number belongs
        self.sensor.updated_state()

    def native(self, seq: int) -> str:
        return "node-1"

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.device.stop()


class ZigbeeDriver(Driver):
    """A paired virtual climate sensor; readings go on to the real pipeline and outbox."""

    type = "zigbee"
    acknowledges = False
    resends = False

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.harness = ZigbeeHarness(tmp)
        self.metrics = self.harness.metrics
        self.sensor = zv.climate_sensor()

    async def start(self, **options: Any) -> Adapter:
        h = self.harness
        first = self._adapter is None
        if first:
            await h.start_core()
            assert h.pipeline is not None
            # the harness builds the adapter's sink from pipeline.accept: gate in front
            self.sink.inner = h.pipeline.accept
            h.pipeline.accept = self.sink.accept  # type: ignore[method-assign]
        self.stopped = False
        adapter = self._adapter = await h.started(self.name, **options)
        if first:
            dev_id = await h.pair(adapter, self.sensor)
            # the values read at pairing go through first: later checks start from quiet
            await h.wait_reading(dev_id, "temperature")
            await eventually(lambda: h.metric("gateway_zigbee_readings_pending",
                                              adapter=self.name) == 0, 5, "an empty queue")
        return adapter

    async def send_good(self, seq: int) -> None:
        self.sensor.report(0x0402, {0x0000: 1000 + seq})  # centi-degrees: 10.00 + seq/100

    async def send_bad(self) -> None:
        self.sensor.report_raw(0x0402, b"\x00\x00\x29\x01")  # an int16 cut short

    def marker(self, r: Reading) -> int | None:
        if r.metric == "temperature" and isinstance(r.value, float) and 10 <= r.value < 11:
            return round((r.value - 10) * 100)
        return None

    def native(self, seq: int) -> str:
        return str(self.sensor.ieee)

    async def send_variety(self) -> None:
        h = self.harness
        plug_id = await h.pair(self.adapter, zv.smart_plug())  # type: ignore[arg-type]
        door_id = await h.pair(self.adapter, zv.door_sensor())  # type: ignore[arg-type]
        result = await self.adapter.send(Command(plug_id, "level", {"level": 40}))
        assert result.ok, result
        await h.wait_reading(plug_id, "level", 40.2)
        await h.wait_reading(plug_id, "energy")
        await h.wait_reading(door_id, "contact")

    def unknown_commands(self) -> list[Command]:
        return [Command(f"{self.name}:00:00:00:00:00:00:00:99", "on"),
                Command(f"{self.name}:not-an-ieee", "on")]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.harness.adapters = []  # stopped above; the harness closes the core
            await self.harness.close()


class LorawanDriver(Driver):
    """A device behind the ChirpStack stand-in; its ack is the cursor saved on disk."""

    type = "lorawan"
    acknowledges = True
    EUI = "0102030405060708"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.cs = FakeChirpStack()
        app = self.cs.add_application("garden")
        self.cs.add_device(app, self.EUI, "greenhouse", profile="Dragino LHT65")
        self.items: dict[int, str] = {}
        self.cs_running = False

    async def start(self, **options: Any) -> Adapter:
        if not self.cs_running:  # a second start (a restart) finds ChirpStack still up
            await self.cs.start()
            self.cs_running = True
        self._adapter = make_adapter(
            self.tmp, self.metrics, sink=self.sink, name=self.name,
            server=self.cs.address, api_token=self.cs.token, tenant_id=TENANT,
            stream={"backoff_initial": 0.05, "backoff_max": 0.2},
            default_profile={"decoder": "object", "fields": {
                "temperature": {"metric": "temperature", "unit": "Cel"}}}, **options)
        self.stopped = False
        await self._adapter.start()
        return self._adapter

    async def send_good(self, seq: int) -> None:
        ev = self.cs.uplink(self.EUI, seq, obj={"seq": seq, "temperature": 21.5})
        self.items[seq] = self.cs.emit(self.EUI, "up", ev)

    async def send_bad(self) -> None:
        self.cs.emit_raw(self.EUI, "up", "{not json")

    def status_event(self) -> integration.StatusEvent:
        return integration.StatusEvent(deduplication_id="status-1",
                                       device_info=self.cs.device_info(self.EUI), margin=9,
                                       battery_level=64.5)

    async def send_variety(self) -> None:
        self.cs.emit(self.EUI, "status", self.status_event())
        await eventually(lambda: any(r.metric == "link_margin" for r in self.sink.accepted),
                         10, "the status event's readings")

    def native(self, seq: int) -> str:
        return self.EUI

    def saved_cursor(self) -> str:
        """The device's cursor as the state files on disk have it (snapshot + journal)."""
        path = self.tmp / f"lorawan-{self.name}.json"
        cursors: list[str] = []
        if path.exists():
            snap = json.loads(path.read_text()).get("devices", {}).get(self.EUI, {})
            cursors.append(str(snap.get("cursor", "")))
        journal = path.with_suffix(".journal")
        if journal.exists():
            for line in journal.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if entry.get("d") == self.EUI and entry.get("c"):
                    cursors.append(str(entry["c"]))
        keyed = [(k, c) for c in cursors if (k := cursor_key(c)) is not None]
        return max(keyed)[1] if keyed else ""

    def acked(self, seq: int) -> bool:
        saved, item = cursor_key(self.saved_cursor()), cursor_key(self.items[seq])
        return saved is not None and item is not None and saved >= item

    def unknown_commands(self) -> list[Command]:
        down = {"f_port": 10, "data": "0100"}
        return [Command(f"{self.name}:ffffffffffffff99", "downlink", down),
                Command(f"{self.name}:not-an-eui", "downlink", down)]

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.cs.stop()


class LorawanMqttDriver(LorawanDriver):
    """LoRaWAN's other source: ChirpStack's MQTT integration through mosquitto, with the
    adapter behind a PUBACK tap; discovery still goes to the gRPC stand-in."""

    def __init__(self, tmp: Path, broker: Mosquitto) -> None:
        super().__init__(tmp)
        self.broker = broker
        self.tap = MqttTap(broker.host, broker.port)
        self.publisher: gmqtt.Client | None = None
        self.bodies: dict[int, bytes] = {}

    @property
    def topic(self) -> str:
        return f"application/{self.cs.devices[self.EUI]['app']}/device/{self.EUI}/event/up"

    async def start(self, **options: Any) -> Adapter:
        if self.publisher is None:
            await self.tap.start()
            self.publisher = gmqtt.Client("compliance-chirpstack")
            await self.publisher.connect(self.broker.host, self.broker.port, version=MQTTv311)
        return await super().start(source="mqtt", mqtt={
            "host": self.tap.host, "port": self.tap.port, "client_id": "gw-lora-compliance",
            "reconnect_delay": 0.2}, **options)

    async def send_good(self, seq: int) -> None:
        assert self.publisher is not None
        ev = self.cs.uplink(self.EUI, seq, obj={"seq": seq, "temperature": 21.5})
        self.bodies[seq] = ev.SerializeToString()
        self.publisher.publish(self.topic, self.bodies[seq], qos=1)

    async def send_bad(self) -> None:
        assert self.publisher is not None
        self.publisher.publish(self.topic, b"{not json", qos=1)

    async def send_variety(self) -> None:
        assert self.publisher is not None
        self.publisher.publish(self.topic.replace("/event/up", "/event/status"),
                               self.status_event().SerializeToString(), qos=1)
        await eventually(lambda: any(r.metric == "link_margin" for r in self.sink.accepted),
                         10, "the status event's readings")

    def acked(self, seq: int) -> bool:
        return any(p.code < 0x80 for p in self.tap.pubacks if p.payload == self.bodies[seq])

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.publisher is not None:
                await self.publisher.disconnect()
            await self.tap.stop()


#: case id → driver; the ids after the type name are the adapter's second input path
DRIVERS: dict[str, type[Driver]] = {
    "simulator": SimulatorDriver, "mqtt": MqttDriver, "coap": CoapDriver,
    "coap-observe": CoapObserveDriver, "zigbee": ZigbeeDriver, "lorawan": LorawanDriver,
    "lorawan-mqtt": LorawanMqttDriver}
ACKING = [t for t, d in DRIVERS.items() if d.acknowledges]
WIRED = [t for t in DRIVERS if t != "simulator"]  # the simulator has no wire payloads


def _case(kind: str, xfail: dict[str, str] | None = None) -> Any:
    reason = (xfail or {}).get(kind)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(kind, marks=marks, id=kind)


async def _driver(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Driver:
    if kind in ("mqtt", "lorawan-mqtt"):
        return DRIVERS[kind](tmp_path, request.getfixturevalue("mosquitto"))  # type: ignore[call-arg]
    return DRIVERS[kind](tmp_path)


@pytest.fixture
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    d = await _driver(request.param, tmp_path, request)
    try:
        yield d
    finally:
        await asyncio.wait_for(d.close(), 20)


def cases(kinds: list[str], xfail: dict[str, str] | None = None) -> Any:
    """Parametrize the ``driver`` fixture over adapter types."""
    return pytest.mark.parametrize("driver", [_case(k, xfail) for k in kinds], indirect=True)


def test_every_installed_adapter_type_is_covered_by_the_suite() -> None:
    assert set(available_types()) == {d.type for d in DRIVERS.values()}


# -- 1. accept-then-ack ---------------------------------------------------------------------


@cases(ACKING)
async def test_device_is_acknowledged_only_after_accept_returned_true(driver: Driver) -> None:
    await driver.start()
    sink = driver.sink
    sink.gate.clear()  # a commit in progress: accept has not returned
    await driver.send_good(1)
    await eventually(lambda: 1 in driver.seqs(sink.offered()), 10, "the message at the sink")
    await asyncio.sleep(0.3)  # time enough for an early acknowledgement to show
    assert not driver.acked(1), "acknowledged before accept returned True"
    sink.gate.set()
    await eventually(lambda: driver.acked(1), 10, "the acknowledgement once accepted")
    assert driver.seqs(sink.accepted).count(1) == 1


@cases(list(DRIVERS))
async def test_refused_batch_is_offered_again_and_arrives_exactly_once(driver: Driver) -> None:
    await driver.start()
    sink = driver.sink
    sink.refusing = True  # the outbox is full
    seq = driver.first_seq
    await driver.send_good(seq)
    await eventually(lambda: driver.seqs(sink.offered()).count(seq) >= 2, 10,
                     "the refused message offered again")
    assert seq not in driver.seqs(sink.accepted)
    if driver.acknowledges:
        assert not driver.acked(seq), "acknowledged although the sink refused"
    sink.refusing = False
    await eventually(lambda: seq in driver.seqs(sink.accepted), 10, "the message accepted")
    if driver.acknowledges:
        await eventually(lambda: driver.acked(seq), 10, "the acknowledgement once accepted")
    await asyncio.sleep(0.3)
    assert driver.seqs(sink.accepted).count(seq) == 1
    if type(driver) is CoapDriver:  # the device heard 5.03 with Max-Age, then 2.04
        *refusals, last = driver.answers[seq]
        assert refusals and all(code == Code.SERVICE_UNAVAILABLE and max_age == 1
                                for code, max_age in refusals), refusals
        assert last[0] == Code.CHANGED
    if isinstance(driver, MqttDriver):  # held unacknowledged, then one PUBACK with 0x00
        assert driver.tap.acks_for(driver.topic(driver.native(seq))) == [0]


# -- 2. refusal as the device hears it ------------------------------------------------------


@cases(["mqtt"])
async def test_mqtt_refusal_answers_0x97_on_the_wire_in_nack_mode(driver: Driver) -> None:
    assert isinstance(driver, MqttDriver)
    await driver.start(on_refused="nack")
    driver.sink.refusing = True
    await driver.send_good(1)
    topic = driver.topic(driver.native(1))
    await eventually(lambda: driver.tap.acks_for(topic) != [], 10, "a PUBACK")
    assert driver.tap.acks_for(topic) == [0x97]
    assert driver.seqs(driver.sink.accepted) == []


@cases(["zigbee"])
async def test_zigbee_refusal_outlasting_retry_for_is_counted_and_logged_not_silent(
        driver: Driver, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(driver, ZigbeeDriver)
    await driver.start(retry_for=0.3)
    caplog.set_level(logging.WARNING)

    def dropped() -> float:
        return driver.harness.metric("gateway_zigbee_readings_dropped_total",
                                     adapter=driver.name, reason="refused")

    before = dropped()
    driver.sink.refusing = True
    await driver.send_good(1)
    await eventually(lambda: dropped() > before, 10, "the dropped reading counted")
    assert any("dropped" in r.getMessage() and r.levelno >= logging.WARNING
               for r in caplog.records)
    driver.sink.refusing = False
    await driver.send_good(2)
    await eventually(lambda: 2 in driver.seqs(driver.sink.accepted), 10, "the next reading")


# -- 3. malformed payloads ------------------------------------------------------------------


@cases(WIRED)
async def test_malformed_payload_is_counted_logged_and_the_next_one_arrives(
        driver: Driver, caplog: pytest.LogCaptureFixture) -> None:
    await driver.start()
    caplog.set_level(logging.WARNING)
    caplog.clear()
    before = driver.malformed_total()
    await driver.send_bad()
    await eventually(lambda: driver.malformed_total() > before, 10,
                     f"gateway_{driver.type}_malformed_total to move")
    await driver.send_good(2)
    await eventually(lambda: 2 in driver.seqs(driver.sink.accepted), 10, "the good payload")
    assert driver.malformed_total() == before + 1
    assert [r for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("gateway")], "not logged"
    assert not driver.adapter.failed.done()
    if type(driver) is CoapDriver:
        assert driver.bad_answers == [Code.BAD_REQUEST]
    if isinstance(driver, MqttDriver):
        assert driver.tap.acks_for(driver.topic("broken")) == [0x99]


# -- 4. stop drains -------------------------------------------------------------------------


@cases(list(DRIVERS))
async def test_stop_finishes_the_batch_being_accepted_and_returns_promptly(
        driver: Driver) -> None:
    await driver.start()
    sink = driver.sink
    sink.gate.clear()
    await driver.send_good(3)
    await eventually(lambda: 3 in driver.seqs(sink.offered()), 10, "the message at the sink")
    stopping = asyncio.ensure_future(driver.stop())
    await asyncio.sleep(0.3)
    sink.gate.set()
    released = time.monotonic()
    await asyncio.wait_for(stopping, STOP_BOUND + 5)
    assert time.monotonic() - released < STOP_BOUND
    assert driver.seqs(sink.accepted).count(3) == 1
    if driver.acknowledges:
        # whatever the tap or the client reads now was sent before the adapter closed
        await eventually(lambda: driver.acked(3), 3, "the acknowledgement sent before close")


@cases(list(DRIVERS))
async def test_stop_while_the_sink_refuses_is_prompt_and_the_message_is_not_lost(
        driver: Driver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    driver.drain_timeout = 0.5  # the drain limit, shortened
    await driver.start(**({"retry_for": 30.0} if driver.type == "zigbee" else {}))
    driver.adapter.ingest.drain_timeout = 0.5  # for drivers that build their own context
    driver.sink.refusing = True
    seq = driver.first_seq
    await driver.send_good(seq)
    await eventually(lambda: driver.seqs(driver.sink.offered()).count(seq) >= 2, 10,
                     "retries")
    caplog.set_level(logging.WARNING)
    caplog.clear()
    t0 = time.monotonic()
    await asyncio.wait_for(driver.stop(), STOP_TIMEOUT + 5)
    assert time.monotonic() - t0 < STOP_TIMEOUT  # the supervisor gives up on stop() then
    assert seq not in driver.seqs(driver.sink.accepted)
    if driver.acknowledges:
        await asyncio.sleep(0.2)
        assert not driver.acked(seq), "acknowledged a refused message at stop"
    if driver.resends is False:  # the device will not send it again: say what was lost
        assert [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("gateway")], "refused readings dropped without a word"
    if isinstance(driver, ZigbeeDriver):
        assert driver.harness.metric("gateway_zigbee_readings_dropped_total",
                                     adapter=driver.name, reason="shutdown") == 1
    if driver.resends:
        # the broker session, ChirpStack's history or the device itself still has it
        driver.sink.refusing = False
        await driver.start()
        await eventually(lambda: 1 in driver.seqs(driver.sink.accepted), 10,
                         "the message after the restart")
        await eventually(lambda: driver.acked(1), 10, "its acknowledgement")
        await asyncio.sleep(0.3)
        assert driver.seqs(driver.sink.accepted).count(1) == 1


@cases(list(DRIVERS))
async def test_stop_gives_up_in_bounded_time_when_accept_never_returns(
        driver: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    # the drain limit, shortened so the suite stays quick: every wait of the stop (a
    # LoRaWAN source's for the event being handled too) ends by it, and what is left of
    # the stop fits in the supervisor's margin
    driver.drain_timeout = 0.5
    await driver.start()
    driver.adapter.ingest.drain_timeout = 0.5  # for drivers that build their own context
    driver.sink.gate.clear()  # the store hangs
    await driver.send_good(1)
    await eventually(lambda: 1 in driver.seqs(driver.sink.offered()), 10, "the message held")
    t0 = time.monotonic()
    await asyncio.wait_for(driver.stop(), STOP_TIMEOUT + 5)
    took = time.monotonic() - t0
    assert took < driver.drain_timeout + ingest.STOP_MARGIN, f"stop took {took:.2f} s"
    if driver.acknowledges:
        assert not driver.acked(1), "acknowledged a message whose accept never returned"


@cases(["zigbee"])
async def test_zigbee_radio_shutdown_and_the_drain_share_one_stop_limit(
        driver: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    # the radio hangs at shutdown and so does the store: the stop's steps end by the one
    # drain limit, not by the radio's bound plus the drain limit after it (which could
    # outlast the supervisor's stop timeout)
    from gateway.adapters.zigbee import adapter as zigbee_adapter

    radio, limit = 1.5, 2.0
    monkeypatch.setattr(zigbee_adapter, "RADIO_SHUTDOWN_TIMEOUT", radio)
    driver.drain_timeout = limit
    adapter = await driver.start()
    assert isinstance(adapter, zigbee_adapter.ZigbeeAdapter) and adapter.app is not None
    adapter.ingest.drain_timeout = limit

    async def hung() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(adapter.app, "shutdown", hung)
    driver.sink.gate.clear()  # the store hangs
    await driver.send_good(1)
    await eventually(lambda: 1 in driver.seqs(driver.sink.offered()), 10, "the reading held")
    t0 = time.monotonic()
    await asyncio.wait_for(driver.stop(), STOP_TIMEOUT + 5)
    took = time.monotonic() - t0
    assert radio <= took < radio + limit - 0.6, f"stop took {took:.2f} s"


def test_every_adapter_gives_up_draining_before_the_supervisor_gives_up_on_stop() -> None:
    # one drain limit for every adapter (the ingest path's), derived from the supervisor's
    # stop timeout, which gives it at stop (tests/test_supervisor.py); behaviour checked
    # quickly (limit shortened) in the tests above
    assert ingest.STOP_TIMEOUT == STOP_TIMEOUT
    assert ingest.DRAIN_TIMEOUT == STOP_TIMEOUT - ingest.STOP_MARGIN > 0
    ctx = AdapterContext(name="x", sink=GateSink(), state_dir=Path("."),
                         metrics=CollectorRegistry())
    assert ctx.drain_timeout == ingest.DRAIN_TIMEOUT


#: drivers whose devices keep every message (an observed resource reports its latest
#: state only, so a refused notification is superseded, not resent)
_EVERY_MESSAGE = [k for k in DRIVERS if k != "coap-observe"]


@cases(_EVERY_MESSAGE)
async def test_refusal_then_recovery_keeps_each_devices_order_and_loses_nothing(
        driver: Driver) -> None:
    await driver.start(**({"retry_for": 60.0} if driver.type == "zigbee" else {}))
    sink = driver.sink
    sink.refusing = True  # the outbox is full
    first = driver.first_seq
    sent = list(range(first, first + 5))
    if not isinstance(driver, SimulatorDriver):
        for seq in sent:
            await driver.send_good(seq)
            if isinstance(driver, CoapDriver):
                # each device request is answered 5.03 at once: it was offered
                await eventually(lambda s=seq: s in driver.seqs(sink.offered()), 10,
                                 f"message {seq} offered")
            else:
                # later messages wait behind the held one, not offered: pace the device
                # so that it sends them one after the other, as a real one does
                await asyncio.sleep(0.05)
    # the held one is being retried (the simulator's device sends on by itself meanwhile)
    await eventually(lambda: len(sink.offered()) >= 2, 10, "retries of the held batch")
    if isinstance(driver, SimulatorDriver):
        await asyncio.sleep(0.5)  # a backlog of its messages builds behind the held one
    assert not driver.seqs(sink.accepted)
    sink.refusing = False  # space again

    def accepted() -> list[Reading]:
        return [r for r in sink.accepted if driver.marker(r) is not None]

    if isinstance(driver, SimulatorDriver):
        await eventually(lambda: len(accepted()) >= 8, 15, "the backlog and new messages")
        got = driver.seqs(accepted())
        # the simulated device kept every message it made while refused: no gap
        assert got == list(range(got[0], got[0] + len(got))), got
    else:
        await eventually(lambda: set(sent) <= set(driver.seqs(accepted())), 20,
                         "every message accepted")
        await asyncio.sleep(0.3)  # a duplicate would show within this
        got = driver.seqs(accepted())
        assert sorted(got) == sent, f"lost or duplicated: {got}"
    by_device: dict[str, list[int]] = {}
    for r in accepted():
        by_device.setdefault(r.device, []).append(driver.seqs([r])[0])
    for device, seqs in by_device.items():
        assert seqs == sorted(seqs), f"{device}: order violated: {seqs}"


@cases(list(DRIVERS))
async def test_a_restarted_adapter_registers_its_metrics_again_and_keeps_working(
        driver: Driver) -> None:
    first = await driver.start()
    await driver.send_good(1)
    await eventually(lambda: 1 in driver.seqs(driver.sink.accepted), 10, "a first message")
    t0 = time.monotonic()
    await asyncio.wait_for(driver.stop(), STOP_BOUND + 5)
    assert time.monotonic() - t0 < STOP_BOUND  # an idle adapter stops promptly
    seen = len(driver.sink.accepted)
    second = await driver.start()  # what the supervisor does: a new instance, same registry
    assert second is not first
    await driver.send_good(2)
    await eventually(lambda: 2 in driver.seqs(driver.sink.accepted[seen:]), 10,
                     "a message after the restart")
    if driver.acknowledges:
        await eventually(lambda: driver.acked(2), 10, "its acknowledgement")


# -- 5. ids, units, types -------------------------------------------------------------------


@cases(list(DRIVERS))
async def test_readings_carry_named_device_ids_senml_units_and_plain_types(
        driver: Driver) -> None:
    adapter = await driver.start()
    assert type(adapter) is adapter_class(driver.type)  # what the daemon would load
    # one at a time: CoAP observe keeps only the latest state
    await driver.send_good(1)
    await eventually(lambda: 1 in driver.seqs(driver.sink.accepted), 10, "message 1")
    await driver.send_good(2)
    await eventually(lambda: 2 in driver.seqs(driver.sink.accepted), 10, "message 2")
    await driver.send_variety()
    readings = driver.sink.accepted
    now = time.time()
    for r in readings:
        assert type(r) is Reading, r
        prefix, sep, native = r.device.partition(":")
        assert (prefix, sep) == (driver.name, ":") and native, r
        assert adapter.owns(r.device), r
        assert SNAKE.match(r.metric), r
        assert type(r.value) in (float, int, bool, str), r
        assert r.unit is None or r.unit in SENML_UNITS, r
        assert type(r.ts) is float and now - 86400 < r.ts <= now + 1, r
    marked = [r for r in readings if driver.marker(r) in (1, 2)]
    assert {r.device for r in marked if driver.marker(r) == 1} == {
        f"{driver.name}:{driver.native(1)}"}
    assert any(r.unit == "Cel" for r in readings)
    assert not adapter.owns(f"{driver.type}:{driver.native(1)}")  # the type is not the name
    assert not adapter.owns(f"{driver.name}x:{driver.native(1)}")
    assert not adapter.owns(driver.native(1))


@cases(["mqtt", "coap"])
async def test_a_unit_outside_senml_in_a_payload_never_reaches_a_reading(
        driver: Driver) -> None:
    await driver.start()
    before = driver.malformed_total()
    await driver.send_unit("furlong", 7)
    await eventually(lambda: driver.malformed_total() > before
                     or 7 in driver.seqs(driver.sink.accepted), 10,
                     "the message refused as malformed or accepted")
    assert [r for r in driver.sink.accepted if r.unit not in SENML_UNITS | {None}] == []


# -- 6. commands to unknown devices ---------------------------------------------------------


@cases(list(DRIVERS))
async def test_command_to_an_unknown_device_is_a_failed_result_not_an_exception(
        driver: Driver) -> None:
    adapter = await driver.start()
    for command in driver.unknown_commands():
        result = await asyncio.wait_for(adapter.send(command), 15)
        assert isinstance(result, CommandResult), (command, result)
        assert result.ok is False and result.status == driver.unknown_status, (command, result)
        assert result.detail, (command, result)
