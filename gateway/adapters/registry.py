"""Looks adapters up by the ``type:`` users write, through the ``gateway.adapters`` entry points."""

from __future__ import annotations

from gateway.adapters.base import Adapter
from gateway.plugins import PluginGroup

GROUP = "gateway.adapters"


class UnknownAdapterType(LookupError):
    pass


def _wrong(obj: object) -> str | None:
    return None if isinstance(obj, type) and issubclass(obj, Adapter) else "an Adapter"


#: an adapter that fails to import raises its own error (the daemon reports it)
PLUGINS: PluginGroup[type[Adapter]] = PluginGroup(GROUP, "adapter type", UnknownAdapterType,
                                                  _wrong, wrap_load_errors=False)


def available_types() -> list[str]:
    """Names of every installed adapter type."""
    return PLUGINS.names()


def adapter_class(type_name: str) -> type[Adapter]:
    """The adapter class registered as ``type_name``."""
    return PLUGINS.load(type_name)
