"""Looks adapters up by the ``type:`` users write, through the ``gateway.adapters`` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from gateway.adapters.base import Adapter

GROUP = "gateway.adapters"


class UnknownAdapterType(LookupError):
    pass


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_types() -> list[str]:
    """Names of every installed adapter type."""
    return sorted(_entry_points())


def adapter_class(type_name: str) -> type[Adapter]:
    """The adapter class registered as ``type_name``."""
    ep = _entry_points().get(type_name)
    if ep is None:
        known = ", ".join(available_types()) or "none installed"
        raise UnknownAdapterType(f"unknown adapter type {type_name!r} (installed: {known})")
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise UnknownAdapterType(f"entry point {type_name!r} ({ep.value}) is not an Adapter")
    return cls
