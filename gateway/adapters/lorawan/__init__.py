"""LoRaWAN through ChirpStack v4: discovery, uplinks and downlinks over its gRPC API."""

from gateway.adapters.lorawan.adapter import LorawanAdapter

__all__ = ["LorawanAdapter"]
