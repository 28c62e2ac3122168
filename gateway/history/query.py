"""The parameters of a history query: times, step, and the checks on them (pure code)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config.types import parse_duration

#: most buckets (per metric) one answer holds; a smaller step is refused
MAX_BUCKETS = 5000
#: most raw points (per metric) one answer holds; beyond it the newest are kept
MAX_POINTS = 10_000
#: the span of a query that names no ``since``
DEFAULT_SPAN = 3600.0
#: the longest span one query may cover
MAX_SPAN = 3650 * 86400.0

TIME_FORMS = ("'now', a duration ago (90s, 15m, 1h, 7d), UNIX seconds (1767225600) or "
              "ISO 8601 (2026-01-01T00:00:00Z)")
STEP_FORMS = "'raw', or a duration from 1s (30s, 5m, 1h, 1d)"

_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


class QueryError(ValueError):
    """A query parameter the history cannot answer: the message says the accepted forms."""


@dataclass(frozen=True, slots=True)
class Query:
    """What to answer: ``step`` None is raw readings."""

    since: float
    until: float
    step: int | None


def parse_time(text: str, now: float, name: str) -> float:
    """``since``/``until`` → UNIX seconds; QueryError naming the accepted forms."""
    value = text.strip()
    if not value:
        raise QueryError(f"{name}: empty; expected {TIME_FORMS}")
    if value == "now":
        return now
    if _NUMBER.match(value):
        ts = float(value)
        if not math.isfinite(ts) or not 0 <= ts <= 1e11:
            raise QueryError(f"{name}: {text!r} is out of range; expected {TIME_FORMS}")
        return ts
    try:
        ago = parse_duration(value.removeprefix("-"), MAX_SPAN)
    except ValueError:
        pass
    else:
        return now - ago
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not a time; expected {TIME_FORMS}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)  # the gateway keeps UTC; say so in the README
    try:
        return stamp.timestamp()
    except (OverflowError, OSError, ValueError):
        raise QueryError(f"{name}: {text!r} is out of range; expected {TIME_FORMS}") from None


def parse_step(text: str | None) -> int | None | str:
    """``step`` → whole seconds, None for raw, ``"auto"`` when not given."""
    if text is None or text.strip() in ("", "auto"):
        return "auto"
    if text.strip() == "raw":
        return None
    try:
        seconds = parse_duration(text.strip(), MAX_SPAN)
    except ValueError:
        raise QueryError(f"step: {text!r} is not a step; expected {STEP_FORMS}") from None
    if seconds < 1 or seconds != int(seconds):
        raise QueryError(f"step: {text!r} is not a whole number of seconds from 1s; "
                         f"expected {STEP_FORMS}")
    return int(seconds)


def parse_query(since: str | None, until: str | None, step: str | None, now: float,
                raw_span: float) -> Query:
    """The whole query, checked: QueryError for what cannot be answered.

    With no ``step`` (auto): raw readings for a span within ``raw_span``, else the
    smallest of 1m, 5m, 15m, 1h, 6h, 1d giving at most 1,000 buckets. A ``step`` that
    would give more than :data:`MAX_BUCKETS` buckets is refused with the smallest one
    that fits.
    """
    hi = now if until is None else parse_time(until, now, "until")
    lo = hi - DEFAULT_SPAN if since is None else parse_time(since, now, "since")
    if lo >= hi:
        raise QueryError(f"since ({lo:.0f}) must be before until ({hi:.0f})")
    span = hi - lo
    if span > MAX_SPAN:
        raise QueryError(f"the span from since to until is longer than {MAX_SPAN / 86400:.0f}d")
    wanted = parse_step(step)
    if wanted == "auto":
        if span <= raw_span and lo >= now - raw_span:
            return Query(lo, hi, None)
        for candidate in (60, 300, 900, 3600, 6 * 3600, 86400):
            if span / candidate <= 1000:
                return Query(lo, hi, candidate)
        return Query(lo, hi, max(86400, math.ceil(span / MAX_BUCKETS)))
    if isinstance(wanted, int) and span / wanted > MAX_BUCKETS:
        least = math.ceil(span / MAX_BUCKETS)
        raise QueryError(f"step: {wanted}s gives {math.ceil(span / wanted)} buckets over this "
                         f"span, more than {MAX_BUCKETS}; use a step of at least {least}s "
                         "or a shorter span")
    return Query(lo, hi, wanted if isinstance(wanted, int) else None)
