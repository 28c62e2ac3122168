"""Zigbee through zigpy: the ``zigbee`` adapter, its unit table, backups and stick detection.

``ZigbeeAdapter`` is loaded on first use, so the CLI's ``gateway hardware`` and the
control API's routes do not pay for the adapter's imports.
"""

from typing import Any

__all__ = ["ZigbeeAdapter"]


def __getattr__(name: str) -> Any:
    if name == "ZigbeeAdapter":
        from gateway.adapters.zigbee.adapter import ZigbeeAdapter

        return ZigbeeAdapter
    raise AttributeError(name)
