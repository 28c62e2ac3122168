"""Plugin lookup: one entry-point group by name, loaded and checked once per name.

Adapters, payload formats, uplink formats and the like are each an entry-point group
(``gateway.adapters``, ``gateway.decoders``, ``gateway.uplink_formats``...). A
:class:`PluginGroup` lists a group's names and loads one by name; what is unknown, does
not load, or is not the kind of object the group holds raises the group's own
``LookupError`` with a message that names the plugin and the installed ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Protocol, TypeVar, cast

T = TypeVar("T")


class PluginGroup(Generic[T]):
    """The entry points of ``group``; ``what`` names one in messages (``payload format``).

    ``check(obj)`` returns None for a loaded object of the right kind, else what it is
    not (``"a payload Format"``). ``wrap_load_errors``: a plugin that fails to import
    raises ``error`` naming it (False: its own exception propagates).
    """

    def __init__(self, group: str, what: str, error: type[LookupError],
                 check: Callable[[Any], str | None], wrap_load_errors: bool = True) -> None:
        self.group = group
        self.what = what
        self.error = error
        self.check = check
        self.wrap_load_errors = wrap_load_errors
        self._eps: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, T] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._eps is None:
            self._eps = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._eps

    def names(self) -> list[str]:
        """Every installed plugin's name, sorted."""
        return sorted(self._entry_points())

    def load(self, name: str) -> T:
        """The object registered as ``name`` (cached)."""
        hit = self._loaded.get(name)
        if hit is not None:
            return hit
        ep = self._entry_points().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "none installed"
            raise self.error(f"unknown {self.what} {name!r} (installed: {known})")
        if self.wrap_load_errors:
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must name itself
                raise self.error(f"{self.what} {name!r} ({ep.value}) does not load: "
                                 f"{type(exc).__name__}: {exc}") from exc
        else:
            obj = ep.load()
        wrong = self.check(obj)
        if wrong is not None:
            raise self.error(f"entry point {name!r} ({ep.value}) is not {wrong}")
        loaded = cast(T, obj)
        self._loaded[name] = loaded
        return loaded

    def cache_clear(self) -> None:
        """Forget the entry points and what was loaded (after installing a plugin)."""
        self._eps = None
        self._loaded.clear()


#: a CLI command's handler: parsed arguments to an exit code
Handler = Callable[[argparse.Namespace], int]


class CommandHost(Protocol):
    """What a ``gateway.commands`` group's ``register(cli)`` gets: the part of
    ``gateway.cli.Commands`` a command group uses (structural, so a group imports no CLI)."""

    def add(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser: ...

    def daemon_options(self, p: argparse.ArgumentParser, *, timeout: float = ...,
                       json_flag: bool = ...) -> None: ...

    def client(self, args: argparse.Namespace) -> Any: ...
