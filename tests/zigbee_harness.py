"""Shared set-up of the Zigbee tests: the real pipeline, outbox and registry, one adapter.

Only the radio is virtual (``tests.zigbee_virtual``); readings go through the real
``Pipeline`` into a real SQLite ``Outbox``, and devices into the real ``DeviceRegistry``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.adapters.zigbee.config import ZigbeeConfig
from gateway.core.config import DevicesSection
from gateway.core.pipeline import AdapterSink, Pipeline, SinkCounters
from gateway.core.registry import DeviceRegistry
from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests import waiting
from tests import zigbee_virtual as zv

_names = itertools.count(1)


async def wait_for(cond: Callable[[], Any], within: float = 5.0, what: str = "condition") -> Any:
    """:func:`tests.waiting.eventually` with the Zigbee tests' default of 5 s (the name
    the Zigbee test modules import from here); returns ``cond``'s truthy value."""
    return await waiting.eventually(cond, within, what)


class Harness:
    """A gateway core (outbox, registry, pipeline) and Zigbee adapters on one state dir."""

    def __init__(self, tmp: Path, devices: DevicesSection | None = None) -> None:
        self.tmp = tmp
        self.devices_config = devices or DevicesSection()
        self.state_dir = tmp / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = CollectorRegistry()
        self.net_name = f"{tmp.name}-{next(_names)}"
        self.outbox: Outbox | None = None
        self.registry: DeviceRegistry | None = None
        self.pipeline: Pipeline | None = None
        self.counters = SinkCounters(self.metrics)
        self.adapters: list[ZigbeeAdapter] = []
        #: wraps the pipeline's accept (to stand in for a full store); None = pass through
        self.refuse: Callable[[Sequence[Reading]], bool] | None = None

    @property
    def net(self) -> zv.VirtualNetwork:
        return zv.network(self.net_name)

    async def start_core(self) -> None:
        self.outbox = await Outbox.open(self.state_dir / "outbox.db",
                                        StoreConfig(commit_interval=0.005, synchronous="normal"),
                                        metrics=self.metrics)
        self.registry = DeviceRegistry(self.devices_config, self.state_dir / "devices.json",
                                       self.metrics, events=self.outbox.append_event)
        await self.registry.start()
        self.pipeline = Pipeline(self.outbox)
        self.pipeline.observers.append(self.registry.observe)
        accept = self.pipeline.accept

        async def gated(readings: Sequence[Reading]) -> bool:
            if self.refuse is not None and self.refuse(readings):
                return False
            return await accept(readings)

        self.pipeline.accept = gated  # type: ignore[method-assign]

    def adapter(self, name: str = "zigbee", **options: Any) -> ZigbeeAdapter:
        assert self.pipeline is not None and self.registry is not None
        cfg = ZigbeeConfig(type="zigbee", name=name, radio_type=zv.RADIO_TYPE,
                           port=f"virtual://{self.net_name}", channel=15,
                           **{"backup_interval": 3600.0, **options})
        ctx = AdapterContext(name=name, sink=AdapterSink(self.pipeline, name, self.counters),
                             state_dir=self.state_dir, metrics=self.metrics,
                             devices=self.registry)
        adapter = ZigbeeAdapter(cfg, ctx)
        self.adapters.append(adapter)
        return adapter

    async def started(self, name: str = "zigbee", **options: Any) -> ZigbeeAdapter:
        adapter = self.adapter(name, **options)
        await adapter.start()
        return adapter

    async def readings(self) -> list[Reading]:
        assert self.outbox is not None
        rows = await self.outbox.read_telemetry(0, 1_000_000)
        return [r for row in rows for r in row.readings]

    async def wait_reading(self, device: str, metric: str, value: Any = None,
                           within: float = 5.0) -> Reading:
        """The newest committed reading of ``metric`` (equal to ``value`` if given)."""

        async def found() -> list[Reading]:
            return [r for r in await self.readings() if r.device == device
                    and r.metric == metric and (value is None or r.value == value)]

        try:
            matches: list[Reading] = await waiting.eventually(
                found, within, f"{metric}={value!r} of {device}")
        except AssertionError:
            seen = sorted({(r.metric, r.value) for r in await self.readings()
                           if r.device == device})
            raise AssertionError(f"no reading {metric}={value!r} of {device} in {within:g} s; "
                                 f"seen {seen}") from None
        return matches[-1]

    async def pair(self, adapter: ZigbeeAdapter, device: zv.VirtualDevice,
                   state: str = "configured", within: float = 10.0) -> str:
        """Open joining, let ``device`` join, wait for its interview ``state``; its id."""
        await adapter.permit_join(60)
        assert self.net.join(device), "device could not join"
        dev_id = f"{adapter.prefix}:{device.ieee}"
        assert self.registry is not None
        registry = self.registry
        await wait_for(lambda: (registry.get(dev_id) or {}).get("interview") == state,
                       within, f"{dev_id} to be {state}")
        return dev_id

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def close(self) -> None:
        for adapter in self.adapters:
            if adapter.app is not None:
                await adapter.stop()
        if self.registry is not None:
            await self.registry.stop()
        if self.outbox is not None:
            await self.outbox.close()
        zv.NETWORKS.pop(self.net_name, None)

