"""Configuration: one YAML file validated into typed objects at load.

Errors name the file, line, key path and what was expected. Import from
``gateway.config.model``; the names below are re-exported lazily so that
``gateway.config.types`` can be imported by every section without a cycle.
"""

from typing import Any

__all__ = ["ConfigError", "GatewayConfig", "load_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gateway.config import model

        return getattr(model, name)
    raise AttributeError(name)
