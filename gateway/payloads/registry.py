"""Payload formats by name, through the ``gateway.decoders`` entry points.

A third-party format is a :class:`~gateway.payloads.base.Format` subclass registered in
its own package's metadata::

    [project.entry-points."gateway.decoders"]
    acme = "acme_gateway:AcmeFormat"

and ``format: acme`` in the YAML picks it after ``pip install``. The built-in formats
register the same way, in this package's ``pyproject.toml``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from gateway.payloads.base import Format

GROUP = "gateway.decoders"


class UnknownFormat(LookupError):
    """A ``format:`` no installed package provides."""


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    """Names of every installed payload format."""
    return sorted(_entry_points())


@lru_cache(maxsize=64)
def format_class(name: str) -> type[Format]:
    """The format registered as ``name`` (UnknownFormat if none or not a Format)."""
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(available()) or "none installed"
        raise UnknownFormat(f"unknown payload format {name!r} (installed: {known})")
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must name itself, not crash
        raise UnknownFormat(f"payload format {name!r} ({ep.value}) does not load: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Format)):
        raise UnknownFormat(f"entry point {name!r} ({ep.value}) is not a payload Format")
    return cls


def by_content_format(number: int) -> type[Format] | None:
    """The format that reads CoAP Content-Format ``number`` (built-ins first), or None."""
    found: type[Format] | None = None
    for name in available():
        try:
            cls = format_class(name)
        except UnknownFormat:
            continue
        if number in cls.content_formats:
            if cls.__module__.startswith("gateway.payloads."):
                return cls
            found = found or cls
    return found


def cache_clear() -> None:
    """Forget the entry points (after installing a plugin in a running interpreter)."""
    _entry_points.cache_clear()
    format_class.cache_clear()
