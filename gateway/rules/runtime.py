"""Wiring of rules and filters into a running gateway's pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.rules.engine import RuleEngine
from gateway.rules.filters import STATE_PREFIX, FilterSet


@contextlib.asynccontextmanager
async def rules_and_filters(gateway: Any) -> AsyncIterator[tuple[RuleEngine, FilterSet]]:
    """Hook filters and the rule engine into ``gateway.pipeline``; stop them on exit.

    Filters run first among the pipeline's filters; their ``confirm`` and the engine's
    ``observe`` are observers; aggregate windows are durable state of the pipeline
    (restored here from the outbox). Nothing is hooked for empty ``rules:``/``filters:``, so
    they cost nothing when unused.
    """
    config = gateway.config
    pipeline = gateway.pipeline
    filters = FilterSet(config.filters, metrics=gateway.metrics, emit=gateway.outbox.append)
    engine = RuleEngine(config.rules, gateway, gateway.metrics, state_dir=config.state_dir)
    # open aggregate windows an earlier run left (durable in the outbox) reopen first
    filters.restore(gateway.outbox.state(STATE_PREFIX))
    if filters.filters:
        pipeline.filters.insert(0, filters.apply)
        if filters.reduces:
            pipeline.observers.append(filters.confirm)
        if filters.windows:
            pipeline.stateful.append(filters)
    if engine.rules:
        pipeline.observers.append(engine.observe)
    await filters.start()
    await engine.start()
    gateway.components["rules"] = engine
    gateway.components["filters"] = filters
    try:
        yield engine, filters
    finally:
        await engine.stop()
        await filters.stop()
