"""Health rules in-process: ``gateway.*`` facts through the real engine and a real outbox.

Time is a hand-advanced clock and the engine's timer is driven by hand (``engine.tick()``),
so ``for``, ``clear`` and ``cooldown`` are exact. The outbox is the real one; the thermal
zone and the firmware's throttling flags are files written by the test (their paths are
configurable); free space is a real 2 MiB tmpfs when this machine lets us mount one. The
uplink and the supervisor are stand-ins with the real shapes (``connected`` /
``disconnected_since``, :class:`AdapterState`): their own tests cover how they get there,
and the daemon test drives the real uplink against a broker that stops.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.adapters.supervisor import AdapterState
from gateway.core.config import GatewaySection
from gateway.reading import Reading
from gateway.rules.config import HealthSection, RuleSpec
from gateway.rules.engine import RuleEngine
from gateway.rules.health import parse_throttled
from gateway.rules.ports import ports_for
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.test_rules_engine import T0, Clock, alerts_in, sample
from tests.waiting import eventually


@dataclass
class FakeUplink:
    connected: bool = False
    disconnected_since: float | None = T0


@dataclass
class FakeSupervisor:
    states: dict[str, AdapterState] = field(default_factory=dict)
    adapters: dict[str, Any] = field(default_factory=dict)

    async def send(self, command: Any) -> Any:
        raise AssertionError("not used")


@dataclass
class Config:
    state_dir: Path
    health: HealthSection
    gateway: GatewaySection = field(default_factory=lambda: GatewaySection(id="gw-test"))


@dataclass
class Parts:
    """What the daemon's Gateway offers (the engine's ports are built onto this)."""

    outbox: Outbox
    config: Config
    uplink: FakeUplink | None = None
    supervisor: FakeSupervisor | None = None
    pipeline: Any = None
    devices: Any = None
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    clock: Clock = field(default_factory=Clock)
    engine: RuleEngine | None = None

    async def tick(self, advance: float = 1.0) -> None:
        self.clock.advance(advance)
        assert self.engine is not None
        self.engine.tick()
        await self.engine.settle(5.0)

    async def alerts(self) -> list[dict[str, Any]]:
        return await alerts_in(self.outbox)

    def count(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)


def rule(**kw: Any) -> RuleSpec:
    kw.setdefault("name", "r")
    kw.setdefault("actions", [{"alert": {"message": "{metric} is {value}"}}])
    kw.setdefault("on_clear", [{"alert": {"severity": "info", "message": "{metric} ok"}}])
    return RuleSpec.model_validate(kw)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    box = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    health = HealthSection(thermal_path=str(tmp_path / "temp"),
                           throttled_path=str(tmp_path / "get_throttled"))
    p = Parts(box, Config(tmp_path, health))
    yield p
    if p.engine is not None:
        await p.engine.stop()
    await box.close()


async def start(parts: Parts, *rules: RuleSpec) -> RuleEngine:
    engine = RuleEngine(list(rules), ports_for(parts), parts.metrics, clock=parts.clock)
    parts.engine = engine
    await engine.start()
    return engine


async def test_outbox_backing_up_fires_after_for_once_and_clears_when_drained(
        parts: Parts) -> None:
    await start(parts, rule(name="backlog", when="gateway.outbox_depth > 3", **{"for": "10s"}))
    assert await parts.outbox.append([Reading("sim:a", "t", float(i), None, T0 + i)
                                      for i in range(5)])
    await parts.tick()  # seen true: the `for` starts
    for _ in range(9):
        await parts.tick()
    assert await parts.alerts() == []  # true for 9 s of a 10 s `for`
    await parts.tick()
    (alert,) = await parts.alerts()
    assert alert["device"] == "gateway:gw-test" and alert["state"] == "firing"
    assert alert["metric"] == "gateway.outbox_depth" and alert["value"] == 5
    assert alert["condition"] == "gateway.outbox_depth > 3"
    assert alert["facts"] == {"gateway.outbox_depth": 5}
    assert alert["message"] == "gateway.outbox_depth is 5"
    for _ in range(30):
        await parts.tick()  # still backed up: fires once
    assert len(await parts.alerts()) == 1
    rows = await parts.outbox.read_telemetry(0, 100)
    parts.outbox.ack("telemetry", rows[0].id, rows[-1].id)
    await eventually(lambda: parts.outbox.stats().depth == 0, 5)
    await parts.tick()
    firing, cleared = await parts.alerts()
    assert cleared["state"] == "cleared" and cleared["message"] == "gateway.outbox_depth ok"
    assert cleared["value"] == 0
    assert parts.count("gateway_rule_cleared_total", rule="backlog") == 1


async def test_oldest_reading_age_is_measured_from_its_timestamp(parts: Parts) -> None:
    await start(parts, rule(name="stale", when="gateway.outbox_oldest_age > 2h"))
    assert await parts.outbox.append([Reading("sim:a", "t", 1.0, None, T0 - 7000)])
    await parts.tick()
    assert await parts.alerts() == []
    await parts.tick(300)
    (alert,) = await parts.alerts()
    assert alert["unit"] == "s" and alert["value"] == pytest.approx(7301)


async def test_uplink_down_for_an_hour_alerts_once_and_clears_when_connected(
        parts: Parts) -> None:
    parts.uplink = FakeUplink(connected=False, disconnected_since=T0)
    await start(parts, rule(name="offline", when="gateway.uplink_down_for > 1h",
                            actions=[{"alert": {"message": "uplink down for {round(value)} s"}}]))
    await parts.tick(3599)
    assert await parts.alerts() == []
    await parts.tick(2)
    (alert,) = await parts.alerts()
    assert alert["message"] == "uplink down for 3601 s"
    await parts.tick(600)
    assert len(await parts.alerts()) == 1
    parts.uplink.connected, parts.uplink.disconnected_since = True, None
    await parts.tick()
    assert [a["state"] for a in await parts.alerts()] == ["firing", "cleared"]


async def test_no_uplink_configured_means_absent_neither_fires_nor_clears(parts: Parts) -> None:
    await start(parts, rule(name="offline", when="not gateway.uplink_connected"))
    for _ in range(5):
        await parts.tick(3600)
    assert await parts.alerts() == []


async def test_adapter_restarting_repeatedly_fires_and_cooldown_holds(parts: Parts) -> None:
    mqtt = AdapterState("mqtt", "mqtt")
    parts.supervisor = FakeSupervisor({"mqtt": mqtt, "coap": AdapterState("coap", "coap")})
    await start(parts, rule(name="flapping", when="gateway.adapter_restarts(mqtt, 10m) > 3",
                            cooldown="1h"),
                rule(name="any_flapping", when="gateway.adapter_restarts(10m) > 5",
                     on_clear=[]))

    def restart(n: int) -> None:
        for _ in range(n):
            mqtt.restart_times.append(parts.clock())
            parts.clock.advance(1)

    restart(3)
    await parts.tick()
    assert await parts.alerts() == []
    restart(1)
    await parts.tick()
    (alert,) = await parts.alerts()
    assert alert["metric"] == "gateway.adapter_restarts(mqtt, 10m)" and alert["value"] == 4
    await parts.tick(600)  # the restarts age out of the window: cleared
    assert [a["state"] for a in await parts.alerts()] == ["firing", "cleared"]
    restart(6)  # again within the hour: suppressed by the cooldown
    await parts.tick()
    assert [a["rule"] for a in await parts.alerts()] == ["flapping", "flapping", "any_flapping"]
    assert parts.count("gateway_rule_suppressed_total", rule="flapping") == 1


async def test_cpu_temperature_from_the_thermal_zone_file(parts: Parts, tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    await start(parts, rule(name="hot", when="gateway.cpu_temp > 80", clear="gateway.cpu_temp < 75",
                            actions=[{"alert": {"message": "CPU at {value} {unit}"}}]))
    await parts.tick()  # no thermal zone (not a Pi): absent
    temp.write_text("61500\n")
    await parts.tick()
    temp.write_text("82250\n")
    await parts.tick()
    (alert,) = await parts.alerts()
    assert alert["message"] == "CPU at 82.25 Cel" and alert["unit"] == "Cel"
    temp.write_text("78000\n")  # hysteresis: not cleared yet
    await parts.tick()
    temp.unlink()  # gone: absent, neither clears nor fires
    await parts.tick()
    assert len(await parts.alerts()) == 1
    temp.write_text("70000\n")
    await parts.tick()
    assert [a["state"] for a in await parts.alerts()] == ["firing", "cleared"]


async def test_garbage_in_the_thermal_file_is_absent_counted_and_logged_once(
        parts: Parts, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "temp").write_text("hot!\n")
    await start(parts, rule(name="hot", when="gateway.cpu_temp > 80"))
    for _ in range(3):
        await parts.tick()
    assert await parts.alerts() == []
    assert parts.count("gateway_rule_health_errors_total", source="thermal") == 3
    assert caplog.text.count("cannot read the thermal") == 1


async def test_undervoltage_from_the_firmware_flags(parts: Parts, tmp_path: Path) -> None:
    flags = tmp_path / "get_throttled"
    await start(parts, rule(name="power", when="gateway.undervoltage"),
                rule(name="was_throttled", when="gateway.throttled_occurred", on_clear=[]))
    flags.write_text("0\n")
    await parts.tick()
    assert await parts.alerts() == []
    flags.write_text("50005\n")  # the sysfs file: hex without 0x; under-voltage now
    await parts.tick()
    assert sorted(a["rule"] for a in await parts.alerts()) == ["power", "was_throttled"]
    flags.write_text("throttled=0x50000\n")  # vcgencmd's form: over now, happened since boot
    await parts.tick()
    got = [(a["rule"], a["state"]) for a in await parts.alerts()]
    assert got.count(("power", "cleared")) == 1 and ("was_throttled", "cleared") not in got


def test_throttled_flags_parse_both_forms_and_refuse_garbage() -> None:
    assert parse_throttled("throttled=0x50005\n") == 0x50005
    assert parse_throttled("50005") == 0x50005
    assert parse_throttled("0x0") == 0
    for bad in ("", "throttled=", "zz", "0x1ffffffff"):
        with pytest.raises(ValueError):
            parse_throttled(bad)


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


async def test_state_directory_filling_up_fires_and_clears(parts: Parts, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as disk:
        parts.config.health = HealthSection(disk_path=str(disk))
        await start(parts, rule(name="disk", when="gateway.free_percent < 50",
                                actions=[{"alert": {"message": "{round(value)} % free, "
                                                               "{gateway.free_bytes} bytes"}}]))
        await parts.tick()
        assert await parts.alerts() == []
        (disk / "fill").write_bytes(b"\0" * 1_500_000)
        await parts.tick()
        (alert,) = await parts.alerts()
        assert alert["unit"] == "%" and alert["value"] < 50
        assert "% free, " in alert["message"] and "n/a" not in alert["message"]
        (disk / "fill").unlink()
        await parts.tick()
        assert [a["state"] for a in await parts.alerts()] == ["firing", "cleared"]


async def test_nothing_is_sampled_without_health_rules(parts: Parts, tmp_path: Path) -> None:
    (tmp_path / "temp").write_text("garbage")
    await start(parts, RuleSpec.model_validate(
        {"name": "t", "when": "temperature > 3", "actions": [{"alert": {"message": "x"}}]}))
    await parts.tick()
    assert parts.engine is not None and parts.engine.health_values == {}
    assert parts.count("gateway_rule_health_errors_total", source="thermal") == 0


@pytest.mark.parametrize(("spec", "message"), [
    ({"when": "gateway.cpu_temp > 80 and temperature > 3"},
     "which has no device metrics (temperature); write two rules"),
    ({"when": "gateway.cpu_temp > 80", "device": "zigbee:*"}, "remove device: and metric:"),
    ({"when": "gateway.cpu_temperature > 80"}, "unknown gateway fact gateway.cpu_temperature"),
    ({"when": "gateway.adapter_restarts(mqtt) > 3"}, "needs a window such as 10m or 1h"),
])
def test_bad_health_rules_are_refused_with_what_to_do(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"rule 'r'|unknown gateway fact|needs a window") as err:
        rule(**spec)
    assert message in str(err.value)
