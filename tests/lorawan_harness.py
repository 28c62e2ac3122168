"""What the LoRaWAN adapter tests give the adapter in place of the daemon's core."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.lorawan import LorawanAdapter
from gateway.adapters.lorawan.config import LorawanConfig
from gateway.reading import Reading
from tests import waiting


class RecordingSink:
    """Accepts (or refuses, while ``refuse`` is set) and keeps what it accepted."""

    def __init__(self) -> None:
        self.accepted: list[Reading] = []
        self.refuse = False
        self.refused_calls = 0
        #: seconds each accept takes, as a group commit does
        self.delay = 0.0

    async def accept(self, readings: Sequence[Reading]) -> bool:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse:
            self.refused_calls += 1
            return False
        self.accepted.extend(readings)
        return True

    def values(self, metric: str, device: str | None = None) -> list[Any]:
        return [r.value for r in self.accepted
                if r.metric == metric and (device is None or r.device == device)]


class RecordingDirectory:
    """Keeps what the adapter declared about devices."""

    def __init__(self) -> None:
        self.declared: dict[str, dict[str, Any]] = {}

    def declare(self, device: str, **info: Any) -> None:
        self.declared[device] = info

    def knows(self, device: str) -> bool:
        return device in self.declared


def make_adapter(state_dir: Path, registry: CollectorRegistry | None = None,
                 sink: RecordingSink | None = None, directory: RecordingDirectory | None = None,
                 name: str = "lora", **config: Any) -> LorawanAdapter:
    cfg = LorawanConfig.model_validate({"type": "lorawan", "name": name, **config})
    ctx = AdapterContext(name=name, sink=sink or RecordingSink(), state_dir=state_dir,
                         metrics=registry or CollectorRegistry(),
                         devices=directory or RecordingDirectory(),
                         log=logging.getLogger(f"gateway.adapter.{name}"))
    return LorawanAdapter(cfg, ctx)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0,  # noqa: ASYNC109
                     what: str = "") -> None:
    """:func:`tests.waiting.eventually` with the LoRaWAN tests' default of 5 s (the name
    and ``timeout`` keyword the LoRaWAN test modules use)."""
    await waiting.eventually(cond, timeout, what)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# An uplink and a status event in the JSON shape ChirpStack v4's integrations document
# (protobuf JSON mapping, camelCase, "+00:00" offsets, enums as names); values are ours.
DOCUMENTED_UP: dict[str, Any] = {
    "deduplicationId": "5b1e0f7a-9c1d-4e2f-8a3b-6c7d8e9f0a1b",
    "time": "2024-03-01T12:00:01.123456789+00:00",
    "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                   "tenantName": "ChirpStack",
                   "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
                   "applicationName": "garden", "deviceProfileId": "x",
                   "deviceProfileName": "LHT65", "deviceName": "greenhouse",
                   "devEui": "0102030405060708", "deviceClassEnabled": "CLASS_A",
                   "tags": {"room": "north"}},
    "devAddr": "00189440", "adr": True, "dr": 3, "fCnt": 42, "fPort": 2,
    "data": "CJgBhg==", "object": {"TempC": 22.0, "battery": {"volts": 3.1}},
    "rxInfo": [{"gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -101,
                "snr": -4.5, "context": "E3OWOQ==", "crcStatus": "CRC_OK",
                "metadata": {"region_config_id": "eu868"}}],
    "txInfo": {"frequency": 867100000, "modulation": {"lora": {
        "bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}}},
    "regionConfigId": "eu868",
}
DOCUMENTED_STATUS: dict[str, Any] = {
    "deduplicationId": "0c2d4e6f-1a3b-4c5d-8e9f-a0b1c2d3e4f5",
    "time": "2024-03-01T12:00:05.5+00:00",
    "deviceInfo": DOCUMENTED_UP["deviceInfo"], "margin": 7, "batteryLevel": 64.2,
}
