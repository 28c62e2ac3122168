"""A plugin adapter for control-API tests: it can permit joining, or fail on purpose.

It stands in for a Zigbee radio (no stick here): ``permit_join`` makes one device
"join" and go through an interview, the way zigpy reports it. It is loaded by the real
daemon through a real ``gateway.adapters`` entry point (see :func:`install_plugin`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field

from gateway.adapters.base import Adapter, AdapterConfig
from gateway.reading import Command, CommandResult, Reading, now

REPO = Path(__file__).resolve().parents[1]


class JoiningConfig(AdapterConfig):
    step: float = Field(default=0.3, gt=0, description="seconds between join stages")
    fail_start: bool = False
    refuse_join: bool = False


class JoiningAdapter(Adapter):
    """On permit_join(N > 0): a device joins, is interviewed, then sends a reading."""

    Config = JoiningConfig
    config: JoiningConfig

    joins = 0

    async def start(self) -> None:
        if self.config.fail_start:
            raise ConnectionError("no radio on /dev/ttyUSB9")

    async def send(self, command: Command) -> CommandResult:
        return CommandResult.unsupported("test adapter")

    async def permit_join(self, seconds: int) -> None:
        self.log.info("permit_join %d", seconds)
        if self.config.refuse_join:
            raise RuntimeError("network not formed yet")
        if seconds:
            self.joins += 1
            self.spawn(self._join(self.joins), name="join")

    async def _join(self, n: int) -> None:
        device = f"{self.prefix}:00:11:22:33:44:55:66:{n:02x}"  # a new device each time
        await asyncio.sleep(self.config.step)
        self.ctx.devices.declare(device, model="TS0201", manufacturer="_TZ3000_test",
                                 interview="started")
        await asyncio.sleep(self.config.step)
        self.ctx.devices.declare(device, interview="done")
        await self.ctx.sink.accept([Reading(device, "temperature", 21.5, "Cel", now())])


def add_routes(app: web.Application, gateway: Any) -> None:
    """Extra control-API routes, mounted through the ``gateway.api_routes`` entry point."""

    async def joiners(request: web.Request) -> web.Response:
        running = gateway.supervisor.adapters if gateway.supervisor is not None else {}
        return web.json_response({"joining": sorted(
            n for n, a in running.items() if isinstance(a, JoiningAdapter))})

    app.router.add_get("/api/joining", joiners)


def broken_routes(app: web.Application, gateway: Any) -> None:
    """A routes plugin with a bug: the API must start without it."""
    raise RuntimeError("broken on purpose")


def install_plugin(directory: Path) -> dict[str, str]:
    """Register ``type: joining`` in ``directory``; return env for a daemon that sees it."""
    info = directory / "gateway_test_joining-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gateway-test-joining\n"
                                   "Version: 0\n")
    (info / "entry_points.txt").write_text(
        "[gateway.adapters]\njoining = tests.joining_adapter:JoiningAdapter\n\n"
        "[gateway.api_routes]\njoining = tests.joining_adapter:add_routes\n"
        "broken = tests.joining_adapter:broken_routes\n")
    return {"PYTHONPATH": f"{directory}:{REPO}"}
