"""``gateway run``: start store → uplink → core → adapters → control API; stop in reverse.

Each component is an async context manager entered on one exit stack, so teardown runs
in reverse order and every component gets its turn even when another fails to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
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
from gateway.reload import ReloadResult, plan
from gateway.rules.runtime import RulesRuntime, rules_and_filters
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
        self.rules: RulesRuntime | None = None
        self._sink_counters: SinkCounters | None = None
        self._uplink_kept: Uplink | None = None  # a disabled uplink, kept for its metrics
        #: components a reload can restart on their own: name → (exit stack, observers
        #: they hooked into the pipeline)
        self._parts: dict[str, tuple[contextlib.AsyncExitStack, list[Any]]] = {}
        self._restartable_started: set[str] = set()
        self._reload_lock = asyncio.Lock()
        self._started = asyncio.Event()

    def restartable(self) -> dict[str, tuple[tuple[str, ...],
                                             Callable[[], AbstractAsyncContextManager[None]]]]:
        """Components a reload restarts when one of their config sections changed:
        name → (top-level sections, the component). A new component hooks in here."""
        return {"homeassistant": (("homeassistant",), self._homeassistant)}

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
        else:
            await self._start_uplink()
        try:
            yield
        finally:
            if self.uplink is not None:  # a reload may have enabled or disabled it
                await self.uplink.stop()

    async def _start_uplink(self) -> None:
        assert self.outbox is not None
        uplink = self._uplink_kept
        if uplink is None:
            uplink = Uplink(self.config.uplink, self.config.gateway.id, self.outbox,
                            metrics=self.metrics)
        else:
            uplink.reconfigure(self.config.uplink)
        self._uplink_kept = None
        if self.supervisor is not None:
            uplink.on_command = self.supervisor.send
        self.uplink = uplink
        await uplink.start()

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
            async with rules_and_filters(self) as rules:
                self.rules = rules
                yield
        finally:
            await registry.stop()

    @contextlib.asynccontextmanager
    async def _adapters(self) -> AsyncIterator[None]:
        assert self.pipeline is not None
        factories: dict[str, tuple[str, Callable[[], Adapter]]] = {}
        for cfg in self.config.adapters:
            if not cfg.enabled:
                log.info("adapter %s (%s) disabled in config", cfg.name, cfg.type)
                continue
            factories[cfg.name] = self._adapter_factory(cfg)
        self.supervisor = Supervisor(factories, self.metrics)
        if self.uplink is not None:
            self.uplink.on_command = self.supervisor.send  # cloud downlink commands
        await self.supervisor.start()
        try:
            yield
        finally:
            await self.supervisor.stop()

    def _adapter_factory(self, cfg: Any) -> tuple[str, Callable[[], Adapter]]:
        """The supervisor's entry for one adapter section: its type and a constructor."""
        assert self.pipeline is not None
        if self._sink_counters is None:
            self._sink_counters = SinkCounters(self.metrics)
        cls = adapter_class(cfg.type)
        ctx = AdapterContext(
            name=cfg.name,
            sink=AdapterSink(self.pipeline, cfg.name, self._sink_counters),
            state_dir=self.config.state_dir,
            metrics=self.metrics,
            log=logging.getLogger(f"gateway.adapter.{cfg.name}"),
        )
        if self.devices is not None:
            ctx.devices = self.devices

        def factory(cls: Any = cls, cfg: Any = cfg, ctx: AdapterContext = ctx) -> Adapter:
            return cls(cfg, ctx)  # type: ignore[no-any-return]

        return cfg.type, factory

    @contextlib.asynccontextmanager
    async def _homeassistant(self) -> AsyncIterator[None]:
        from gateway.homeassistant import homeassistant

        async with homeassistant(self) as bridge:
            self.components["homeassistant"] = bridge
            yield

    @contextlib.asynccontextmanager
    async def _history(self) -> AsyncIterator[None]:
        from gateway.history import history

        async with history(self):
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
                                    ("core", self._core), ("history", self._history),
                                    ("adapters", self._adapters),
                                    ("homeassistant", self._homeassistant),
                                    ("api", self._api)):
                part = self.restartable().get(name)
                await self._stack.enter_async_context(
                    self._restartable_part(name, part[1]) if part else component())
                log.debug("%s started", name)
        except BaseException:
            await self._stack.aclose()
            raise
        self.ready = True
        self._started.set()
        # what start-up built lives as long as the daemon: keep the garbage collector from
        # walking it again and again (a fifth of the CPU on busy adapters)
        gc.freeze()
        log.info("gateway %s ready in %.2f s (%d adapter(s), config %s)", self.config.gateway.id,
                 time.monotonic() - t0, len(self.config.adapters), self.config.source)

    # -- components a reload restarts ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _restartable_part(
            self, name: str,
            component: Callable[[], AbstractAsyncContextManager[None]]) -> AsyncIterator[None]:
        await self._start_part(name, component)
        self._restartable_started.add(name)
        try:
            yield
        finally:
            await self._stop_part(name)

    async def _start_part(self, name: str,
                          component: Callable[[], AbstractAsyncContextManager[None]]) -> None:
        before = list(self.pipeline.observers) if self.pipeline is not None else []
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(component())
        added = [o for o in (self.pipeline.observers if self.pipeline is not None else [])
                 if o not in before]
        self._parts[name] = (stack, added)

    async def _stop_part(self, name: str) -> None:
        entry = self._parts.pop(name, None)
        if entry is None:  # a reload's restart of it failed: nothing runs
            return
        stack, added = entry
        try:
            await stack.aclose()
        finally:
            # undo exactly what set-up hooked: a restarted part must not observe twice
            for observe in added:
                if self.pipeline is not None:
                    self.pipeline.replace_observer(observe, None)

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Read and validate the config file again and apply what changed, in place.

        An invalid file changes nothing: its problems are logged (one line each) and
        returned. Sections that need a restart are reported and left as they were.
        """
        await self._started.wait()
        async with self._reload_lock:
            source = self.config.source
            try:
                new = await asyncio.to_thread(load_config, source)
            except ConfigError as exc:
                result = ReloadResult(source, problems=list(exc.problems))
                for line in exc.problems:
                    log.error("config: %s", line)
                log.error("%s", result.summary())
                return result
            result = await self._apply(new)
            (log.warning if result.failed or result.restart_needed else log.info)(
                "%s", result.summary())
            return result

    async def _apply(self, new: GatewayConfig) -> ReloadResult:
        p = plan(self.config, new)
        result = ReloadResult(new.source, restart_needed=p.restart_needed)
        for key in p.restart_needed:
            log.warning("reload: %s changed; it needs a restart (systemctl restart gateway) "
                        "and is left as it was", key)
        old, self.config = self.config, p.config

        async def step(what: str, action: Callable[[], Any]) -> None:
            try:
                done = action()
                if asyncio.iscoroutine(done):
                    done = await done
            except Exception as exc:  # noqa: BLE001 - one part failing leaves the others applied
                log.error("reload: %s could not be applied: %s: %s", what,
                          type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                result.failed.append(what)
                return
            if done is not False:
                result.changed.append(done if isinstance(done, str) else what)

        cfg = self.config
        if old.gateway.log_level != cfg.gateway.log_level:
            await step("gateway.log_level", lambda: setup_logging(cfg.gateway.log_level))
        if p.changed("readings") and self.pipeline is not None:
            pipeline = self.pipeline
            await step("readings", lambda: setattr(pipeline, "limits", cfg.readings.limits()))
        if p.changed("devices") and isinstance(self.devices, DeviceRegistry):
            devices = self.devices
            await step("devices", lambda: devices.reconfigure(cfg.devices))
        if {"rules", "filters", "health"} & p.sections and self.rules is not None:
            rules = self.rules

            async def apply_rules() -> str | bool:
                parts = await rules.reload(cfg)
                return ", ".join(parts) if parts else False
            await step("rules", apply_rules)
        if p.changed("uplink"):
            await step("uplink", self._reload_uplink)
        if self.supervisor is not None:
            sup = self.supervisor
            adapter_sections = {a.name: a for a in cfg.adapters}

            async def start(name: str) -> None:
                await sup.add(name, *self._adapter_factory(adapter_sections[name]))

            # only adapters whose own section changed restart; the others are not touched
            for name in p.adapters_removed:
                await step(f"adapter {name} removed", functools.partial(sup.remove, name))
            for name in p.adapters_changed:
                await step(f"adapter {name} restarted", functools.partial(start, name))
            for name in p.adapters_added:
                await step(f"adapter {name} added", functools.partial(start, name))
        for name, (sections, component) in self.restartable().items():
            # a part whose earlier restart failed (not in _parts) is started again
            if set(sections) & p.sections and name in self._restartable_started:
                async def restart(name: str = name, component: Any = component) -> None:
                    await self._stop_part(name)
                    await self._start_part(name, component)
                await step(f"{name} restarted", restart)
        return result

    async def _reload_uplink(self) -> str:
        cfg = self.config.uplink
        if not cfg.enabled:
            if self.uplink is None:
                return "uplink (still disabled)"
            await self.uplink.stop()
            self._uplink_kept, self.uplink = self.uplink, None
            log.warning("uplink disabled: readings stay in the outbox")
            return "uplink disabled"
        if self.uplink is None:
            await self._start_uplink()
            return "uplink enabled"
        if self.uplink.reconfigure(cfg):
            return "uplink reconnects"
        return "uplink options (in place)"

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
    reloads: set[asyncio.Task[ReloadResult]] = set()

    def on_sighup() -> None:
        # systemctl reload: read the config again (once started); never a reason to exit
        log.info("SIGHUP: reloading %s%s", config.source,
                 "" if gw.ready else " once started")
        task = loop.create_task(gw.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
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
            for task in list(reloads):
                task.cancel()
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
