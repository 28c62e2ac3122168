"""The ``rules:`` and ``filters:`` sections (typed by the rules engine)."""

from __future__ import annotations

from typing import Any

RuleSpec = dict[str, Any]
FilterSpec = dict[str, Any]
