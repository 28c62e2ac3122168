"""Keeps adapters running: a crashing adapter is restarted with backoff; others never notice."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

from gateway.adapters.base import Adapter
from gateway.adapters.ingest import STOP_MARGIN, STOP_TIMEOUT
from gateway.core.backoff import Backoff
from gateway.core.tasks import cancel_and_wait
from gateway.reading import Command, CommandResult

log = logging.getLogger("gateway.supervisor")

#: an adapter that ran this long before failing counts as recovered: backoff starts over
HEALTHY_AFTER = 60.0


@dataclass
class AdapterState:
    name: str
    type: str
    state: str = "starting"  # starting | running | backoff | stopped
    restarts: int = 0
    last_error: str | None = None
    since: float = 0.0
    #: UNIX times of the latest restarts, oldest first (health rules count them)
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class Supervisor:
    """Runs each adapter in its own restart loop."""

    def __init__(self, factories: dict[str, tuple[str, Callable[[], Adapter]]],
                 metrics: CollectorRegistry, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, stop_timeout: float = STOP_TIMEOUT) -> None:
        self._factories = factories
        #: how long an adapter's stop() may take; its drain ends STOP_MARGIN s earlier
        self.stop_timeout = stop_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.states = {name: AdapterState(name, t) for name, (t, _) in factories.items()}
        self.adapters: dict[str, Adapter] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._first_start: dict[str, asyncio.Future[None]] = {}
        self._restarts = Counter("gateway_adapter_restarts", "Adapter restarts after a failure",
                                 ["adapter"], registry=metrics)

    async def start(self, wait: float = 5.0) -> None:
        """Start every adapter; wait up to ``wait`` s for their first start to settle."""
        loop = asyncio.get_running_loop()
        for name in self._factories:
            self._first_start[name] = loop.create_future()
            self._loops[name] = loop.create_task(self._run(name), name=f"adapter:{name}")
        if self._first_start:
            await asyncio.wait(list(self._first_start.values()), timeout=wait)

    async def add(self, name: str, type_name: str, factory: Callable[[], Adapter],
                  wait: float = 5.0) -> None:
        """Start one more adapter (a reload added it); wait up to ``wait`` s for its
        first start to settle. A name already running is replaced."""
        if name in self._loops:
            await self.remove(name)
        self._factories[name] = (type_name, factory)
        self.states[name] = AdapterState(name, type_name)
        first = self._first_start[name] = asyncio.get_running_loop().create_future()
        self._loops[name] = asyncio.get_running_loop().create_task(self._run(name),
                                                                    name=f"adapter:{name}")
        await asyncio.wait([first], timeout=wait)

    async def remove(self, name: str) -> None:
        """Stop one adapter, letting it drain what it accepted, and forget it."""
        await self._halt(name, self._loops.pop(name, None))
        log.info("adapter %s stopped", name)
        self._factories.pop(name, None)
        self._first_start.pop(name, None)
        self.states.pop(name, None)

    async def _run(self, name: str) -> None:
        type_name, factory = self._factories[name]
        st = self.states[name]
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        first = self._first_start[name]
        while True:
            st.state, st.since = "starting", time.time()
            adapter: Adapter | None = None
            try:
                adapter = factory()
                await adapter.start()
                self.adapters[name] = adapter
                st.state, st.since = "running", time.time()
                log.info("adapter %s (%s) running", name, type_name)
                if not first.done():
                    first.set_result(None)
                exc = await adapter.failed
                raise exc
            except asyncio.CancelledError:
                if adapter is not None and self.adapters.get(name) is not adapter:
                    # cancelled in the middle of start(): what it set up so far (tasks,
                    # connections, a serial port) is released here, as nobody else knows it
                    await self._stop_quietly(name, adapter)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means restart
                ran = time.time() - st.since if st.state == "running" else 0.0
                st.last_error = f"{type(exc).__name__}: {exc}"
                self.adapters.pop(name, None)
                if adapter is not None:
                    await self._stop_quietly(name, adapter)
                if ran >= HEALTHY_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                st.restarts += 1
                st.restart_times.append(time.time())
                self._restarts.labels(name).inc()
                st.state, st.since = "backoff", time.time()
                log.error("adapter %s (%s) failed: %s; restarting in %.1f s (restart %d)",
                          name, type_name, st.last_error, delay, st.restarts,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(delay)

    async def _stop_quietly(self, name: str, adapter: Adapter) -> None:
        # the adapter's drain ends by the deadline given here, leaving the margin for
        # the rest of its stop (disconnecting, closing files) within the wait below
        adapter.ingest.begin_stop(self.stop_timeout - STOP_MARGIN)
        try:
            await asyncio.wait_for(adapter.stop(), self.stop_timeout)
        except Exception as exc:  # noqa: BLE001
            log.warning("adapter %s did not stop cleanly: %s", name, exc)

    async def _halt(self, name: str, loop: asyncio.Task[None] | None) -> None:
        """End adapter ``name``'s restart loop, then stop the instance it runs (drained)."""
        await cancel_and_wait(loop)
        adapter = self.adapters.pop(name, None)
        if adapter is not None:
            await self._stop_quietly(name, adapter)

    async def stop(self) -> None:
        """Stop every adapter (reverse order), letting each drain what it accepted."""
        for name in reversed(list(self._loops)):
            await self._halt(name, self._loops[name])
            self.states[name].state = "stopped"
        self._loops.clear()

    def owner_of(self, device: str) -> Adapter | None:
        """The running adapter that owns ``device``."""
        for adapter in self.adapters.values():
            if adapter.owns(device):
                return adapter
        return None

    async def send(self, command: Command) -> CommandResult:
        """Route a command to the adapter that owns its device."""
        adapter = self.owner_of(command.device)
        if adapter is None:
            prefix = command.device.split(":", 1)[0]
            if prefix in self.states:
                return CommandResult.refused(
                    f"adapter {prefix!r} is {self.states[prefix].state}; try again later")
            return CommandResult(False, "unknown_device",
                                 f"no adapter owns device {command.device!r}")
        try:
            return await adapter.send(command)
        except Exception as exc:  # noqa: BLE001 - a failing command is a result, not a crash
            log.warning("command %s to %s failed: %s", command.action, command.device, exc)
            return CommandResult.error(f"{type(exc).__name__}: {exc}")
