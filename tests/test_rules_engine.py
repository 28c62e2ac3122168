"""The rule engine in-process: readings go through a real Pipeline into a real SQLite outbox.

Time is a hand-advanced clock so that ``for``, windows and cooldowns are exact; every
other part (outbox, pipeline, device registry, supervisor with the simulator adapter)
is the real one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.adapters.base import AdapterContext
from gateway.adapters.simulator import SimulatorAdapter, SimulatorConfig
from gateway.adapters.supervisor import Supervisor
from gateway.core.config import DeclaredDevice, DevicesSection
from gateway.core.pipeline import AdapterSink, Pipeline, SinkCounters
from gateway.core.registry import DeviceRegistry
from gateway.reading import Command, CommandResult, Reading
from gateway.rules.config import RuleSpec
from gateway.rules.engine import STATE_FILE, RuleEngine
from gateway.rules.ports import ActionError, ports_for
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.waiting import eventually

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Host:
    """What the daemon's Gateway object offers the engine (its ports are built onto this)."""

    outbox: Any
    pipeline: Pipeline
    metrics: CollectorRegistry
    supervisor: Any = None
    devices: Any = None
    engine: RuleEngine | None = None
    clock: Clock = field(default_factory=Clock)

    async def feed(self, *readings: Reading) -> None:
        assert await self.pipeline.accept(list(readings))
        assert self.engine is not None
        await self.engine.settle(5.0)

    def r(self, metric: str, value: Any, device: str = "sim:a", unit: str | None = None,
          ts: float | None = None) -> Reading:
        return Reading(device, metric, value, unit, self.clock() if ts is None else ts)

    async def alerts(self) -> list[dict[str, Any]]:
        return await alerts_in(self.outbox)

    def count(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)


async def alerts_in(outbox: Any) -> list[dict[str, Any]]:
    """The bodies of the alert events in ``outbox``, oldest first."""
    return [e.body for e in await outbox.read_events(0, 1000) if e.kind == "alert"]


def sample(metrics: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric's value (0 when it has not been counted yet)."""
    return metrics.get_sample_value(name, labels) or 0.0


def rule(**kw: Any) -> RuleSpec:
    kw.setdefault("name", "r")
    kw.setdefault("actions", [{"alert": {"message": "{device} {metric}={value}"}}])
    return RuleSpec.model_validate(kw)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    yield box
    await box.close()


async def start(host: Host, rules: Sequence[RuleSpec], state_dir: Path | None = None,
                metrics: CollectorRegistry | None = None) -> RuleEngine:
    engine = RuleEngine(rules, ports_for(host), metrics or host.metrics, state_dir=state_dir,
                        clock=host.clock)
    host.pipeline.observers.append(engine.observe)
    host.engine = engine
    await engine.start()
    return engine


@pytest.fixture
def host(outbox: Outbox) -> Host:
    return Host(outbox, Pipeline(outbox), CollectorRegistry())


async def test_threshold_alert_is_queued_logged_and_counted(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    await start(host, [rule(name="hot", when="temperature > 30", actions=[
        {"alert": {"severity": "critical", "message": "{device} at {value} {unit}"}}])])
    caplog.set_level(logging.INFO, "gateway.rules")
    await host.feed(host.r("temperature", 25.0, unit="Cel"))
    assert await host.alerts() == []
    await host.feed(host.r("temperature", 31.5, unit="Cel"))
    (alert,) = await host.alerts()
    assert alert["rule"] == "hot" and alert["severity"] == "critical"
    assert alert["message"] == "sim:a at 31.5 Cel" and alert["state"] == "firing"
    assert alert["device"] == "sim:a" and alert["value"] == 31.5
    assert host.count("gateway_alerts_total", severity="critical") == 1
    assert host.count("gateway_rule_fired_total", rule="hot") == 1
    assert "ALERT hot [critical] sim:a: sim:a at 31.5 Cel" in caplog.text


async def test_flapping_around_a_threshold_fires_once_with_hysteresis(host: Host) -> None:
    await start(host, [rule(when="temperature > 30", clear="temperature < 28")])
    for v in (29.9, 30.1, 29.9, 30.2, 29.5, 30.05, 28.5, 30.3, 27.9):
        await host.feed(host.r("temperature", v))
        host.clock.advance(1)
    assert len(await host.alerts()) == 1
    assert host.count("gateway_rule_cleared_total", rule="r") == 1
    await host.feed(host.r("temperature", 30.5))  # cleared at 27.9: a new crossing fires
    assert len(await host.alerts()) == 2


async def test_without_clear_every_new_crossing_fires_unless_in_cooldown(host: Host) -> None:
    await start(host, [rule(name="edge", when="temperature > 30"),
                       rule(name="cool", when="temperature > 30", cooldown="1m")])
    for v in (31, 29, 31, 29, 31):
        await host.feed(host.r("temperature", v))
        host.clock.advance(10)
    rules = [a["rule"] for a in await host.alerts()]
    assert rules.count("edge") == 3
    assert rules.count("cool") == 1
    assert host.count("gateway_rule_suppressed_total", rule="cool") == 2
    host.clock.advance(60)
    await host.feed(host.r("temperature", 29))
    await host.feed(host.r("temperature", 31))
    assert [a["rule"] for a in await host.alerts()].count("cool") == 2


async def test_for_waits_out_its_duration_and_restarts_when_the_condition_breaks(
        host: Host) -> None:
    engine = await start(host, [rule(when="temperature > 30", **{"for": "5m"})])
    await host.feed(host.r("temperature", 31))
    host.clock.advance(240)
    await host.feed(host.r("temperature", 29))  # broken after 4 min: starts over
    host.clock.advance(10)
    await host.feed(host.r("temperature", 32))
    host.clock.advance(290)
    await host.feed(host.r("temperature", 33))
    assert await host.alerts() == []
    host.clock.advance(10)
    await host.feed(host.r("temperature", 33))
    (alert,) = await host.alerts()
    assert alert["value"] == 33
    # the device goes quiet while the condition holds: the timer fires without a reading
    await host.feed(host.r("temperature", 35, device="sim:b"))
    host.clock.advance(299)
    engine.tick()
    await engine.settle()
    assert len(await host.alerts()) == 1
    host.clock.advance(1)
    engine.tick()
    await engine.settle()
    alerts = await host.alerts()
    assert len(alerts) == 2 and alerts[1]["device"] == "sim:b" and alerts[1]["value"] == 35


async def test_level_mode_fires_on_each_reading_rate_limited_by_cooldown(host: Host) -> None:
    await start(host, [rule(when="power > 100", mode="level", cooldown="10s")])
    for _ in range(12):
        await host.feed(host.r("power", 150))
        host.clock.advance(2)
    assert len(await host.alerts()) == 3  # at 0 s, 10 s and 20 s


async def test_window_average_includes_only_readings_inside_the_window(host: Host) -> None:
    await start(host, [rule(when="avg(temperature, 60s) > 25", clear="avg(temperature, 60s) < 24",
                            actions=[{"alert": {"message": "{round(avg(temperature, 60s), 2)}"}}])])
    await host.feed(host.r("temperature", 40))
    (first,) = await host.alerts()
    assert first["message"] == "40"
    host.clock.advance(30)
    await host.feed(host.r("temperature", 20))  # (40, 20): 30, still above
    assert host.count("gateway_rule_cleared_total", rule="r") == 0
    host.clock.advance(30)
    # at +60 s the 40 reading sits exactly on the window's edge: it is out, (20, 20) is 20
    await host.feed(host.r("temperature", 20))
    assert host.count("gateway_rule_cleared_total", rule="r") == 1
    host.clock.advance(1)
    await host.feed(host.r("temperature", 24.5))
    host.clock.advance(1)
    await host.feed(host.r("temperature", 40))  # (20, 20, 24.5, 40) averages 26.125
    second = (await host.alerts())[1]
    assert second["message"] == "26.12"


async def test_count_and_rate_over_windows(host: Host) -> None:
    await start(host, [
        rule(name="chatty", when="count(motion, 1m) >= 3"),
        rule(name="rising", when="rate(energy, 10m) > 0.5",
             actions=[{"alert": {"message": "{round(rate(energy, 10m), 3)}"}}]),
    ])
    for _ in range(3):
        await host.feed(host.r("motion", True))
        host.clock.advance(25)
    assert [a["rule"] for a in await host.alerts()] == ["chatty"]
    await host.feed(host.r("energy", 100.0))
    host.clock.advance(100)
    await host.feed(host.r("energy", 120.0))  # 0.2 per second
    assert len(await host.alerts()) == 1
    host.clock.advance(100)
    await host.feed(host.r("energy", 220.0))  # 120 over 200 s: 0.6 per second
    assert (await host.alerts())[-1] == {**(await host.alerts())[-1], "rule": "rising",
                                         "message": "0.6"}


async def test_conditions_combine_metrics_of_the_same_device_only(host: Host) -> None:
    await start(host, [rule(when="temperature > 30 and humidity > 70")])
    await host.feed(host.r("humidity", 80, device="sim:b"))
    await host.feed(host.r("temperature", 35, device="sim:a"))  # sim:a has no humidity yet
    assert await host.alerts() == []
    # one message carrying both metrics: the rule sees both, whatever their order
    await host.feed(host.r("temperature", 36, device="sim:a"), host.r("humidity", 75,
                                                                      device="sim:a"))
    (alert,) = await host.alerts()
    assert alert["device"] == "sim:a"


async def test_only_matching_devices_and_trigger_metrics_evaluate(host: Host) -> None:
    engine = await start(host, [
        rule(name="freezers", device="sim:freezer-*", when="temperature > -10"),
        rule(name="any_value", metric=["door*"], when="value == 'open'"),
    ])
    await host.feed(host.r("temperature", 5, device="sim:fridge-1"),
                    host.r("temperature", 5, device="sim:freezer-1"),
                    host.r("door_front", "open", device="sim:fridge-1"),
                    host.r("window", "open", device="sim:fridge-1"))
    assert sorted((a["rule"], a["device"], a["metric"]) for a in await host.alerts()) == [
        ("any_value", "sim:fridge-1", "door_front"), ("freezers", "sim:freezer-1", "temperature")]
    # the index: unrelated series have no rules at all
    assert engine.relevant_rules("sim:fridge-1", "temperature") == []
    assert engine.relevant_rules("sim:fridge-1", "window") == []
    assert engine.relevant_rules("sim:fridge-1", "door_back") == ["any_value"]
    assert engine.relevant_rules("sim:freezer-1", "temperature") == ["freezers"]


async def test_device_fields_and_offline_transitions_come_from_the_registry(
        host: Host, tmp_path: Path) -> None:
    registry = DeviceRegistry(
        DevicesSection(offline_after=60, declared=[DeclaredDevice(
            id="sim:a", name="Freezer", type="climate", tags=["cold"])]),
        tmp_path / "devices.json", host.metrics)
    await registry.start()
    host.devices = registry
    host.pipeline.observers.append(registry.observe)
    try:
        await start(host, [
            rule(name="tagged", when="'cold' in device.tags and temperature > -10",
                 actions=[{"alert": {"message": "{device.name} ({device.type}) warm"}}]),
            rule(name="lost", when="device.online == false", clear="device.online",
                 actions=[{"alert": {"message": "{device.name} is offline"}}],
                 on_clear=[{"alert": {"severity": "info", "message": "{device.name} is back"}}]),
        ])
        await host.feed(host.r("temperature", 0), host.r("temperature", 0, device="sim:b"))
        assert [a["message"] for a in await host.alerts()] == ["Freezer (climate) warm"]
        import time as _time
        assert registry.check_silence(_time.time() + 120) == 2
        await host.engine.settle() if host.engine else None
        offline = [a for a in await host.alerts() if a["rule"] == "lost"]
        assert sorted(a["message"] for a in offline) == ["Freezer is offline", "n/a is offline"]
        await host.feed(host.r("humidity", 50))  # sim:a reports again: online
        assert (await host.alerts())[-1]["message"] == "Freezer is back"
        assert (await host.alerts())[-1]["state"] == "cleared"
    finally:
        await registry.stop()


async def test_set_derives_a_reading_through_the_pipeline_without_looping(host: Host) -> None:
    await start(host, [
        rule(name="dew", when="exists(temperature) and exists(humidity)", mode="level",
             metric="humidity",
             actions=[{"set": {"metric": "dew_point", "unit": "Cel",
                               "value": "round(dewpoint(temperature, humidity), 2)"}}]),
        # reacts to its own output: without the guard this would feed itself forever
        rule(name="echo", when="exists(counter)", mode="level",
             actions=[{"set": {"metric": "counter", "value": "counter + 1"}}]),
        rule(name="damp", when="dew_point > 15"),
    ])
    await host.feed(host.r("temperature", 25.0), host.r("humidity", 70.0))
    await host.feed(host.r("counter", 1))
    await host.engine.settle() if host.engine else None
    rows = await host.outbox.read_telemetry(0, 100)
    readings = [r for row in rows for r in row.readings]
    dew = [r for r in readings if r.metric == "dew_point"]
    assert len(dew) == 1 and dew[0].value == pytest.approx(19.1, abs=0.05)
    assert dew[0].unit == "Cel" and dew[0].device == "sim:a"
    assert [r.value for r in readings if r.metric == "counter"] == [1, 2]
    # the derived reading is seen by other rules
    assert [a["rule"] for a in await host.alerts()] == ["damp"]


async def test_command_action_reaches_the_simulator_and_a_failing_one_is_counted(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    counters = SinkCounters(host.metrics)
    ctx = AdapterContext("sim", AdapterSink(host.pipeline, "sim", counters), Path("."),
                         host.metrics)
    sim_cfg = SimulatorConfig(type="simulator", name="sim", devices=2, interval=3600)
    adapters: list[SimulatorAdapter] = []

    def factory() -> SimulatorAdapter:
        adapters.append(SimulatorAdapter(sim_cfg, ctx))
        return adapters[-1]

    host.supervisor = Supervisor({"sim": ("simulator", factory)}, host.metrics)
    await host.supervisor.start()
    try:
        await start(host, [
            rule(name="plug_off", when="power > 100",
                 actions=[{"command": {"action": "off"}},
                          {"command": {"device": "sim:nope", "action": "off"}},
                          {"alert": {"message": "still alerted"}}]),
        ])
        await host.feed(host.r("power", 150, device="sim:sim-1"))
        assert adapters[0]._state["sim:sim-1"].on is False
        assert adapters[0]._state["sim:sim-2"].on is True
        assert host.count("gateway_rule_actions_total", rule="plug_off", action="command") == 1
        assert host.count("gateway_rule_action_failures_total", rule="plug_off",
                          action="command") == 1
        assert "command action failed: command off to sim:nope: unknown_device" in caplog.text
        # the failure stopped neither the other actions nor the pipeline
        assert [a["message"] for a in await host.alerts()] == ["still alerted"]
        await host.feed(host.r("power", 10, device="sim:sim-1"))
    finally:
        await host.supervisor.stop()


class _FailingEvents:
    """An outbox whose event writes fail, as a dying SD card does (cannot be provoked here)."""

    def __init__(self, real: Outbox) -> None:
        self.real = real

    def submit(self, readings: Sequence[Reading]) -> asyncio.Future[bool] | None:
        return self.real.submit(readings)

    async def append(self, readings: Sequence[Reading]) -> bool:
        return await self.real.append(readings)

    async def append_event(self, kind: str, body: dict[str, Any]) -> bool:
        raise OSError(5, "Input/output error")


async def test_a_failing_action_is_logged_and_counted_and_the_pipeline_goes_on(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    real = host.outbox
    host.outbox = _FailingEvents(real)
    await start(host, [rule(name="hot", when="temperature > 30"),
                       rule(name="pub", when="temperature > 30",
                            actions=[{"publish": {"topic": "alerts/{device}"}}])])
    for v in (31, 20, 35):
        await host.feed(host.r("temperature", v))
    assert host.count("gateway_rule_action_failures_total", rule="hot", action="alert") == 2
    assert host.count("gateway_rule_action_failures_total", rule="pub", action="publish") == 2
    assert "alert action failed: [Errno 5] Input/output error" in caplog.text
    assert "no running adapter can publish" in caplog.text
    rows = await real.read_telemetry(0, 100)
    assert [r.value for row in rows for r in row.readings] == [31, 20, 35]


async def test_a_condition_that_cannot_evaluate_is_counted_not_raised(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    await start(host, [rule(name="num", when="state > 3")])
    await host.feed(host.r("state", "open"), host.r("state", 5))
    assert host.count("gateway_rule_eval_errors_total", rule="num") == 1
    assert "condition failed on sim:a state='open'" in caplog.text
    assert len(await host.alerts()) == 1


async def test_pending_for_and_active_state_survive_a_restart_without_double_firing(
        outbox: Outbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    clock = Clock()
    rules = [rule(name="warm", when="temperature > 30", clear="temperature < 25",
                  **{"for": "10m"})]

    async def run_engine() -> tuple[Host, RuleEngine]:
        h = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
        return h, await start(h, rules, state_dir=state)

    h1, e1 = await run_engine()
    await h1.feed(h1.r("temperature", 31))
    clock.advance(300)
    await h1.feed(h1.r("temperature", 32))
    await e1.stop()
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["rules"]["warm"]["devices"]["sim:a"]["since"] == T0

    h2, e2 = await run_engine()  # restarted 5 min into the 10 min
    clock.advance(299)
    await h2.feed(h2.r("temperature", 33))
    assert await h2.alerts() == []
    clock.advance(1)
    await h2.feed(h2.r("temperature", 33))
    assert len(await h2.alerts()) == 1
    await e2.stop()

    h3, e3 = await run_engine()  # restarted while active: no second alert
    clock.advance(60)
    await h3.feed(h3.r("temperature", 34))
    e3.tick()
    await e3.settle()
    assert len(await h3.alerts()) == 1
    await e3.stop()


async def test_cooldown_survives_a_restart(outbox: Outbox, tmp_path: Path) -> None:
    clock = Clock()
    rules = [rule(name="cool", when="temperature > 30", cooldown="1h")]
    h1 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e1 = await start(h1, rules, state_dir=tmp_path)
    await h1.feed(h1.r("temperature", 31))
    await h1.feed(h1.r("temperature", 20))
    await e1.stop()
    h2 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e2 = await start(h2, rules, state_dir=tmp_path)
    clock.advance(1800)
    await h2.feed(h2.r("temperature", 31))
    assert len(await h2.alerts()) == 1
    assert h2.count("gateway_rule_suppressed_total", rule="cool") == 1
    await e2.stop()


async def test_a_firing_is_written_to_the_state_file_without_a_clean_stop(
        host: Host, tmp_path: Path) -> None:
    engine = await start(host, [rule(name="hot", when="temperature > 30")], state_dir=tmp_path)
    await host.feed(host.r("temperature", 35))
    path = tmp_path / STATE_FILE
    await eventually(lambda: path.exists() and "hot" in json.loads(path.read_text())["rules"],
                     5, "the firing in the state file")
    assert json.loads(path.read_text())["rules"]["hot"]["devices"]["sim:a"]["active"] is True
    await engine.stop()


async def test_a_firing_reaches_the_state_file_only_once_its_alert_is_durable(
        outbox: Outbox, tmp_path: Path) -> None:
    """A crash between the state write and the alert's commit would lose the alert for
    good (the restored rule is active and does not fire again): the file keeps the state
    before the firing until the alert is in the outbox."""
    clock = Clock()
    rules = [rule(name="hot", when="temperature > 30")]
    release = asyncio.Event()

    class SlowOutbox:  # the real outbox, whose commit is held until the test lets it go
        async def append_event(self, kind: str, body: dict[str, Any]) -> bool:
            await release.wait()
            return await outbox.append_event(kind, body)

    h1 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e1 = RuleEngine(rules, ports_for(Host(SlowOutbox(), h1.pipeline, h1.metrics)),
                    h1.metrics, state_dir=tmp_path, clock=clock)
    h1.pipeline.observers.append(e1.observe)
    await e1.start()
    path = tmp_path / STATE_FILE

    def saved() -> dict[str, Any] | None:
        if not path.exists():
            return None
        got = json.loads(path.read_text())["rules"].get("hot", {}).get("devices", {})
        return got.get("sim:a")

    assert await h1.pipeline.accept([h1.r("temperature", 35)])
    await e1.save(force=True)  # what a timer write would put there now
    assert saved() is None or saved()["active"] is False  # type: ignore[index]
    release.set()
    await e1.settle(5.0)
    # the release asks for a prompt write
    await eventually(lambda: (s := saved()) is not None and s["active"] is True, 5,
                     "the firing in the state file")
    assert saved() == {"active": True, "since": None, "fired": T0, "reading": None}
    assert len(await h1.alerts()) == 1
    await e1.stop()


async def test_a_firing_whose_alert_never_landed_fires_again_after_a_crash(
        outbox: Outbox, tmp_path: Path) -> None:
    clock = Clock()
    rules = [rule(name="hot", when="temperature > 30")]

    class StuckOutbox:  # the commit never finishes before the "crash"
        async def append_event(self, kind: str, body: dict[str, Any]) -> bool:
            await asyncio.Event().wait()
            return False

    h1 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e1 = RuleEngine(rules, ports_for(Host(StuckOutbox(), h1.pipeline, h1.metrics)),
                    h1.metrics, state_dir=tmp_path, clock=clock)
    h1.pipeline.observers.append(e1.observe)
    await e1.start()
    assert await h1.pipeline.accept([h1.r("temperature", 35)])
    await e1.save(force=True)
    # the process dies: nothing more runs, nothing more is written
    dying = [*e1._tasks, e1._runner]
    for task in dying:
        assert task is not None
        task.cancel()
    await asyncio.wait(dying, timeout=5)  # type: ignore[arg-type]
    h2 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e2 = await start(h2, rules, state_dir=tmp_path)
    clock.advance(5)
    await h2.feed(h2.r("temperature", 36))
    assert [a["value"] for a in await h2.alerts()] == [36]
    await e2.stop()


async def test_a_changed_rule_does_not_inherit_old_state(outbox: Outbox, tmp_path: Path) -> None:
    clock = Clock()
    h1 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e1 = await start(h1, [rule(name="x", when="temperature > 30")], state_dir=tmp_path)
    await h1.feed(h1.r("temperature", 31))
    await e1.stop()
    h2 = Host(outbox, Pipeline(outbox), CollectorRegistry(), clock=clock)
    e2 = await start(h2, [rule(name="x", when="temperature > 32")], state_dir=tmp_path)
    await h2.feed(h2.r("temperature", 33))
    assert len(await h2.alerts()) == 2
    await e2.stop()


async def test_a_backlog_reading_older_than_the_window_does_not_count(host: Host) -> None:
    await start(host, [rule(when="count(temperature, 1m) >= 2",
                            actions=[{"alert": {"message": "{avg(temperature, 1m)}"}}])])
    await host.feed(host.r("temperature", 20.0))
    await host.feed(host.r("temperature", 90.0, ts=host.clock() - 3600))  # an hour late
    assert await host.alerts() == []
    host.clock.advance(1)
    await host.feed(host.r("temperature", 22.0))
    (alert,) = await host.alerts()
    assert alert["message"] == "21"


class _SlowDevices:
    """A supervisor whose device takes 2 s to answer (no adapter here is that slow)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, command: Any) -> Any:
        from gateway.reading import CommandResult

        await asyncio.sleep(2.0)
        self.sent.append(command.device)
        return CommandResult.delivered()


async def test_a_slow_action_does_not_hold_up_the_pipeline(host: Host) -> None:
    slow = _SlowDevices()
    host.supervisor = slow
    engine = await start(host, [rule(name="slow", when="power > 100",
                                     actions=[{"command": {"action": "off"}}])])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(20):
        assert await host.pipeline.accept([host.r("power", 150, device=f"sim:p{i}")])
    assert loop.time() - t0 < 1.0  # twenty firings, none waited for its device
    assert slow.sent == []
    await engine.settle(10)
    assert sorted(slow.sent) == sorted(f"sim:p{i}" for i in range(20))


async def test_min_and_max_windows_follow_values_leaving_the_window(host: Host) -> None:
    await start(host, [rule(when="max(humidity, 1m) - min(humidity, 1m) > 20",
                            actions=[{"alert": {"message":
                                                "{min(humidity, 1m)}..{max(humidity, 1m)}"}}])])
    for v in (50, 70, 55):  # spread 20: not above
        await host.feed(host.r("humidity", v))
        host.clock.advance(20)
    await host.feed(host.r("humidity", 30))  # 50 left the window: 30..70
    (alert,) = await host.alerts()
    assert alert["message"] == "30..70"


# -- the ports the engine acts through -----------------------------------------------------------


@dataclass
class Parts:
    """What the daemon offers, each part possibly still missing."""

    outbox: Any = None
    pipeline: Any = None
    supervisor: Any = None
    devices: Any = None


class _Publisher:
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.sent: list[tuple[str, bytes, int, bool]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> CommandResult:
        self.sent.append((topic, payload, qos, retain))
        return self.result


class _Roster:
    def __init__(self, adapters: dict[str, Any], result: CommandResult | None = None) -> None:
        self.adapters = adapters
        self.result = result or CommandResult.delivered()

    async def send(self, command: Command) -> CommandResult:
        return self.result


async def test_ports_say_which_part_is_missing() -> None:
    ports = ports_for(Parts())
    cases = [
        (ports.alert({"rule": "r"}), "no outbox to queue the alert in"),
        (ports.command(Command("sim:a", "off", {})), "adapters are not running yet"),
        (ports.publish(None, "t", b"x", 1, False),
         "no running adapter can publish (add an mqtt adapter)"),
        (ports.publish("mqtt", "t", b"x", 1, False),
         "adapter 'mqtt' is not running or cannot publish"),
        (ports.derive(Reading("sim:a", "dew_point", 1.0, "Cel", T0)),
         "no pipeline to feed the derived reading into"),
    ]
    for call, message in cases:
        with pytest.raises(ActionError) as err:
            await call
        assert str(err.value) == message
    assert ports.facts.is_online("sim:a") is None
    assert ports.facts.info("sim:a") is None
    assert ports.facts.add_listener(lambda d, o: None) is False


async def test_ports_look_parts_up_when_used_and_report_refusals() -> None:
    parts = Parts()
    ports = ports_for(parts)  # built before the supervisor exists, as in the daemon
    refused = _Publisher(CommandResult.refused("not connected to the device broker"))
    ok = _Publisher(CommandResult.sent("published to t"))
    parts.supervisor = _Roster({"sim": object(), "a": refused, "b": ok},
                               CommandResult(False, "unknown_device", "no adapter owns it"))
    await ports.publish("b", "t", b"{}", 0, True)
    assert ok.sent == [("t", b"{}", 0, True)]
    with pytest.raises(ActionError) as err:
        await ports.publish(None, "t", b"{}", 1, False)  # the first that can: "a"
    assert str(err.value) == "publish to t: refused: not connected to the device broker"
    with pytest.raises(ActionError) as err:
        await ports.publish("sim", "t", b"{}", 1, False)
    assert str(err.value) == "adapter 'sim' is not running or cannot publish"
    with pytest.raises(ActionError) as err:
        await ports.command(Command("sim:z", "off", {}))
    assert str(err.value) == "command off to sim:z: unknown_device: no adapter owns it"


async def test_facts_come_from_the_registry_without_values(outbox: Outbox,
                                                           tmp_path: Path) -> None:
    registry = DeviceRegistry(DevicesSection(declared=[DeclaredDevice(id="sim:a", name="A")]),
                              tmp_path / "devices.json", CollectorRegistry())
    await registry.start()
    try:
        pipeline = Pipeline(outbox)
        pipeline.observers.append(registry.observe)
        parts = Parts(outbox=outbox, pipeline=pipeline)
        ports = ports_for(parts)
        parts.devices = registry  # appears after the ports are built
        await ports.derive(Reading("sim:a", "temperature", 21.0, "Cel", T0))
        info = ports.facts.info("sim:a")
        assert info is not None and info["name"] == "A" and "values" not in info
        entry = registry.get("sim:a")
        assert entry is not None and "values" in entry
        assert ports.facts.is_online("sim:a") is True
        assert ports.facts.is_online("sim:nope") is False
        assert ports.facts.info("sim:nope") is None
        assert ports.facts.add_listener(lambda d, o: None) is True
    finally:
        await registry.stop()
