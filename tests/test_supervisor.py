"""The supervisor: a crashing adapter is restarted with backoff; the others never notice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.adapters.supervisor import Supervisor
from gateway.reading import Command, CommandResult, Reading
from tests.waiting import eventually


class RecordingSink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def accept(self, readings: Sequence[Reading]) -> bool:
        self.readings.extend(readings)
        return True


class Ticker(Adapter):
    """Pushes one reading every 10 ms."""

    async def start(self) -> None:
        self.spawn(self._tick())

    async def _tick(self) -> None:
        i = 0
        while True:
            await self.ctx.sink.accept([Reading(f"{self.prefix}:t", "seq", i, None, time.time())])
            i += 1
            await asyncio.sleep(0.01)

    async def send(self, command: Command) -> CommandResult:
        return CommandResult.delivered()


class Crasher(Adapter):
    """Runs for 50 ms, then its background task raises."""

    starts = 0

    async def start(self) -> None:
        type(self).starts += 1
        self.spawn(self._boom())

    async def _boom(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("radio went away")

    async def send(self, command: Command) -> CommandResult:
        raise RuntimeError("not connected")


class Hanger(Adapter):
    """Starts a background task, then hangs in start() (a radio that never answers)."""

    started = asyncio.Event()
    stopped = False
    background: asyncio.Task[None] | None = None

    async def start(self) -> None:
        type(self).background = self.spawn(asyncio.sleep(3600))
        type(self).started.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        type(self).stopped = True
        await super().stop()

    async def send(self, command: Command) -> CommandResult:
        return CommandResult.delivered()


def factory(cls: type[Adapter], name: str, sink: RecordingSink, reg: CollectorRegistry,
            tmp: Path):  # type: ignore[no-untyped-def]
    ctx = AdapterContext(name=name, sink=sink, state_dir=tmp, metrics=reg)
    return (name, (name, lambda: cls(AdapterConfig(type=name, name=name), ctx)))


async def test_a_crashing_adapter_is_restarted_with_backoff_while_others_run(
        tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    reg = CollectorRegistry()
    sink = RecordingSink()
    Crasher.starts = 0
    sup = Supervisor(dict([factory(Ticker, "ticker", sink, reg, tmp_path),
                           factory(Crasher, "crasher", sink, reg, tmp_path)]), reg,
                     backoff_initial=0.05, backoff_max=0.2)
    await sup.start()

    def restarts() -> float:
        return reg.get_sample_value("gateway_adapter_restarts_total",
                                    {"adapter": "crasher"}) or 0.0

    # backoff 0.05 s doubling to 0.2 s and a crash 0.05 s after each start: three restarts
    # take about half a second; the ticker keeps sending meanwhile
    await eventually(lambda: restarts() >= 3 and Crasher.starts >= 3, 10,
                     "three restarts of the crashing adapter")
    await eventually(lambda: len(sink.readings) > 50, 10, "the ticker's readings")
    assert sup.states["crasher"].last_error == "RuntimeError: radio went away"
    assert sup.states["ticker"].state == "running" and sup.states["ticker"].restarts == 0
    seqs = [r.value for r in sink.readings if r.device == "ticker:t"]
    assert seqs == list(range(len(seqs))) and len(seqs) > 50  # never interrupted
    assert "adapter crasher (crasher) failed: RuntimeError: radio went away" in caplog.text
    await sup.stop()
    assert all(s.state == "stopped" for s in sup.states.values())


async def test_backoff_delays_grow_and_stay_jittered_under_the_cap() -> None:
    from gateway.core.backoff import Backoff

    b = Backoff(initial=1.0, maximum=8.0)
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[0] <= 1.0 and max(delays[4:]) > 2.0
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next_delay() <= 1.0


async def test_commands_reach_the_owning_adapter_and_failures_are_results(
        tmp_path: Path) -> None:
    reg = CollectorRegistry()
    sink = RecordingSink()
    sup = Supervisor(dict([factory(Ticker, "ticker", sink, reg, tmp_path)]), reg)
    await sup.start()
    assert (await sup.send(Command("ticker:t", "on"))).status == "delivered"
    unknown = await sup.send(Command("zigbee:00:11", "on"))
    assert unknown.status == "unknown_device" and not unknown.ok
    await sup.stop()


async def test_an_adapter_stopped_in_the_middle_of_its_start_is_released(
        tmp_path: Path) -> None:
    reg = CollectorRegistry()
    Hanger.started, Hanger.stopped, Hanger.background = asyncio.Event(), False, None
    sup = Supervisor(dict([factory(Hanger, "hanger", RecordingSink(), reg, tmp_path)]), reg)
    starting = asyncio.ensure_future(sup.start(wait=30))
    await asyncio.wait_for(Hanger.started.wait(), 10)
    await sup.stop()
    assert Hanger.stopped  # its stop() ran although start() never returned
    assert Hanger.background is not None and Hanger.background.cancelled()
    starting.cancel()


class GateSink:
    """Accepts nothing until ``gate`` is set: a store that hangs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def accept(self, readings: Sequence[Reading]) -> bool:
        await self.gate.wait()
        return True


class Pusher(Adapter):
    """Pushes one reading in the background; records the drain time its stop() was given."""

    given: list[float] = []

    async def start(self) -> None:
        self.spawn(self.accept([Reading(f"{self.prefix}:p", "seq", 0, None, time.time())]))

    async def stop(self) -> None:
        type(self).given.append(self.ingest.remaining())
        await super().stop()

    async def send(self, command: Command) -> CommandResult:
        return CommandResult.delivered()


async def test_the_supervisor_gives_the_adapter_its_stop_deadline(tmp_path: Path) -> None:
    from gateway.adapters import ingest

    # the adapter's own drain limit is far longer than the supervisor's stop timeout: the
    # drain must still end by the deadline the supervisor gives, less its margin
    reg = CollectorRegistry()
    sink = GateSink()
    ctx = AdapterContext(name="pusher", sink=sink, state_dir=tmp_path, metrics=reg,
                         drain_timeout=60.0)
    Pusher.given = []
    stop_timeout = ingest.STOP_MARGIN + 1.0
    sup = Supervisor({"pusher": ("pusher", lambda: Pusher(AdapterConfig(type="pusher"), ctx))},
                     reg, stop_timeout=stop_timeout)
    await sup.start()
    adapter = sup.adapters["pusher"]
    await eventually(lambda: adapter.ingest.busy == 1, 5, "the reading at the hung store")
    t0 = time.monotonic()
    await sup.stop()
    took = time.monotonic() - t0
    assert len(Pusher.given) == 1 and 0.8 <= Pusher.given[0] <= 1.0, Pusher.given
    assert 0.9 <= took < 1.0 + ingest.STOP_MARGIN / 2, f"stop took {took:.2f} s"
    assert ingest.DRAIN_TIMEOUT == ingest.STOP_TIMEOUT - ingest.STOP_MARGIN > 0
