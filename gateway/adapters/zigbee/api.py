"""Control-API routes of the Zigbee adapter: ``POST /api/zigbee/backup``.

Kept with the adapter so the API server only mounts them (``add_routes``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from gateway.adapters.supervisor import Supervisor

log = logging.getLogger("gateway.api.zigbee")

#: a backup reads the whole network state from the stick: give it time
BACKUP_TIMEOUT = 60.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RunningGateway(Protocol):
    """What the routes need of the running gateway: its adapters."""

    @property
    def supervisor(self) -> Supervisor | None: ...


def add_routes(app: web.Application, gateway: RunningGateway) -> None:
    """Mount the Zigbee routes on the control API of the running ``gateway``."""

    async def backup(request: web.Request) -> web.Response:
        """Take and export a coordinator backup on every running Zigbee adapter (or one)."""
        from gateway.adapters.zigbee.adapter import ZigbeeAdapter

        only = request.query.get("adapter")
        supervisor = gateway.supervisor
        running = dict(supervisor.adapters) if supervisor is not None else {}
        targets = {name: a for name, a in running.items()
                   if isinstance(a, ZigbeeAdapter) and only in (None, name)}
        if not targets:
            what = f"Zigbee adapter {only!r}" if only else "Zigbee adapter"
            return _error(404, f"no running {what}: is the stick plugged in and the adapter"
                               " enabled? (gateway status shows adapter states)")
        results: dict[str, Any] = {}
        failed = False
        for name, adapter in targets.items():
            try:
                results[name] = await asyncio.wait_for(adapter.backup(), BACKUP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                failed = True
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                log.warning("zigbee backup on %s failed: %s", name, exc)
        if failed:
            errors = "; ".join(f"{n}: {r['error']}" for n, r in results.items() if "error" in r)
            return web.json_response({"error": f"backup failed: {errors}",
                                      "backups": results}, status=503)
        return web.json_response({"backups": results})

    app.router.add_post("/api/zigbee/backup", backup)
