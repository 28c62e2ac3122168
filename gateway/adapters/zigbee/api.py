"""Control-API routes of the Zigbee adapter: ``POST /api/zigbee/backup``,
``GET /api/zigbee/map`` (the network map), ``POST /api/zigbee/scan`` (energy scan).

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

    def one(request: web.Request) -> Any:
        """The Zigbee adapter named by ``?adapter=`` (or the only one), or an error response."""
        from gateway.adapters.zigbee.adapter import ZigbeeAdapter

        only = request.query.get("adapter")
        supervisor = gateway.supervisor
        running = dict(supervisor.adapters) if supervisor is not None else {}
        targets = [a for name, a in running.items()
                   if isinstance(a, ZigbeeAdapter) and only in (None, name)]
        if not targets:
            what = f"Zigbee adapter {only!r}" if only else "Zigbee adapter"
            return _error(404, f"no running {what}: is the stick plugged in and the adapter"
                               " enabled? (gateway status shows adapter states)")
        if len(targets) > 1:
            return _error(400, "several Zigbee adapters run: name one with ?adapter=NAME")
        return targets[0]

    async def network_map(request: web.Request) -> web.Response:
        """The neighbour and routing tables; ``?refresh=1`` scans them again first."""
        from gateway.adapters.zigbee.adapter import ScanRefused

        adapter = one(request)
        if isinstance(adapter, web.Response):
            return adapter
        refresh = request.query.get("refresh", "0") not in ("", "0", "false", "no")
        try:
            return web.json_response(await adapter.network_map(refresh=refresh))
        except ScanRefused as exc:
            return _error(409, str(exc))
        except RuntimeError as exc:
            return _error(503, str(exc))

    async def energy_scan(request: web.Request) -> web.Response:
        """Energy per channel and the recommended channel; body ``{"channels": [..],
        "duration": 4, "count": 1}``, all optional."""
        from gateway.adapters.zigbee.adapter import ScanRefused

        adapter = one(request)
        if isinstance(adapter, web.Response):
            return adapter
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        channels, duration, count = (body.get("channels"), body.get("duration", 4),
                                     body.get("count", 1))
        if channels is not None and not (isinstance(channels, list) and all(
                isinstance(c, int) and not isinstance(c, bool) for c in channels)):
            return _error(400, "channels: expected a list of channel numbers 11-26")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (duration, count)):
            return _error(400, "duration and count: expected integers")
        try:
            return web.json_response(await adapter.energy_scan(channels, duration, count))
        except ScanRefused as exc:
            return _error(409, str(exc))
        except ValueError as exc:
            return _error(400, str(exc))
        except TimeoutError:
            return _error(503, "the stick did not finish the energy scan in time")
        except RuntimeError as exc:
            return _error(503, str(exc))

    app.router.add_post("/api/zigbee/backup", backup)
    app.router.add_get("/api/zigbee/map", network_map)
    app.router.add_post("/api/zigbee/scan", energy_scan)
