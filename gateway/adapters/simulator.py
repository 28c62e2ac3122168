"""``type: simulator``: virtual devices emitting plausible readings, for demos and benchmarks."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Literal

from pydantic import Field

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.config.types import Duration
from gateway.reading import Command, CommandResult, Reading

#: metric → (unit, base, daily swing, noise, decimals)
PROFILES: dict[str, tuple[str | None, float, float, float, int]] = {
    "temperature": ("Cel", 21.0, 3.0, 0.15, 2),
    "humidity": ("%RH", 45.0, 8.0, 0.6, 1),
    "pressure": ("Pa", 101_325.0, 400.0, 15.0, 0),
    "illuminance": ("lx", 300.0, 280.0, 10.0, 0),
    "power": ("W", 60.0, 40.0, 5.0, 1),
    "battery": ("%EL", 100.0, 0.0, 0.0, 0),
}
#: at most this many messages go to the sink in one call
_BATCH = 64
#: batches awaiting their commit at once
_WINDOW = 256
#: the emitter wakes at most this often
_TICK = 0.002
#: how long stop() waits for batches being committed

Metric = Literal["temperature", "humidity", "pressure", "illuminance", "power", "battery", "seq"]


class SimulatorConfig(AdapterConfig):
    devices: int = Field(default=5, ge=1, le=100_000)
    interval: Duration = Field(default=5.0, gt=0, le=86400,
                               description="seconds between a device's messages")
    metrics: list[Metric] = Field(
        default_factory=lambda: ["temperature", "humidity", "battery"])  # type: ignore[arg-type]
    device_prefix: str = "sim-"
    seed: int | None = None
    #: stop after this many messages per device (benchmarks); 0 = run forever
    count: int = Field(default=0, ge=0, le=10**12)


class _Device:
    __slots__ = ("id", "phase", "battery", "seq", "on")

    def __init__(self, device_id: str, rng: random.Random) -> None:
        self.id = device_id
        self.phase = rng.uniform(0, 2 * math.pi)
        self.battery = rng.uniform(60, 100)
        self.seq = 0
        self.on = True


class SimulatorAdapter(Adapter):
    """N devices, each sending one message (its metrics) every ``interval`` seconds."""

    Config = SimulatorConfig
    config: SimulatorConfig

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(config, ctx)
        assert isinstance(config, SimulatorConfig)
        self._rng = random.Random(config.seed)
        width = len(str(config.devices))
        ids = (f"{self.prefix}:{config.device_prefix}{i + 1:0{width}d}"
               for i in range(config.devices))
        self._state = {d: _Device(d, self._rng) for d in ids}
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # after a refusal, batches are offered again one at a time in the order they were
        # made (the lock is first come, first served), and later ones queue behind them

    async def start(self) -> None:
        for device in self._state:
            self.ctx.devices.declare(device, type="simulated", model="simulator")
        self.spawn(self._emit(), name=f"{self.prefix}:emit")

    def _message(self, dev: _Device, ts: float) -> list[Reading]:
        wave = math.sin(2 * math.pi * ((ts % 86400) / 86400) + dev.phase)
        rand = self._rng.random
        out = []
        for metric in self.config.metrics:
            if metric == "seq":
                out.append(Reading(dev.id, "seq", dev.seq, None, ts))
                continue
            unit, base, swing, noise, decimals = PROFILES[metric]
            if metric == "battery":
                dev.battery = max(0.0, dev.battery - 0.001)
                value: float = round(dev.battery)
            elif metric == "power" and not dev.on:
                value = 0.0
            else:
                value = base + swing * wave + (rand() - 0.5) * 2 * noise
                if metric in ("illuminance", "power"):
                    value = max(0.0, value)
                value = round(value, decimals)
            out.append(Reading(dev.id, metric, value, unit, ts))
        dev.seq += 1
        return out

    async def _emit(self) -> None:
        devices = list(self._state.values())
        n = len(devices)
        step = self.config.interval / n  # devices are spread evenly over the interval
        limit = self.config.count
        total = limit * n if limit else 0
        # many simulated devices share one clock tick; the messages due in a tick go to the
        # sink together (up to _BATCH per call) and several calls may await their commit at
        # once, as independent devices would
        window = asyncio.Semaphore(_WINDOW)
        start = time.monotonic()
        emitted = 0
        while not self._stopping.is_set():
            due = int((time.monotonic() - start) / step) + 1 - emitted
            if total:
                due = min(due, total - emitted)
            while due > 0 and not self._stopping.is_set():
                ts = time.time()
                batch: list[Reading] = []
                count = min(due, _BATCH)
                for k in range(count):
                    batch.extend(self._message(devices[(emitted + k) % n], ts))
                emitted += count
                due -= count
                await window.acquire()
                task = self.spawn(self._submit(batch, window))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if total and emitted >= total:
                if self._inflight:  # the log line below means every message is durable
                    await asyncio.wait(list(self._inflight))
                self.log.info("simulator %s: all %d messages per device sent", self.prefix,
                              limit)
                return
            next_at = start + emitted * step
            await asyncio.sleep(max(_TICK, next_at - time.monotonic()))

    async def _submit(self, readings: list[Reading], window: asyncio.Semaphore) -> None:
        try:
            # a refusal means the store is full or failing: the devices keep their messages
            # and send them again, as real ones would, and a later one never overtakes
            await self.accept(readings)
        finally:
            window.release()

    async def stop(self) -> None:
        """Stop emitting; let batches already handed to the sink finish their commit."""
        self._stopping.set()
        self.ingest.stop_retrying()
        await super().stop()  # batches at the sink finish within the drain limit

    async def send(self, command: Command) -> CommandResult:
        dev = self._state.get(command.device)
        if dev is None:
            return CommandResult(False, "unknown_device", f"no simulated device {command.device}")
        if command.action in ("on", "off", "toggle"):
            dev.on = {"on": True, "off": False}.get(command.action, not dev.on)
            return CommandResult.delivered(f"power {'on' if dev.on else 'off'}")
        if command.action == "level":
            level = command.params.get("level")
            if not isinstance(level, (int, float)) or isinstance(level, bool) \
                    or not 0 <= level <= 100:
                return CommandResult.refused("level: expected a percentage from 0 to 100")
            dev.on = level > 0
            return CommandResult.delivered(f"level {level:g} %")
        return CommandResult.unsupported(
            "simulated devices understand on, off, toggle and level, "
            f"not {command.action!r}")
