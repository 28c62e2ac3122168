"""Metric sets registered once per registry, so a restarted component reuses its own.

A component (an adapter, say) bundles its Prometheus metrics in a class whose constructor
takes the registry. The supervisor builds a fresh adapter after each crash, and
registering the same names twice on one registry raises: :func:`metric_set` hands every
instance the set made first.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

T = TypeVar("T")

_SETS: weakref.WeakKeyDictionary[CollectorRegistry, dict[Any, Any]] = (
    weakref.WeakKeyDictionary())


def metric_set(registry: CollectorRegistry, cls: Callable[[CollectorRegistry], T]) -> T:
    """``cls(registry)``, made once per registry."""
    sets = _SETS.get(registry)
    if sets is None:
        sets = _SETS[registry] = {}
    if cls not in sets:
        sets[cls] = cls(registry)
    found: T = sets[cls]
    return found
