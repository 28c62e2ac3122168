"""``type: coap``: CoAP devices (readings in, observe, commands out, block-wise, OSCORE)."""

from gateway.adapters.coap.adapter import CoapAdapter

__all__ = ["CoapAdapter"]
