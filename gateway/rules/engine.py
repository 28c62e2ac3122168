"""The rule engine: evaluates rules on accepted readings and runs their actions.

- ``observe`` is a pipeline observer on the hot path: it updates the engine's own
  per-device latest values and windows, looks up the rules relevant to the reading's
  (device, metric) in a cache built on first sight, and evaluates only those.
- Each (rule, device) pair has a small state: active, pending since (``for``), last
  fired (``cooldown``). Rules fire on the rising edge (``mode: edge``) or on every
  reading while the condition holds (``mode: level``, rate-limited by ``cooldown``).
- Actions never block the pipeline: they are rendered at firing time and run in their
  own task. A failing action is logged and counted; nothing else notices.
- State is written to ``rules-state.json`` in the state directory soon after a firing,
  at most every few seconds otherwise, and at stop, so a ``for`` in progress and
  cooldowns survive a restart without firing twice. A transition is written only once
  its actions have finished (an alert is durable in the outbox): until then the file
  keeps the state before it, so a crash in between fires again after the restart
  rather than losing the alert (at least once, never zero times).
- Everything outside the engine (outbox, adapters, pipeline, device registry) is reached
  through the typed ports of :mod:`gateway.rules.ports`, which the daemon builds.
- Health rules (conditions on ``gateway.*`` facts) are evaluated on the 1 s timer for the
  gateway's pseudo-device, from one sample per tick of only the facts some rule reads
  (:mod:`gateway.rules.health`); they share the state machine above.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import importlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from gateway.core.files import write_json_atomic
from gateway.core.tasks import cancel_and_wait, wait_event
from gateway.logs import InputLog
from gateway.reading import Command, Reading
from gateway.rules.config import ActionSpec, RuleSpec, WebhookAction
from gateway.rules.expr import (
    ABSENT,
    Compiled,
    EvalError,
    Program,
    Template,
    Window,
    compile_expr,
    compile_template,
    show_value,
)
from gateway.rules.health import unit_of
from gateway.rules.ports import ActionError, RulePorts

if TYPE_CHECKING:
    from gateway.rules.webhook import WebhookClient

log = logging.getLogger("gateway.rules")

STATE_FILE = "rules-state.json"
STATE_VERSION = 1
#: a firing reaches the state file this soon; other changes within STATE_FLUSH_INTERVAL
STATE_MIN_SPACING = 0.5
STATE_FLUSH_INTERVAL = 5.0
TICK = 1.0
ACTION_TIMEOUT = 10.0
#: firings whose actions are still running; beyond this new ones are dropped and counted
MAX_PENDING_ACTIONS = 1000
#: values kept per (device, metric) window, whatever its length
WINDOW_MAX_ITEMS = 2000
#: device descriptions (name, type, tags) are re-read from the registry this often
INFO_TTL = 10.0
#: devices tracked (values, windows, relevant rules) before the engine starts over
PLAN_MAX = 200_000
#: metrics per device remembered with their relevant rules before that cache restarts
PLAN_PER_DEVICE = 1000
ERROR_LOG_EVERY = 60.0

#: rules whose actions produced the reading being accepted: they do not see it again
_ORIGIN: ContextVar[frozenset[str]] = ContextVar("gateway_rules_origin", default=frozenset())
_EMPTY: dict[str, Any] = {}
_MISSING: Any = object()
_NO_WINDOWS: dict[tuple[str, float], Window] = {}


class _Env:
    """What a condition sees for one evaluation (reused across readings)."""

    __slots__ = ("device", "metric", "value", "unit", "ts", "now", "values", "windows", "engine",
                 "_info")

    @property
    def gateway(self) -> dict[str, Any]:
        return self.engine.health_values

    def __init__(self, engine: RuleEngine) -> None:
        self.engine = engine
        self.device = ""
        self.metric = ""
        self.value: Any = ABSENT
        self.unit: str | None = None
        self.ts = 0.0
        self.now = 0.0
        self.values: dict[str, Any] = _EMPTY
        self.windows: dict[tuple[str, float], Window] = _NO_WINDOWS
        self._info: dict[str, Any] | None = None

    def load(self, device: str, reading: Reading | None, now: float) -> _Env:
        self.device = device
        if reading is None:
            self.metric, self.value, self.unit, self.ts = "", ABSENT, None, now
        else:
            self.metric, self.value, self.unit, self.ts = (reading.metric, reading.value,
                                                           reading.unit, reading.ts)
        self.now = now
        d = self.engine._devices.get(device)
        self.values = d.values if d is not None else _EMPTY
        self.windows = d.windows if d is not None else _NO_WINDOWS
        self._info = None
        return self

    def latest(self, metric: str) -> Any:
        if metric == self.metric:
            return self.value
        return self.values.get(metric, ABSENT)


    def info(self, key: str) -> Any:
        if key == "id":
            return self.device
        if key == "online":
            return self.engine.is_online(self.device)
        if self._info is None:
            self._info = self.engine.device_info(self.device)
        v = self._info.get(key)
        if v is None:
            return [] if key == "tags" else ABSENT
        return v


class _Device:
    """What the engine keeps per device: latest values, windows, relevant rules."""

    __slots__ = ("id", "values", "windows", "plan")

    def __init__(self, device: str) -> None:
        self.id = device
        self.values: dict[str, Any] = {}
        self.windows: dict[tuple[str, float], Window] = {}
        #: metric → the rules its readings evaluate, computed on first sight
        self.plan: dict[str, _Plan] = {}


_WindowKeys = tuple[tuple[tuple[str, float], float, bool], ...]


def _push(windows: dict[tuple[str, float], Window], keys: _WindowKeys, ts: float, value: Any,
          now: float) -> None:
    for key, span, extremes in keys:
        edge = now - span
        if ts <= edge:
            continue  # a backlog reading older than the window: never inside it
        w = windows.get(key)
        if w is None:
            w = windows[key] = Window(span, WINDOW_MAX_ITEMS, extremes)
        w.push(ts, value)
        if w.items[0][0] <= edge:
            w.trim(now)


class _Action:
    """One configured action, compiled."""

    def __init__(self, spec: ActionSpec) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.templates: dict[str, Template] = {}
        self.value: Program | None = None
        self.timeout = ACTION_TIMEOUT
        if spec.webhook is not None:
            self.timeout = max(ACTION_TIMEOUT, spec.webhook.bound + 1.0)
            if spec.webhook.message is not None:
                self.templates["message"] = compile_template(spec.webhook.message)
        elif spec.alert is not None:
            self.templates["message"] = compile_template(spec.alert.message)
        elif spec.command is not None:
            if spec.command.device is not None:
                self.templates["device"] = compile_template(spec.command.device)
        elif spec.publish is not None:
            self.templates["topic"] = compile_template(spec.publish.topic)
            if spec.publish.payload is not None:
                self.templates["payload"] = compile_template(spec.publish.payload)
        elif spec.set is not None:
            self.value = compile_expr(spec.set.value)
            if spec.set.device is not None:
                self.templates["device"] = compile_template(spec.set.device)

    def programs(self) -> list[Program]:
        out = [p for t in self.templates.values() for p in t.programs]
        if self.value is not None:
            out.append(self.value)
        return out


class _Rule:
    __slots__ = ("index", "name", "spec", "when", "clear", "for_", "cooldown", "level",
                 "devices", "metrics", "triggers", "any_metric", "uses_online", "actions",
                 "on_clear", "fingerprint", "programs", "states", "guard", "health", "facts")

    def __init__(self, index: int, spec: RuleSpec) -> None:
        self.index = index
        self.name = spec.name
        self.spec = spec
        when = compile_expr(spec.when)
        clear = compile_expr(spec.clear) if spec.clear is not None else None
        self.when: Compiled = when.fn
        self.guard = when.guard
        self.clear: Compiled | None = clear.fn if clear is not None else None
        self.for_ = spec.for_
        self.cooldown = spec.cooldown
        self.level = spec.mode == "level"
        self.devices = tuple(spec.device)
        self.metrics = tuple(spec.metric) if spec.metric is not None else None
        conds = [when] + ([clear] if clear is not None else [])
        self.triggers: set[str] = set()
        for p in conds:
            self.triggers |= p.metrics
        # a condition that names no metric but reads the reading's value runs on every metric
        self.any_metric = not self.triggers and any(p.reading_fields for p in conds)
        self.uses_online = any("online" in p.device_fields for p in conds)
        #: gateway.* facts the conditions read, in order: a health rule (evaluated on the
        #: timer for the gateway itself), reporting the first as its metric and value
        self.facts = list(dict.fromkeys(k for p in conds for k in p.gateway))
        self.health = bool(self.facts)
        if self.health:
            self.any_metric = False
            self.triggers = set()
            self.uses_online = False
        self.actions = [_Action(a) for a in spec.actions]
        self.on_clear = [_Action(a) for a in spec.on_clear]
        self.programs: list[Program] = conds + [p for a in self.actions + self.on_clear
                                                for p in a.programs()]
        key = json.dumps([spec.when, spec.clear, spec.for_, spec.device, spec.metric],
                         sort_keys=True)
        self.fingerprint = hashlib.sha1(key.encode()).hexdigest()[:12]
        #: device → state, only for devices where something happened
        self.states: dict[str, _State] = {}

    def matches_device(self, device: str) -> bool:
        return any(p == "*" or fnmatch.fnmatchcase(device, p) for p in self.devices)

    def triggered_by(self, metric: str) -> bool:
        if self.metrics is not None:
            return any(fnmatch.fnmatchcase(metric, p) for p in self.metrics)
        return metric in self.triggers or self.any_metric


#: what the state file keeps of a (rule, device): active, since, fired, reading
_Saved = tuple[bool, float | None, float | None, Reading | None]


class _State:
    __slots__ = ("active", "since", "fired", "reading", "running", "before")

    def __init__(self) -> None:
        self.active = False
        self.since: float | None = None  # condition true since (waiting out ``for``)
        self.fired: float | None = None
        self.reading: Reading | None = None  # what the pending condition last saw
        self.running = 0  # transitions whose actions have not finished
        self.before: _Saved | None = None  # the state saved while they run

    def saved(self) -> _Saved:
        """What the state file should hold: the state before any transition whose
        actions still run."""
        if self.before is not None:
            return self.before
        return (self.active, self.since, self.fired, self.reading)

    def hold(self) -> None:
        """A transition's actions start: keep the state before it for the file."""
        if self.running == 0:
            self.before = (self.active, self.since, self.fired, self.reading)
        self.running += 1

    def idle(self, cooldown: float, now: float) -> bool:
        return not self.active and self.since is None and not self.running and (
            self.fired is None or now - self.fired >= cooldown)


Job = Callable[[], Awaitable[None]]
#: the rules a (device, metric) can trigger, with what the hot path touches of each
_PlanEntry = tuple[_Rule, Compiled, dict[str, _State], str | None, Compiled | None, str | None,
                   Any]
_Plan = tuple[_PlanEntry, ...]


class RuleEngine:
    """Evaluates rules on accepted readings; see the module docstring.

    ``ports`` carry out actions and answer device facts (:func:`gateway.rules.ports.ports_for`
    builds them onto the running gateway).
    """

    def __init__(self, rules: Sequence[RuleSpec], ports: RulePorts, metrics: CollectorRegistry,
                 state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ports = ports
        self.facts = ports.facts
        self.clock = clock
        self.rules = [_Rule(i, spec) for i, spec in enumerate(rules) if spec.enabled]
        self.state_path = state_dir / STATE_FILE if state_dir is not None else None
        self._devices: dict[str, _Device] = {}
        self._online: dict[str, bool] = {}
        self._info: dict[str, tuple[float, dict[str, Any]]] = {}
        self._env = _Env(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = False
        self._urgent = asyncio.Event()
        self._last_write = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._listening = False
        self._error_logged: dict[str, float] = {}
        self.referenced: set[str] = set()
        self.window_spans: dict[str, tuple[float, ...]] = {}
        #: metric → ((metric, span), span) for each window kept of it
        self._online_rules = [r for r in self.rules if r.uses_online]
        self._health_rules = [r for r in self.rules if r.health]
        #: gateway.* facts any condition or template reads: sampled once per tick
        self._health_keys: set[str] = set()
        self._health_restarts: dict[str, tuple[str | None, float]] = {}
        for rule in self.rules:
            for p in rule.programs:
                self._health_keys |= p.gateway.keys() - p.restarts.keys()
                self._health_restarts.update(p.restarts)
        self.health_values: dict[str, Any] = {}
        self._sampled_at = -math.inf
        self._health_errors: dict[str, int] = {}
        self._webhooks: WebhookClient | None = None
        self._failure_log = InputLog(log, ERROR_LOG_EVERY)
        for rule in self.rules:
            for p in rule.programs:
                self.referenced |= p.metrics
                for m, secs in p.spans:
                    self.window_spans[m] = tuple(sorted({*self.window_spans.get(m, ()), secs}))
        extremes = {key for rule in self.rules for p in rule.programs for key in p.extremes}
        self.window_keys: dict[str, _WindowKeys] = {
            m: tuple(((m, span), span, (m, span) in extremes) for span in spans)
            for m, spans in self.window_spans.items()}
        self.m_fired = Counter("gateway_rule_fired", "Rule firings (actions started)", ["rule"],
                               registry=metrics)
        self.m_cleared = Counter("gateway_rule_cleared", "Rules that cleared", ["rule"],
                                 registry=metrics)
        self.m_suppressed = Counter("gateway_rule_suppressed",
                                    "Firings suppressed by the rule's cooldown", ["rule"],
                                    registry=metrics)
        self.m_errors = Counter("gateway_rule_eval_errors",
                                "Conditions that failed to evaluate (treated as absent)",
                                ["rule"], registry=metrics)
        self.m_actions = Counter("gateway_rule_actions", "Actions that completed",
                                 ["rule", "action"], registry=metrics)
        self.m_action_failures = Counter("gateway_rule_action_failures", "Actions that failed",
                                         ["rule", "action"], registry=metrics)
        self.m_alerts = Counter("gateway_alerts", "Alerts raised by rules", ["severity"],
                                registry=metrics)
        self.m_dropped = Counter("gateway_rule_actions_dropped",
                                 "Firings whose actions were dropped (too many still running)",
                                 registry=metrics)
        self.m_state_errors = Counter("gateway_rule_state_write_errors",
                                      "Failed writes of the rule state file", registry=metrics)
        self.m_health_errors = Counter("gateway_rule_health_errors",
                                       "Health fact samples that failed (the facts are absent)",
                                       ["source"], registry=metrics)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load saved state and start the timer (``for`` deadlines, state writes)."""
        if self.state_path is not None:
            self._load_state()
        self._listen()
        if not self.rules:
            return
        if any(a.spec.webhook is not None for r in self.rules for a in r.actions + r.on_clear):
            # aiohttp takes a while to import: a thread does it, off the event loop
            module = await asyncio.to_thread(importlib.import_module, "gateway.rules.webhook")
            self._webhooks = module.WebhookClient()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="rules")
        if self.rules:
            log.info("rules: %d rule(s) loaded, %d state(s) restored", len(self.rules),
                     sum(len(r.states) for r in self.rules))

    async def stop(self) -> None:
        """Let running actions finish (bounded), then write the state a last time."""
        await cancel_and_wait(self._runner)
        self._runner = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=ACTION_TIMEOUT)
        if self._webhooks is not None:
            await self._webhooks.close()
        if self.rules:
            await self.save(force=True)

    async def settle(self, within: float = ACTION_TIMEOUT) -> None:
        """Wait (bounded) until the actions started so far have finished."""
        deadline = time.monotonic() + within
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - time.monotonic())

    def _listen(self) -> None:
        if not self._listening:
            self._listening = self.facts.add_listener(self.on_online)

    async def _run(self) -> None:
        while True:
            await wait_event(self._urgent, TICK)
            try:
                self._listen()  # the registry may appear after the core started
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep the timer alive; state still saved
                log.error("rules timer failed: %s: %s", type(exc).__name__, exc,
                          exc_info=log.isEnabledFor(logging.DEBUG))
            if self._urgent.is_set():
                # a firing: write soon, but never more often than STATE_MIN_SPACING
                gap = STATE_MIN_SPACING - (time.monotonic() - self._last_write)
                if gap > 0:
                    await asyncio.sleep(gap)
                self._urgent.clear()
                await self.save()
            elif self._dirty and time.monotonic() - self._last_write >= STATE_FLUSH_INTERVAL:
                await self.save()

    # -- the hot path ------------------------------------------------------------------------

    def observe(self, readings: Sequence[Reading]) -> None:
        """Pipeline observer: update values and windows, evaluate the relevant rules."""
        now = self.clock()
        devices = self._devices
        referenced = self.referenced
        window_keys = self.window_keys
        # first every value of the batch (a message carries temperature and humidity
        # together: a rule reading both must see both), then the rules
        d: _Device | None = None
        for r in readings:
            device, metric, value, _, ts = r
            if metric in referenced:
                if d is None or d.id != device:
                    d = devices.get(device)
                    if d is None:
                        d = self._new_device(device)
                d.values[metric] = value
                keys = window_keys.get(metric)
                if keys is not None:
                    _push(d.windows, keys, ts, value, now)
        skip = _ORIGIN.get()
        env = self._env
        env.now = now
        env.device = ""  # values and device facts are re-read once per device and batch
        d = None
        for r in readings:
            device, metric, value, unit, ts = r
            if d is None or d.id != device:
                d = devices.get(device)
                if d is None:
                    d = self._new_device(device)
            rules = d.plan.get(metric)
            if rules is None:
                rules = self._plan_for(d, metric)
            if not rules:
                continue
            if env.device != device:
                env.device = device
                env.values = d.values
                env.windows = d.windows
                env._info = None
            env.metric, env.value, env.unit, env.ts = metric, value, unit, ts
            memo: dict[str, Any] | None = None
            for rule, when, states, gkey, gleft, gop, gconst in rules:
                if skip and rule.name in skip:
                    continue
                if gop is not None:
                    # ``<left> OP constant`` decided here, without calling the condition:
                    # most readings leave most conditions false. Rules sharing ``left``
                    # (five thresholds on one average) compute it once per reading.
                    if gleft is None:
                        lv = value  # the reading's own metric
                    elif gkey is None:
                        try:
                            lv = gleft(env)
                        except Exception:  # noqa: BLE001 - the full evaluation reports it
                            lv = ABSENT
                    else:
                        if memo is None:
                            memo = {}
                        lv = memo.get(gkey, _MISSING)
                        if lv is _MISSING:
                            try:
                                lv = gleft(env)
                            except Exception:  # noqa: BLE001 - the full evaluation reports it
                                lv = ABSENT
                            memo[gkey] = lv
                    if lv is not ABSENT:
                        try:
                            if gop == ">":
                                passed = lv > gconst
                            elif gop == "<":
                                passed = lv < gconst
                            elif gop == ">=":
                                passed = lv >= gconst
                            elif gop == "<=":
                                passed = lv <= gconst
                            elif gop == "==":
                                passed = lv == gconst
                            else:
                                passed = lv != gconst
                        except TypeError:
                            passed = True  # the full evaluation reports it
                        if not passed:
                            if device in states:
                                self._step(rule, states[device], False, env, r)
                            continue
                try:
                    res = when(env)
                except Exception as exc:  # noqa: BLE001 - a bad value must not stop the pipeline
                    self._eval_failed(rule, env, exc)
                    continue
                # the common case, kept cheap: false, and nothing going on for this device
                if res or device in states:
                    self._step(rule, states.get(device), res, env, r)

    def _new_device(self, device: str) -> _Device:
        if len(self._devices) >= PLAN_MAX:
            # a flood of one-off device ids: start over rather than grow without bound
            log.warning("rules: %d devices tracked; forgetting their values and windows",
                        len(self._devices))
            self._devices.clear()
        d = self._devices[device] = _Device(device)
        return d

    def _plan_for(self, d: _Device, metric: str) -> _Plan:
        if len(d.plan) >= PLAN_PER_DEVICE:
            d.plan.clear()
        device = d.id
        chosen = [r for r in self.rules if not r.health and r.triggered_by(metric)
                  and r.matches_device(device)]
        shared: dict[str, int] = {}
        for r in chosen:
            if r.guard is not None and r.guard.metric != metric:
                shared[r.guard.key] = shared.get(r.guard.key, 0) + 1
        entries: list[_PlanEntry] = []
        for r in chosen:
            g = r.guard
            if g is None:
                entries.append((r, r.when, r.states, None, None, None, None))
            elif g.metric == metric:
                # the reading's own metric: its value is at hand
                entries.append((r, r.when, r.states, None, None, g.op, g.const))
            else:
                key = g.key if shared[g.key] > 1 else None
                entries.append((r, r.when, r.states, key, g.left, g.op, g.const))
        rules = tuple(entries)
        d.plan[metric] = rules
        return rules

    def relevant_rules(self, device: str, metric: str) -> list[str]:
        """Names of the rules a reading of ``metric`` from ``device`` evaluates."""
        d = self._devices.get(device) or self._new_device(device)
        plan = d.plan.get(metric)
        if plan is None:
            plan = self._plan_for(d, metric)
        return [entry[0].name for entry in plan]

    def _evaluate(self, rule: _Rule, env: _Env, reading: Reading | None) -> None:
        try:
            res = rule.when(env)
        except Exception as exc:  # noqa: BLE001 - a bad value must not stop the pipeline
            self._eval_failed(rule, env, exc)
            return
        self._step(rule, rule.states.get(env.device), res, env, reading)

    def _step(self, rule: _Rule, st: _State | None, res: Any, env: _Env,
              reading: Reading | None) -> None:
        """Advance one (rule, device) state given the condition's result ``res``."""
        if st is None:
            if res is ABSENT or not res:
                return
            st = rule.states[env.device] = _State()
        if st.active:
            if rule.clear is not None:
                try:
                    cleared = rule.clear(env)
                except Exception as exc:  # noqa: BLE001
                    self._eval_failed(rule, env, exc)
                    return
                if cleared is not ABSENT and cleared:
                    self._clear(rule, st, env)
                    return
            elif res is not ABSENT and not res:
                self._clear(rule, st, env)
                return
            if rule.level and res is not ABSENT and res:
                self._fire(rule, st, env)
            return
        if res is ABSENT:
            return
        if not res:
            if st.since is not None:
                st.since = None
                st.reading = None
                self._dirty = True
            return
        if rule.for_:
            st.reading = reading
            if st.since is None:
                st.since = env.now
                self._dirty = True
            if env.now - st.since < rule.for_:
                return
        self._fire(rule, st, env)

    def _eval_failed(self, rule: _Rule, env: _Env, exc: Exception) -> None:
        self.m_errors.labels(rule.name).inc()
        last = self._error_logged.get(rule.name, 0.0)
        now = time.monotonic()
        if now - last >= ERROR_LOG_EVERY:
            self._error_logged[rule.name] = now
            kind = "" if isinstance(exc, EvalError) else f"{type(exc).__name__}: "
            log.warning("rule %s: condition failed on %s %s=%r: %s%s (treated as absent; "
                        "logged once a minute)", rule.name, env.device, env.metric or "-",
                        env.value, kind, exc)

    # -- transitions --------------------------------------------------------------------------

    def _fire(self, rule: _Rule, st: _State, env: _Env) -> None:
        now = env.now
        st.since = None
        st.reading = None
        if rule.cooldown and st.fired is not None and now - st.fired < rule.cooldown:
            if not st.active:
                self._dirty = True
            st.active = True
            self.m_suppressed.labels(rule.name).inc()
            log.debug("rule %s on %s: in cooldown, not firing", rule.name, env.device)
            return
        held = self._hold(rule.actions, st)
        st.active = True
        st.fired = now
        self._dirty = True
        self._urgent.set()
        self.m_fired.labels(rule.name).inc()
        log.info("rule %s fired on %s (%s=%r)", rule.name, env.device, env.metric or "-",
                 env.value if env.value is not ABSENT else None)
        self._launch(rule, [(a.kind, self._prepare_safely(rule, a, env, "firing"), a.timeout)
                           for a in rule.actions], held)

    def _clear(self, rule: _Rule, st: _State, env: _Env) -> None:
        held = self._hold(rule.on_clear, st)
        st.active = False
        st.since = None
        st.reading = None
        self._dirty = True
        self.m_cleared.labels(rule.name).inc()
        log.info("rule %s cleared on %s", rule.name, env.device)
        if rule.on_clear:
            self._launch(rule, [(a.kind, self._prepare_safely(rule, a, env, "cleared"),
                                 a.timeout) for a in rule.on_clear], held)

    def tick(self, now: float | None = None) -> None:
        """Evaluate health rules on a fresh sample; fire rules whose ``for`` ran out without
        a new reading; drop idle states."""
        now = self.clock() if now is None else now
        if self._health_keys or self._health_restarts:
            self._sample_health(now)
            for rule in self._health_rules:
                self._evaluate(rule, self._health_env(rule, now), None)
        for rule in self.rules:
            for device, st in list(rule.states.items()):
                if not st.active and st.since is not None and now - st.since >= rule.for_ \
                        and not rule.health:
                    env = _Env(self).load(device, st.reading, now)
                    self._fire(rule, st, env)
                elif st.idle(rule.cooldown, now):
                    del rule.states[device]
                    self._dirty = True

    # -- health rules -------------------------------------------------------------------------

    def _sample_health(self, now: float) -> None:
        """One sample per tick (a firing wakes the timer early: the sample is reused)."""
        if 0 <= now - self._sampled_at < TICK * 0.9:
            return
        self._sampled_at = now
        health = self.ports.health
        if health is None:
            self.health_values = {}
            return
        try:
            self.health_values = health.sample(now, self._health_keys, self._health_restarts)
        except Exception as exc:  # noqa: BLE001 - facts absent this tick; rules go on
            self.health_values = {}
            health.errors["sampler"] = health.errors.get("sampler", 0) + 1
            log.error("health facts: sampling failed: %s: %s", type(exc).__name__, exc)
        for source, n in health.errors.items():
            seen = self._health_errors.get(source, 0)
            if n > seen:
                self.m_health_errors.labels(source).inc(n - seen)
                self._health_errors[source] = n

    def _health_env(self, rule: _Rule, now: float) -> _Env:
        """The gateway's pseudo-device, with the rule's first fact as metric and value."""
        health = self.ports.health
        device = health.device if health is not None else "gateway:gateway"
        env = _Env(self).load(device, None, now)
        key = rule.facts[0]
        env.metric, env.value, env.unit = key, self.health_values.get(key, ABSENT), unit_of(key)
        return env

    def on_online(self, device: str, online: bool) -> None:
        """Device registry listener: re-evaluate rules that read ``device.online``."""
        self._online[device] = online
        if not self._online_rules:
            return
        env = _Env(self).load(device, None, self.clock())
        skip = _ORIGIN.get()
        for rule in self._online_rules:
            if rule.name not in skip and rule.matches_device(device):
                self._evaluate(rule, env, None)

    # -- device facts ---------------------------------------------------------------------------

    def is_online(self, device: str) -> Any:
        o = self._online.get(device)
        if o is None:
            o = self.facts.is_online(device)
        return ABSENT if o is None else o

    def device_info(self, device: str) -> dict[str, Any]:
        now = time.monotonic()
        hit = self._info.get(device)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            info = dict(self.facts.info(device) or {})  # ours: ``adapter`` is added
        except Exception as exc:  # noqa: BLE001 - a registry bug must not stop rules
            log.warning("device registry lookup of %s failed: %s", device, exc)
            info = {}
        if ":" in device:
            info.setdefault("adapter", device.split(":", 1)[0])
        if len(self._info) >= PLAN_MAX:
            self._info.clear()
        self._info[device] = (now + INFO_TTL, info)
        return info

    # -- actions ----------------------------------------------------------------------------------

    def _prepare_safely(self, rule: _Rule, action: _Action, env: _Env, state: str) -> Job:
        try:
            return self._prepare(rule, action, env, state)
        except Exception as exc:  # noqa: BLE001 - reported as the action's failure
            detail = f"{action.kind}: cannot render: {type(exc).__name__}: {exc}"
            return lambda: self._fail(detail)

    def _prepare(self, rule: _Rule, action: _Action, env: _Env, state: str) -> Job:
        """Render an action now (values as they are at firing); return what runs later."""
        value = None if env.value is ABSENT else env.value
        event: dict[str, Any] = {
            "rule": rule.name, "state": state, "device": env.device,
            "metric": env.metric or None, "value": value, "unit": env.unit,
            "ts": env.ts,
        }
        if rule.health:
            event["condition"] = rule.spec.when if state == "firing" else \
                rule.spec.clear or f"not ({rule.spec.when})"
            event["facts"] = {k: self.health_values.get(k) for k in rule.facts}
        t = action.templates
        spec = action.spec
        if spec.webhook is not None:
            hook = spec.webhook
            if "message" in t:
                message = t["message"].render(env)
            else:
                shown = f" ({env.metric}={show_value(value)})" if env.metric else ""
                message = f"rule {rule.name} {state} on {env.device}{shown}"
            post = {**event, "severity": hook.severity, "message": message}
            return lambda: self._webhook(hook, post)
        if spec.alert is not None:
            severity = spec.alert.severity
            body = {**event, "severity": severity, "message": t["message"].render(env)}
            return lambda: self._alert(body)
        if spec.command is not None:
            device = t["device"].render(env) if "device" in t else env.device
            command = Command(device, spec.command.action, dict(spec.command.params))
            return lambda: self.ports.command(command)
        if spec.publish is not None:
            pub = spec.publish
            topic = t["topic"].render(env)
            payload = t["payload"].render(env) if "payload" in t else json.dumps(event)
            return lambda: self.ports.publish(pub.adapter, topic, payload.encode(), pub.qos,
                                              pub.retain)
        assert spec.set is not None and action.value is not None
        s = spec.set
        try:
            derived = action.value.fn(env)
        except EvalError as exc:
            raise_later = f"set {s.metric}: {exc}"
            return lambda: self._fail(raise_later)
        device = t["device"].render(env) if "device" in t else env.device
        if derived is ABSENT:
            return lambda: self._skip(f"set {s.metric}: value is absent")
        if isinstance(derived, float) and derived != derived:
            return lambda: self._fail(f"set {s.metric}: value is not a number")
        reading = Reading(device, s.metric, derived, s.unit, env.ts)
        return lambda: self.ports.derive(reading)

    def _hold(self, actions: Sequence[Any], st: _State) -> _State | None:
        """Before a transition with actions that will run: keep the state file at the
        state before it until they finish. The state to release then, or None."""
        if not actions or len(self._tasks) >= MAX_PENDING_ACTIONS:
            return None
        st.hold()
        return st

    def _launch(self, rule: _Rule, jobs: list[tuple[str, Job, float]],
                held: _State | None = None) -> None:
        if len(self._tasks) >= MAX_PENDING_ACTIONS:
            self.m_dropped.inc()
            log.error("rule %s: %d firings still running their actions; dropping this one",
                      rule.name, len(self._tasks))
            return
        origin = _ORIGIN.get() | {rule.name}
        task = asyncio.get_running_loop().create_task(self._run_jobs(rule, jobs, origin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if held is not None:
            task.add_done_callback(lambda _t: self._release(held))

    def _release(self, st: _State) -> None:
        """A transition's actions finished (done or failed): the file may show it now."""
        st.running -= 1
        if st.running == 0:
            st.before = None
            self._dirty = True
            self._urgent.set()

    async def _run_jobs(self, rule: _Rule, jobs: list[tuple[str, Job, float]],
                        origin: frozenset[str]) -> None:
        _ORIGIN.set(origin)
        for kind, job, timeout in jobs:
            try:
                await asyncio.wait_for(job(), timeout)
            except _Skipped:
                continue
            except Exception as exc:  # noqa: BLE001 - a failing action is counted, not fatal
                self.m_action_failures.labels(rule.name, kind).inc()
                detail = "timed out" if isinstance(exc, TimeoutError) else str(exc) or \
                    type(exc).__name__
                self._log_failure(rule.name, kind, detail)
                continue
            self.m_actions.labels(rule.name, kind).inc()

    def _log_failure(self, rule: str, kind: str, detail: str) -> None:
        """At most one line a minute per (rule, action kind), with the number suppressed."""
        self._failure_log.log(logging.ERROR, rule, kind, "rule %s: %s action failed: %s",
                              rule, kind, detail)

    async def _webhook(self, spec: WebhookAction, body: dict[str, Any]) -> None:
        if self._webhooks is None:
            raise ActionError("webhooks are not started (the engine is not running)")
        await self._webhooks.post(spec, body)

    async def _alert(self, body: dict[str, Any]) -> None:
        severity = body["severity"]
        self.m_alerts.labels(severity).inc()
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(severity, logging.ERROR)
        log.log(level, "ALERT %s [%s] %s: %s", body["rule"], severity, body["device"],
                body["message"])
        await self.ports.alert(body)

    async def _fail(self, detail: str) -> None:
        raise ActionError(detail)

    async def _skip(self, detail: str) -> None:
        log.debug("%s; nothing derived", detail)
        raise _Skipped()

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state worth keeping across a restart, JSON-ready."""
        now = self.clock()
        out: dict[str, Any] = {}
        for rule in self.rules:
            for device, st in rule.states.items():
                active, since, fired, r = st.saved()
                if not active and since is None and (
                        fired is None or now - fired >= rule.cooldown):
                    continue  # idle as far as the file goes
                entry = out.setdefault(rule.name, {"fp": rule.fingerprint, "devices": {}})
                entry["devices"][device] = {
                    "active": active, "since": since, "fired": fired,
                    "reading": [r.metric, r.value, r.unit, r.ts] if r is not None else None,
                }
        return {"version": STATE_VERSION, "saved": now, "rules": out}

    async def save(self, force: bool = False) -> None:
        """Write the state file if anything changed (or ``force``)."""
        if self.state_path is None or not (self._dirty or force):
            return
        previous = self._writing
        if previous is not None and not previous.done():
            # a write cancelled mid-way (stop) still runs in its thread: never two at once
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        self._dirty = False
        self._last_write = time.monotonic()
        data = self.snapshot()
        write = asyncio.ensure_future(asyncio.to_thread(write_json_atomic, self.state_path, data,
                                                          separators=(",", ":")))
        self._writing = write
        try:
            await asyncio.shield(write)
        except Exception as exc:  # noqa: BLE001 - keep running; retry on the next change
            self._dirty = True
            self.m_state_errors.inc()
            log.error("could not write rule state %s: %s (will retry)", self.state_path, exc)

    def _load_state(self) -> None:
        assert self.state_path is not None
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown format (version {data.get('version')!r})"
                                 if isinstance(data, dict) else "not a JSON object")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("rule state %s unreadable (%s); starting without it: rules in a `for` "
                      "or cooldown start over", self.state_path, exc)
            return
        by_name = {r.name: r for r in self.rules}
        for name, entry in (data.get("rules") or {}).items():
            rule = by_name.get(name)
            if rule is None or not isinstance(entry, dict):
                continue
            if entry.get("fp") != rule.fingerprint:
                log.info("rule %s changed since its state was saved; starting it afresh", name)
                continue
            for device, s in (entry.get("devices") or {}).items():
                try:
                    st = _State()
                    st.active = bool(s["active"])
                    st.since = float(s["since"]) if s.get("since") is not None else None
                    st.fired = float(s["fired"]) if s.get("fired") is not None else None
                    if s.get("reading"):
                        m, v, u, ts = s["reading"]
                        st.reading = Reading(device, m, v, u, float(ts))
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("rule state: skipping %s/%s: %s", name, device, exc)
                    continue
                rule.states[device] = st


class _Skipped(Exception):
    pass
