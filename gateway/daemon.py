"""``gateway run``: start store → uplink → core → adapters → control API; stop in reverse.

Each component is an async context manager entered on one exit stack, so teardown runs
in reverse order and every component gets its turn even when another fails to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.adapters.base import Adapter, AdapterContext
from gateway.adapters.registry import adapter_class
from gateway.adapters.supervisor import Supervisor
from gateway.config.model import ConfigError, GatewayConfig, load_config
from gateway.core.pipeline import AdapterSink, Pipeline, SinkCounters
from gateway.core.registry import DeviceRegistry
from gateway.logs import setup_logging
from gateway.notify import Notifier
from gateway.rules.runtime import rules_and_filters
from gateway.store.outbox import Outbox
from gateway.uplink.client import Uplink

log = logging.getLogger("gateway")


class StateLock:
    """One daemon per state directory: two writers would corrupt the outbox and registry."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "gateway.lock"
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(f"another gateway (pid {holder}) is running on state directory "
                               f"{self.path.parent}; stop it first or use another "
                               "gateway.state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


class Gateway:
    """The running daemon: every component, reachable from the control API."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = CollectorRegistry()
        self.started_at = time.time()
        self.ready = False
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None
        self.supervisor: Supervisor | None = None
        self.devices: Any = None  # device registry, when present
        self.api: Any = None  # control API server, when enabled
        self._api_import: asyncio.Future[Any] | None = None
        self.components: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()

    # -- components, in start order -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _store(self) -> AsyncIterator[None]:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with StateLock(self.config.state_dir):
            self.outbox = await Outbox.open(self.config.outbox_path, self.config.store,
                                            metrics=self.metrics)
            try:
                yield
            finally:
                await self.outbox.close()

    @contextlib.asynccontextmanager
    async def _uplink(self) -> AsyncIterator[None]:
        assert self.outbox is not None
        if not self.config.uplink.enabled:
            log.warning("uplink disabled: readings stay in the outbox (bounded by store.max_bytes"
                        " and store.max_age)")
            yield
            return
        self.uplink = Uplink(self.config.uplink, self.config.gateway.id, self.outbox,
                             metrics=self.metrics)
        await self.uplink.start()
        try:
            yield
        finally:
            await self.uplink.stop()

    @contextlib.asynccontextmanager
    async def _core(self) -> AsyncIterator[None]:
        assert self.outbox is not None

        def observer_failed(name: str, exc: BaseException) -> None:
            log.error("observer %s failed: %s: %s", name, type(exc).__name__, exc)

        self.pipeline = Pipeline(self.outbox, observer_failed, self.config.readings.limits())
        registry = DeviceRegistry(self.config.devices, self.config.state_dir / "devices.json",
                                  self.metrics, events=self.outbox.append_event)
        await registry.start()
        self.pipeline.add_observer(registry.observe)
        self.pipeline.screen = registry.screen
        self.devices = registry
        try:
            async with rules_and_filters(self):
                yield
        finally:
            await registry.stop()

    @contextlib.asynccontextmanager
    async def _adapters(self) -> AsyncIterator[None]:
        assert self.pipeline is not None
        counters = SinkCounters(self.metrics)
        factories: dict[str, tuple[str, Callable[[], Adapter]]] = {}
        for cfg in self.config.adapters:
            if not cfg.enabled:
                log.info("adapter %s (%s) disabled in config", cfg.name, cfg.type)
                continue
            cls = adapter_class(cfg.type)
            ctx = AdapterContext(
                name=cfg.name,
                sink=AdapterSink(self.pipeline, cfg.name, counters),
                state_dir=self.config.state_dir,
                metrics=self.metrics,
                log=logging.getLogger(f"gateway.adapter.{cfg.name}"),
            )
            if self.devices is not None:
                ctx.devices = self.devices

            def factory(cls: Any = cls, cfg: Any = cfg, ctx: AdapterContext = ctx) -> Adapter:
                return cls(cfg, ctx)  # type: ignore[no-any-return]

            factories[cfg.name] = (cfg.type, factory)
        self.supervisor = Supervisor(factories, self.metrics)
        if self.uplink is not None:
            self.uplink.on_command = self.supervisor.send  # cloud downlink commands
        await self.supervisor.start()
        try:
            yield
        finally:
            await self.supervisor.stop()

    @contextlib.asynccontextmanager
    async def _homeassistant(self) -> AsyncIterator[None]:
        from gateway.homeassistant import homeassistant

        async with homeassistant(self) as bridge:
            self.components["homeassistant"] = bridge
            yield

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[None]:
        if not self.config.api.enabled:
            log.info("control API disabled in config: gateway status/devices/pair will not work")
            yield
            return
        server = await (self._api_import
                        or asyncio.to_thread(importlib.import_module, "gateway.api.server"))
        self.api = server.ApiServer(self)
        await self.api.start()
        try:
            yield
        finally:
            await self.api.stop()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.monotonic()
        if self.config.api.enabled:
            # importing aiohttp takes ~0.3 s (it reads TLS certificates from disk): a thread
            # does it while the store opens and the adapters connect, off the event loop
            self._api_import = asyncio.ensure_future(
                asyncio.to_thread(importlib.import_module, "gateway.api.server"))
        try:
            for name, component in (("store", self._store), ("uplink", self._uplink),
                                    ("core", self._core), ("adapters", self._adapters),
                                    ("homeassistant", self._homeassistant),
                                    ("api", self._api)):
                await self._stack.enter_async_context(component())
                log.debug("%s started", name)
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = True
        # what start-up built lives as long as the daemon: keep the garbage collector from
        # walking it again and again (a fifth of the CPU on busy adapters)
        gc.freeze()
        log.info("gateway %s ready in %.2f s (%d adapter(s), config %s)", self.config.gateway.id,
                 time.monotonic() - t0, len(self.config.adapters), self.config.source)

    async def stop(self) -> None:
        self.ready = False
        log.info("gateway stopping")
        await self._stack.aclose()
        log.info("gateway stopped")


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gw = Gateway(config)
    notifier = Notifier()
    # pings come from this loop: if it stalls, they stop and systemd restarts the service
    notifier.start_watchdog()
    try:
        await gw.start()
        notifier.ready(f"running {len(config.adapters)} adapter(s)")
        if gw.api is not None:
            notifier.start_status(gw.api.status_line)
        try:
            await stop.wait()
        finally:
            notifier.stopping()
            await gw.stop()
    finally:
        await notifier.close()


def run(config_path: str) -> int:
    """Entry point of ``gateway run``."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        setup_logging("info")
        for line in exc.problems:
            log.error("config: %s", line)
        return 2
    setup_logging(config.gateway.log_level)
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - last resort: one readable line, then exit
        log.critical("gateway failed: %s: %s", type(exc).__name__, exc,
                     exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1]))
