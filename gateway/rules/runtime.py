"""Wiring of rules and filters into a running gateway's pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from gateway.core.pipeline import Pipeline
from gateway.reading import Reading
from gateway.rules.config import FilterSpec, RuleSpec
from gateway.rules.engine import RuleEngine
from gateway.rules.filters import STATE_PREFIX, FilterSet
from gateway.rules.health import HealthSettings
from gateway.rules.ports import GatewayOutbox, RuleParts, ports_for


class RulesConfig(HealthSettings, Protocol):
    """The parts of the gateway's configuration rules and filters read."""

    @property
    def rules(self) -> Sequence[RuleSpec]: ...

    @property
    def filters(self) -> Sequence[FilterSpec]: ...

    @property
    def state_dir(self) -> Path: ...


class RulesOutbox(GatewayOutbox, Protocol):
    """The outbox, as rules and filters use it."""

    def append(self, readings: Sequence[Reading],
               state: Mapping[str, str | None] | None = None) -> Awaitable[bool]:
        """Queue readings (aggregates), with durable state; True once durable."""
        ...

    def state(self, prefix: str = "") -> Mapping[str, str]:
        """The durable state whose keys start with ``prefix``."""
        ...


class RulesHost(RuleParts, Protocol):
    """The running gateway as :func:`rules_and_filters` sees it."""

    @property
    def config(self) -> RulesConfig: ...

    @property
    def metrics(self) -> CollectorRegistry: ...

    @property
    def components(self) -> MutableMapping[str, Any]: ...

    @property
    def outbox(self) -> RulesOutbox | None: ...

    @property
    def pipeline(self) -> Pipeline | None: ...


@contextlib.asynccontextmanager
async def rules_and_filters(gateway: RulesHost) -> AsyncIterator[tuple[RuleEngine, FilterSet]]:
    """Hook filters and the rule engine into ``gateway.pipeline``; stop them on exit.

    Filters run first among the pipeline's filters; their ``confirm`` and the engine's
    ``observe`` are observers; aggregate windows are durable state of the pipeline
    (restored here from the outbox). Nothing is hooked for empty ``rules:``/``filters:``, so
    they cost nothing when unused. The engine reaches the gateway through
    :func:`~gateway.rules.ports.ports_for` (adapters start later: looked up when used).
    """
    config = gateway.config
    pipeline = gateway.pipeline
    outbox = gateway.outbox
    if pipeline is None or outbox is None:
        raise RuntimeError("rules and filters need the outbox and the pipeline: start the "
                           "store and the core first")
    filters = FilterSet(config.filters, metrics=gateway.metrics, emit=outbox.append)
    engine = RuleEngine(config.rules, ports_for(gateway), gateway.metrics,
                        state_dir=config.state_dir)
    # open aggregate windows an earlier run left (durable in the outbox) reopen first
    filters.restore(outbox.state(STATE_PREFIX))
    if filters.filters:
        pipeline.add_filter(filters.apply, first=True,
                            stateful=filters if filters.windows else None)
        if filters.reduces:
            pipeline.add_observer(filters.confirm)
    if engine.rules:
        pipeline.add_observer(engine.observe)
    await filters.start()
    await engine.start()
    gateway.components["rules"] = engine
    gateway.components["filters"] = filters
    try:
        yield engine, filters
    finally:
        await engine.stop()
        await filters.stop()
