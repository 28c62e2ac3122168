"""Zigbee through zigpy: the ``zigbee`` adapter, its unit table, backups and stick detection."""

from gateway.adapters.zigbee.adapter import ZigbeeAdapter

__all__ = ["ZigbeeAdapter"]
