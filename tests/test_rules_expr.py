"""The condition language: parsing, three-valued logic, functions, templates, errors."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.rules.expr import (
    ABSENT,
    EvalError,
    ExprSyntaxError,
    Window,
    compile_expr,
    compile_template,
    dewpoint,
)


class Env:
    """A hand-built evaluation context: the engine's own is tested in test_rules_engine."""

    def __init__(self, values: dict[str, Any] | None = None, metric: str = "temperature",
                 value: Any = 20.0, info: dict[str, Any] | None = None, now: float = 1000.0,
                 windows: dict[str, list[tuple[float, Any]]] | None = None,
                 ts: float = 1000.0) -> None:
        self.device = "sim:a"
        self.metric = metric
        self.value = value
        self.unit: str | None = "Cel"
        self.ts = ts
        self.now = now
        self.values = values or {}
        self._info = info or {}
        self._windows = windows or {}

    def latest(self, metric: str) -> Any:
        if metric == self.metric:
            return self.value
        return self.values.get(metric, ABSENT)

    @property
    def windows(self) -> _Windows:
        return _Windows(self._windows)

    def info(self, key: str) -> Any:
        return self._info.get(key, ABSENT)


class _Windows:
    """Windows built on demand from lists of (ts, value), whatever the length asked."""

    def __init__(self, items: dict[str, list[tuple[float, Any]]]) -> None:
        self.items = items

    def get(self, key: tuple[str, float]) -> Window | None:
        metric, seconds = key
        if metric not in self.items:
            return None
        w = Window(seconds)
        for ts, v in self.items[metric]:
            w.push(ts, v)
        return w


def ev(text: str, env: Env | None = None) -> Any:
    return compile_expr(text).fn(env or Env())


@pytest.mark.parametrize("text,expected", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("-2 - -3", 1),
    ("7 % 4", 3),
    ("10 / 4", 2.5),
    ("1 < 2 < 3", True),
    ("1 < 3 < 2", False),
    ("2 >= 2 and 3 != 4", True),
    ("not 1 > 2", True),
    ("'a' in ['a', 'b']", True),
    ("'c' not in ['a', 'b']", True),
    ("5m == 300", True),
    ("500ms + 1s", 1.5),
    ("true and not false", True),
    ("abs(-3) + round(2.6)", 6),
    ("round(3.14159, 2)", 3.14),
    ("\"it's\" == 'it\\'s'", True),
    ("1e3 == 1000", True),
])
def test_expressions_compute_like_arithmetic_and_logic(text: str, expected: Any) -> None:
    assert ev(text) == expected


def test_bare_names_are_the_devices_current_metric_values() -> None:
    env = Env(values={"humidity": 80.0}, metric="temperature", value=31.0)
    assert ev("temperature > 30 and humidity > 70", env) is True
    assert ev("value == temperature", env) is True
    assert ev("metric == 'temperature' and unit == 'Cel'", env) is True


def test_an_absent_metric_makes_comparisons_absent_not_false() -> None:
    env = Env(values={}, metric="temperature", value=31.0)
    assert ev("humidity > 70", env) is ABSENT
    assert ev("not humidity > 70", env) is ABSENT
    assert ev("humidity + 1", env) is ABSENT
    # three-valued and/or: a known operand decides when it can
    assert ev("humidity > 70 and temperature < 0", env) is False
    assert ev("humidity > 70 or temperature > 30", env) is True
    assert ev("humidity > 70 and temperature > 30", env) is ABSENT
    assert ev("exists(humidity)", env) is False
    assert ev("exists(temperature)", env) is True


def test_device_fields_come_from_the_device_description() -> None:
    env = Env(info={"name": "Freezer", "type": "climate", "tags": ["kitchen", "cold"]})
    assert ev("device.name == 'Freezer' and 'cold' in device.tags", env) is True
    assert ev("device.location == 'x'", env) is ABSENT
    assert ev("device == 'sim:a'", env) is True


def test_window_functions_use_only_values_inside_the_window() -> None:
    # now = 1000: a 60 s window holds ts in (940, 1000]
    win = {"temperature": [(900.0, 100.0), (940.0, 50.0), (950.0, 10.0), (980.0, 20.0),
                           (1000.0, 30.0)]}
    env = Env(windows=win)
    assert ev("avg(temperature, 60s)", env) == 20.0
    assert ev("min(temperature, 1m)", env) == 10.0
    assert ev("max(temperature, 60)", env) == 30.0
    assert ev("count(temperature, 60s)", env) == 3
    assert ev("sum(temperature, 60s)", env) == 60.0
    assert ev("rate(temperature, 60s)", env) == pytest.approx(20.0 / 50.0)
    assert ev("max(temperature, 2m)", env) == 100.0
    assert ev("avg(humidity, 5m)", env) is ABSENT
    assert ev("count(humidity, 5m)", env) == 0


def test_time_of_day_functions_use_the_readings_local_time() -> None:
    import time as _time

    ts = _time.mktime((2026, 1, 5, 23, 30, 0, 0, 0, -1))  # a Monday, 23:30 local
    env = Env(ts=ts)
    assert ev("hour() == 23 and minute() == 30 and weekday() == 0", env) is True
    assert ev('between("22:00", "06:00")', env) is True
    assert ev('between("08:00", "18:00")', env) is False


def test_dewpoint_matches_the_magnus_formula() -> None:
    assert dewpoint(20.0, 50.0) == pytest.approx(9.26, abs=0.05)
    assert ev("round(dewpoint(temperature, humidity), 1)",
              Env(values={"humidity": 50.0}, value=20.0)) == 9.3


def test_type_errors_at_run_time_raise_eval_error() -> None:
    with pytest.raises(EvalError):
        ev("value > 3", Env(value="open"))
    with pytest.raises(EvalError):
        ev("1 / (value - 20)", Env(value=20.0))


@pytest.mark.parametrize("text,pos,fragment", [
    ("temperature > (3", 17, "expected ')'"),
    ("temperature = 3", 13, "write =="),
    ("temperature >", 14, "end of expression"),
    ("temperature > 3 humidity", 17, "unexpected 'humidity'"),
    ("temperature > 'open", 15, "unterminated string"),
    ("", 1, "empty expression"),
    ("frobnicate(temperature) > 3", 1, "unknown function frobnicate()"),
    ("avg(temperature) > 3", 1, "avg() takes a metric and a window"),
    ("avg(3, 5m) > 3", 5, "takes a metric name first"),
    ("avg(temperature, humidity) > 3", 18, "needs a window"),
    ("abs(1, 2)", 1, "abs() takes 1 argument"),
    ("value.__class__", 6, "only device.<field>"),
    ("__import__('os')", 1, "unknown function __import__()"),
    ('between("25:00", "06:00")', 9, "times of day"),
    ("temperature > 3 $", 17, "unexpected character '$'"),
    ("3x > 1", 1, "malformed number"),
])
def test_syntax_errors_name_the_position(text: str, pos: int, fragment: str) -> None:
    with pytest.raises(ExprSyntaxError) as err:
        compile_expr(text)
    assert err.value.pos + 1 == pos, str(err.value)
    assert fragment in str(err.value)


def test_compiled_program_knows_what_it_reads() -> None:
    p = compile_expr("avg(temperature, 5m) > 3 and humidity < 50 or device.online == false")
    assert p.metrics == {"temperature", "humidity"}
    assert p.windows == {"temperature": 300.0}
    assert p.device_fields == {"online"}
    assert not p.reading_fields


def test_templates_render_expressions_and_mark_absent_values() -> None:
    t = compile_template("{device.name}: {round(value, 1)} {unit} (humidity {humidity}) {{x}}")
    out = t.render(Env(info={"name": "Freezer"}, value=-3.14159))
    assert out == "Freezer: -3.1 Cel (humidity n/a) {x}"


def test_template_errors_point_into_the_template() -> None:
    with pytest.raises(ExprSyntaxError) as err:
        compile_template("at {value >} now")
    assert err.value.pos + 1 == 12
    with pytest.raises(ExprSyntaxError) as err:
        compile_template("open {value")
    assert "without a matching" in str(err.value)


def test_incremental_window_matches_a_full_recount() -> None:
    import random

    rng = random.Random(7)
    w = Window(30.0)
    seen: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(2000):
        t += rng.uniform(0, 2)
        v = round(rng.uniform(-50, 50), 1)
        w.push(t, v)
        seen.append((t, v))
        inside = [x for ts, x in seen if ts > t - 30.0]
        assert w.aggregate("min", t) == min(inside)
        assert w.aggregate("max", t) == max(inside)
        assert w.aggregate("count", t) == len(inside)
        assert w.aggregate("avg", t) == pytest.approx(sum(inside) / len(inside), abs=1e-6)


def test_nan_and_infinity_do_not_poison_a_window() -> None:
    w = Window(60.0)
    for t, v in [(1.0, 10.0), (2.0, float("nan")), (3.0, float("inf")), (4.0, 20.0)]:
        w.push(t, v)
    assert w.aggregate("avg", 4.0) == 15.0
    assert w.aggregate("count", 4.0) == 4
    assert w.aggregate("max", 4.0) == 20.0
    assert w.aggregate("avg", 62.5) == 20.0  # after the 10 left, the sum is still right
