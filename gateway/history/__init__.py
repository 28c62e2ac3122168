"""Local history: a bounded time series of every numeric reading, on the gateway.

:func:`history` is the daemon's component (``history.enabled``, off by default): it hooks
an observer into the pipeline that only appends to a list; every ``flush_interval`` the
list goes to a writer thread, one transaction. Queries run in a reader thread with its
own connection. See ``gateway/history/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.history.query import Query

log = logging.getLogger("gateway.history")


class Host(Protocol):
    """What the component needs from the daemon."""

    config: Any  # GatewayConfig
    metrics: Any  # CollectorRegistry
    pipeline: Any  # Pipeline, or None
    components: dict[str, Any]


class History:
    """The running history: the store, its flush loop, and async queries."""

    def __init__(self, store: Any) -> None:
        from gateway.history.store import HistoryStore

        self.store: HistoryStore = store
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._failed_logged = False

    async def _run_in(self, which: str, fn: Any, *args: Any) -> Any:
        pool = self.store.writer_pool if which == "write" else self.store.reader_pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def start(self) -> None:
        await self._run_in("write", self.store.open_sync)
        self._task = asyncio.create_task(self._loop(), name="history-flush")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.store.config.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what waited, now (the loop does it every ``flush_interval``)."""
        async with self._flush_lock:
            readings = self.store.take()
            try:
                await self._run_in("write", self.store.flush_sync, readings)
            except Exception as exc:  # noqa: BLE001 - history must not stop the gateway
                if not self._failed_logged:
                    log.error("history: a flush failed (%d readings dropped from history): "
                              "%s: %s; further failures are counted in "
                              "gateway_history_flush_errors_total", len(readings),
                              type(exc).__name__, exc)
                    self._failed_logged = True
            else:
                self._failed_logged = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self.flush()  # what was accepted before the stop is kept
        await self._run_in("write", self.store.close_sync)
        self.store.writer_pool.shutdown(wait=True)
        self.store.reader_pool.shutdown(wait=True)

    async def status(self) -> dict[str, Any]:
        return dict(await self._run_in("read", self.store.status_sync))

    async def has_device(self, device: str) -> bool:
        return bool(await self._run_in("read", self.store.has_device_sync, device))

    async def query(self, device: str, metric: str | None, q: Query) -> dict[str, Any]:
        answer = await self._run_in("read", self.store.query_sync, device, metric, q)
        with self.store.lock:
            answer["pruned"] = dict(self.store.pruned)
        return dict(answer)


def history_path(gateway: Host) -> Path:
    cfg = gateway.config.history
    return Path(cfg.path) if cfg.path else Path(gateway.config.state_dir) / "history.db"


@contextlib.asynccontextmanager
async def history(gateway: Host) -> AsyncIterator[History | None]:
    """Keep history while the daemon runs (between the core and the adapters)."""
    cfg = gateway.config.history
    if not cfg.enabled or gateway.pipeline is None:
        log.info("history disabled in config: gateway history and the history API answer 503")
        yield None
        return
    from gateway.history.store import HistoryStore, Metrics

    store = HistoryStore(cfg, history_path(gateway), Metrics(gateway.metrics))
    running = History(store)
    await running.start()
    gateway.pipeline.add_observer(store.observe)
    gateway.components["history"] = running
    try:
        yield running
    finally:
        gateway.pipeline.replace_observer(store.observe, None)
        gateway.components.pop("history", None)
        await running.stop()
