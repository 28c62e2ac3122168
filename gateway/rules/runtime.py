"""Wiring of rules and filters into a running gateway's pipeline."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from gateway.core.pipeline import Pipeline
from gateway.reading import Reading
from gateway.rules.config import FilterSpec, RuleSpec
from gateway.rules.engine import RuleEngine
from gateway.rules.filters import STATE_PREFIX, FilterSet
from gateway.rules.health import HealthSettings
from gateway.rules.ports import GatewayOutbox, RuleParts, ports_for

log = logging.getLogger("gateway.rules")

#: readings the rules may miss while a reload replaces the engine (kept and shown to the
#: new engine); past this they are counted and logged, never held against the pipeline
MAX_HELD_READINGS = 100_000


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

    def flush(self) -> Awaitable[bool]:
        """Commit everything queued so far; True once committed."""
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


class _Generations:
    """The metrics of the current rule engine and filter set, on the daemon's registry.

    Each engine and filter set registers its metrics in a registry of its own; a reload
    replaces them, and what the replaced ones counted is carried over, so counters never
    go backwards (nor register a name twice on the daemon's registry).
    """

    def __init__(self) -> None:
        self.current: dict[str, CollectorRegistry] = {}
        self._carried: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    def new(self, part: str) -> CollectorRegistry:
        """A registry for the next ``part`` ("rules" or "filters"); the current one's counts
        are carried over."""
        old = self.current.get(part)
        if old is not None:
            for family in old.collect():
                if family.type != "counter":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                        self._carried[key] = self._carried.get(key, 0.0) + sample.value
        reg = self.current[part] = CollectorRegistry(auto_describe=False)
        return reg

    def collect(self) -> Iterator[Metric]:
        seen: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        families: dict[str, Metric] = {}
        for reg in self.current.values():
            for family in reg.collect():
                if family.type == "counter":
                    samples = []
                    for sample in family.samples:
                        key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                        if key in self._carried:
                            seen.add(key)
                            sample = sample._replace(value=sample.value + self._carried[key])
                        samples.append(sample)
                    family.samples = samples
                    families[family.name] = family
                yield family
        # series only replaced engines had (a rule removed by a reload) keep their count
        for key, value in self._carried.items():
            if key not in seen and key[0] in families:
                name, sample_name, labels = key
                families[name].add_sample(sample_name, dict(labels), value)


class RulesRuntime:
    """The rule engine and the upload filters hooked into the pipeline; replaced in place
    when a reload changes ``rules:``, ``health:`` or ``filters:``."""

    def __init__(self, gateway: RulesHost) -> None:
        if gateway.pipeline is None or gateway.outbox is None:
            raise RuntimeError("rules and filters need the outbox and the pipeline: start "
                               "the store and the core first")
        self._gw = gateway
        self._pipeline: Pipeline = gateway.pipeline
        self._outbox: RulesOutbox = gateway.outbox
        self._metrics = _Generations()
        gateway.metrics.register(self._metrics)
        self.engine: RuleEngine | None = None
        self.filters: FilterSet | None = None
        self._rules_key: Any = None
        self._filters_key: Any = None

    @staticmethod
    def _rules_of(config: RulesConfig) -> Any:
        return (list(config.rules), config.health)

    def _new_filters(self, specs: Sequence[FilterSpec]) -> FilterSet:
        fs = FilterSet(specs, metrics=self._metrics.new("filters"), emit=self._outbox.append)
        # open aggregate windows (durable in the outbox) reopen first; a window whose
        # filter changed is closed with the functions it was opened with
        fs.restore(self._outbox.state(STATE_PREFIX))
        return fs

    def _new_engine(self, config: RulesConfig) -> RuleEngine:
        return RuleEngine(config.rules, ports_for(self._gw), self._metrics.new("rules"),
                          state_dir=config.state_dir)

    def _hook_filters(self, old: FilterSet | None, new: FilterSet | None) -> None:
        p = self._pipeline
        old_on = old is not None and bool(old.filters)
        new_on = new is not None and bool(new.filters)
        p.replace_filter(old.apply if old_on and old else None,
                         new.apply if new_on and new else None,
                         old if old_on and old and old.windows else None,
                         new if new_on and new and new.windows else None)
        p.replace_observer(old.confirm if old_on and old and old.reduces else None,
                           new.confirm if new_on and new and new.reduces else None)

    async def start(self) -> None:
        """Build, hook and start the filters and the engine of the current config."""
        config = self._gw.config
        self.filters = self._new_filters(config.filters)
        self.engine = self._new_engine(config)
        self._hook_filters(None, self.filters)
        if self.engine.rules:
            self._pipeline.add_observer(self.engine.observe)
        await self.filters.start()
        await self.engine.start()
        self._rules_key = self._rules_of(config)
        self._filters_key = list(config.filters)
        self._publish()

    def _publish(self) -> None:
        self._gw.components["rules"] = self.engine
        self._gw.components["filters"] = self.filters

    async def stop(self) -> None:
        """Stop the engine (running actions finish, state saved), then the filters."""
        if self.engine is not None:
            await self.engine.stop()
        if self.filters is not None:
            await self.filters.stop()

    async def reload(self, config: RulesConfig) -> list[str]:
        """Apply ``config``'s rules and filters; what changed, for the reload's summary."""
        changed: list[str] = []
        if list(config.filters) != self._filters_key:
            await self._replace_filters(config.filters)
            self._filters_key = list(config.filters)
            changed.append("filters")
        if self._rules_of(config) != self._rules_key:
            await self._replace_engine(config)
            self._rules_key = self._rules_of(config)
            changed.append("rules")
        self._publish()
        return changed

    async def _replace_filters(self, specs: Sequence[FilterSpec]) -> None:
        # batches wait at the pipeline's door meanwhile: the old set's open windows must all
        # be committed (its last state with them) before the new set reopens them
        old = self.filters
        async with self._pipeline.hold():
            if old is not None:
                await old.stop()
            if not await self._outbox.flush():
                log.warning("reload: the outbox could not commit before the filters were "
                            "replaced; open aggregate windows reopen from the last commit")
            new = self._new_filters(specs)
            self._hook_filters(old, new)
            self.filters = new
            await new.start()

    async def _replace_engine(self, config: RulesConfig) -> None:
        # the old engine finishes its running actions and writes its state; the new one
        # reads it back (rules whose fingerprint is unchanged keep their state). Readings
        # accepted meanwhile are kept and shown to the new engine: ingest never waits
        old = self.engine
        held: list[Sequence[Reading]] = []
        count = [0, 0]  # readings held, missed

        def hold(readings: Sequence[Reading]) -> None:
            if count[0] + len(readings) > MAX_HELD_READINGS:
                count[1] += len(readings)
                return
            count[0] += len(readings)
            held.append(readings)

        new = self._new_engine(config)
        if old is not None:
            self._pipeline.replace_observer(old.observe if old.rules else None, hold)
            devices = self._gw.devices
            if devices is not None:
                devices.remove_listener(old.on_online)
            await old.stop()
        else:
            self._pipeline.add_observer(hold)
        await new.start()
        self._pipeline.replace_observer(hold, new.observe if new.rules else None)
        self.engine = new
        for readings in held:  # in order, before any later batch: no await in between
            try:
                new.observe(readings)
            except Exception as exc:  # noqa: BLE001 - like any observer: logged, not fatal
                log.error("rules: a reading held during the reload failed: %s: %s",
                          type(exc).__name__, exc)
        if count[1]:
            log.warning("rules: %d reading(s) accepted during the reload were not shown to the "
                        "rules (more than %d held)", count[1], MAX_HELD_READINGS)


@contextlib.asynccontextmanager
async def rules_and_filters(gateway: RulesHost) -> AsyncIterator[RulesRuntime]:
    """Hook filters and the rule engine into ``gateway.pipeline``; stop them on exit.

    Filters run first among the pipeline's filters; their ``confirm`` and the engine's
    ``observe`` are observers; aggregate windows are durable state of the pipeline
    (restored here from the outbox). Nothing is hooked for empty ``rules:``/``filters:``, so
    they cost nothing when unused. The engine reaches the gateway through
    :func:`~gateway.rules.ports.ports_for` (adapters start later: looked up when used).
    :meth:`RulesRuntime.reload` replaces either in place.
    """
    runtime = RulesRuntime(gateway)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
