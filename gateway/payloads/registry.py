"""Payload formats by name, through the ``gateway.decoders`` entry points.

A third-party format is a :class:`~gateway.payloads.base.Format` subclass registered in
its own package's metadata::

    [project.entry-points."gateway.decoders"]
    acme = "acme_gateway:AcmeFormat"

and ``format: acme`` in the YAML picks it after ``pip install``. The built-in formats
register the same way, in this package's ``pyproject.toml``.
"""

from __future__ import annotations

from gateway.payloads.base import Format
from gateway.plugins import PluginGroup

GROUP = "gateway.decoders"


class UnknownFormat(LookupError):
    """A ``format:`` no installed package provides."""


def _wrong(obj: object) -> str | None:
    return None if isinstance(obj, type) and issubclass(obj, Format) else "a payload Format"


PLUGINS: PluginGroup[type[Format]] = PluginGroup(GROUP, "payload format", UnknownFormat, _wrong)


def available() -> list[str]:
    """Names of every installed payload format."""
    return PLUGINS.names()


def format_class(name: str) -> type[Format]:
    """The format registered as ``name`` (UnknownFormat if none or not a Format)."""
    return PLUGINS.load(name)


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
    PLUGINS.cache_clear()
