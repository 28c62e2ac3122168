"""Home Assistant MQTT discovery (opt-in): the gateway's devices as Home Assistant entities.

:func:`homeassistant` is the daemon's component: with ``homeassistant.enabled`` false it
hooks nothing. See ``gateway/homeassistant/README.md`` for topics, mapping and config.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway import __version__

log = logging.getLogger("gateway.homeassistant")


class Host(Protocol):
    """What the component needs from the daemon."""

    config: Any  # GatewayConfig
    metrics: Any  # CollectorRegistry
    devices: Any  # DeviceRegistry, or None
    pipeline: Any  # Pipeline, or None
    supervisor: Any  # Supervisor, or None


@contextlib.asynccontextmanager
async def homeassistant(gateway: Host) -> AsyncIterator[Any]:
    """Run the bridge while the daemon runs (after the adapters start); yields it or None."""
    cfg = gateway.config.homeassistant
    if not cfg.enabled or gateway.devices is None or gateway.pipeline is None:
        yield None
        return
    from gateway.homeassistant.bridge import HomeAssistantBridge
    from gateway.homeassistant.config import resolve_broker

    broker = resolve_broker(cfg, gateway.config.adapters)
    if isinstance(broker, str):  # `gateway check` refuses this config already
        raise RuntimeError(broker)
    supervisor = gateway.supervisor
    bridge = HomeAssistantBridge(cfg, broker, gateway.config.gateway.id, __version__,
                                 gateway.devices,
                                 supervisor.send if supervisor is not None else None,
                                 gateway.metrics)
    gateway.pipeline.add_observer(bridge.observe)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()
