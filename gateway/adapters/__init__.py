"""Adapters: one module or subpackage per protocol, registered under ``gateway.adapters``.

The contract names are loaded on first use: CLI commands living in adapter packages
(``gateway hardware``) must not pay for pydantic and prometheus at every start.
"""

from typing import Any

__all__ = ["Adapter", "AdapterConfig", "AdapterContext", "Sink"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gateway.adapters import base

        return getattr(base, name)
    raise AttributeError(name)
