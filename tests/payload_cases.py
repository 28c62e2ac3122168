"""What the table-driven payload tests share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def assert_readings(got: Sequence[tuple[Any, ...]], want: Sequence[tuple[Any, ...]]) -> None:
    """Readings as ``(metric, value, ...)`` tuples are equal, and so are the values' types
    (``True`` is not ``1``, ``2.0`` is not ``2``)."""
    assert list(got) == list(want)
    for g, w in zip(got, want, strict=True):
        assert type(g[1]) is type(w[1]), (g, w)
