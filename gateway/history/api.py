"""Control-API routes of the history: ``GET /api/devices/{id}/history`` and
``GET /api/history`` (its status). Mounted through the ``gateway.api_routes`` entry points."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web

from gateway.history.query import QueryError, parse_query


class RunningGateway(Protocol):
    """What the routes need of the running gateway."""

    components: dict[str, Any]
    devices: Any  # DeviceRegistry, or None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


_DISABLED = ("history is disabled (history.enabled: false in the config); enable it and "
             "restart the gateway")


def add_routes(app: web.Application, gateway: RunningGateway) -> None:
    """Mount the history routes on the control API of the running ``gateway``."""

    async def device_history(request: web.Request) -> web.Response:
        """Readings (``step=raw``) or min/avg/max/count buckets of one device."""
        from gateway.history import History

        running = gateway.components.get("history")
        if not isinstance(running, History):
            return _error(503, _DISABLED)
        device = request.match_info["device"]
        params = request.query
        metric = params.get("metric") or None
        try:
            q = parse_query(params.get("since"), params.get("until"), params.get("step"),
                            time.time(), running.store.config.raw_span)
        except QueryError as exc:
            return _error(400, str(exc))
        registry = gateway.devices
        known = registry is not None and registry.knows(device)
        if not known and not await running.has_device(device):
            return _error(404, f"no device {device!r} in the registry or the history "
                               "(gateway devices lists them)")
        answer = await running.query(device, metric, q)
        if metric is not None and not answer["metrics"] and not (
                known and metric in registry.latest(device)):
            return _error(404, f"device {device!r} has no history of metric {metric!r} "
                               "(text values are not kept; gateway devices shows its metrics)")
        return web.json_response(answer)

    async def status(request: web.Request) -> web.Response:
        """The history file: size, flushes, what was pruned and skipped."""
        from gateway.history import History

        running = gateway.components.get("history")
        if not isinstance(running, History):
            return _error(503, _DISABLED)
        return web.json_response(await running.status())

    app.router.add_get("/api/devices/{device}/history", device_history)
    app.router.add_get("/api/history", status)
