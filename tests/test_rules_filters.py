"""Upload filters: what reaches the outbox, through a real Pipeline and SQLite outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.core.pipeline import Pipeline
from gateway.reading import Reading
from gateway.rules.config import FilterSpec
from gateway.rules.filters import STATE_PREFIX, WINDOW_GRACE, FilterSet
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox

T0 = 1_800_000_020.0  # 20 s into a minute: windows of 60 s start at T0 - 20


def fs(*specs: dict[str, Any], metrics: CollectorRegistry | None = None, emit: Any = None,
       clock: Any = None) -> FilterSet:
    kw = {"clock": clock} if clock else {}
    return FilterSet([FilterSpec.model_validate(s) for s in specs], metrics=metrics, emit=emit,
                     **kw)


def r(metric: str, value: Any, ts: float, device: str = "sim:a", unit: str | None = None
      ) -> Reading:
    return Reading(device, metric, value, unit, ts)


def run(f: FilterSet, readings: Sequence[Reading]) -> list[Any]:
    """Feed one reading per batch, confirming each as the pipeline would; return kept values."""
    kept = []
    for x in readings:
        out = f.apply([x])
        f.confirm([x])
        kept.extend(y.value for y in out)
    return kept


def test_unfiltered_series_pass_untouched_as_the_same_batch() -> None:
    f = fs({"metric": "humidity", "drop": True})
    batch = [r("temperature", 1, T0), r("battery", 90, T0)]
    assert f.apply(batch) is batch


def test_drop_and_first_match_wins() -> None:
    f = fs({"device": "sim:keep-*", "metric": "humidity"},  # no options: passes everything
           {"metric": "humidity", "drop": True})
    out = f.apply([r("humidity", 50, T0), r("humidity", 51, T0, device="sim:keep-1"),
                   r("temperature", 20, T0)])
    assert [(x.device, x.metric) for x in out] == [("sim:keep-1", "humidity"),
                                                   ("sim:a", "temperature")]


def test_absolute_deadband_sends_only_changes_of_at_least_the_band() -> None:
    f = fs({"metric": "temperature", "deadband": 0.5})
    values = [20.0, 20.2, 20.4, 20.5, 20.6, 19.9, 20.0, 21.0]
    assert run(f, [r("temperature", v, T0 + i) for i, v in enumerate(values)]) == \
        [20.0, 20.5, 19.9, 21.0]


def test_percent_deadband_scales_with_the_last_sent_value() -> None:
    f = fs({"metric": "power", "deadband": "10%"})
    values = [100.0, 109.0, 111.0, 120.0, 123.0, 0.0, 0.0, 0.1]
    assert run(f, [r("power", v, T0 + i) for i, v in enumerate(values)]) == \
        [100.0, 111.0, 123.0, 0.0, 0.1]


def test_deadband_on_text_sends_changes_only() -> None:
    f = fs({"metric": "state", "deadband": 0})
    values = ["open", "open", "closed", "closed", "open"]
    assert run(f, [r("state", v, T0 + i) for i, v in enumerate(values)]) == \
        ["open", "closed", "open"]


def test_min_interval_and_heartbeat() -> None:
    f = fs({"metric": "temperature", "min_interval": "10s"})
    assert run(f, [r("temperature", i, T0 + 4 * i) for i in range(8)]) == [0, 3, 6]
    g = fs({"metric": "temperature", "deadband": 1, "heartbeat": "1m"})
    # a flat line still gets one value a minute, so the cloud knows the device is alive
    assert run(g, [r("temperature", 20.0, T0 + 20 * i) for i in range(7)]) == [20.0] * 3


def test_sampling_keeps_one_in_n() -> None:
    f = fs({"metric": "seq", "sample": 3})
    assert run(f, [r("seq", i, T0 + i) for i in range(10)]) == [0, 3, 6, 9]


def test_several_readings_of_one_series_in_one_batch_are_thinned_too() -> None:
    f = fs({"metric": "temperature", "min_interval": "10s"})
    batch = [r("temperature", i, T0 + 4 * i) for i in range(8)]
    assert [x.value for x in f.apply(batch)] == [0, 3, 6]


class RefusingStore:
    """A store that refuses ``refuse`` appends, as a full outbox does, then accepts."""

    def __init__(self) -> None:
        self.refuse = 0
        self.rows: list[Reading] = []

    def submit(self, readings: Sequence[Reading]) -> asyncio.Future[bool] | None:
        if self.refuse:
            self.refuse -= 1
            return None
        self.rows.extend(readings)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut


async def test_a_refused_batch_sent_again_gets_the_same_decisions() -> None:
    store = RefusingStore()
    pipeline = Pipeline(store)
    f = fs({"metric": "temperature", "deadband": 0.5, "min_interval": "5s"})
    pipeline.filters.append(f.apply)
    pipeline.observers.append(f.confirm)
    assert await pipeline.accept([r("temperature", 20.0, T0)])
    batch = [r("temperature", 21.0, T0 + 10)]
    store.refuse = 1
    assert not await pipeline.accept(batch)  # refused: the device keeps it and resends
    assert await pipeline.accept(batch)
    assert await pipeline.accept([r("temperature", 21.0, T0 + 10)])  # a duplicate resend
    assert [x.value for x in store.rows] == [20.0, 21.0]


def test_aggregate_windows_close_at_their_boundaries() -> None:
    f = fs({"metric": "power", "aggregate": {"window": "1m",
                                             "functions": ["avg", "min", "max", "count"]}})
    start = T0 - 20  # aligned window start
    # 40 s of the first window, then readings of the second and third windows
    readings = [r("power", v, start + t, unit="W") for t, v in
                [(20, 10.0), (40, 30.0), (59.9, 20.0), (60, 100.0), (119, 200.0), (125, 5.0)]]
    # the windows closed by a later reading join that reading's batch
    out = f.apply(readings)
    assert f.take_queued() == []
    assert [(x.metric, x.value, x.ts, x.unit) for x in out] == [
        ("power_avg", 20.0, start, "W"), ("power_min", 10.0, start, "W"),
        ("power_max", 30.0, start, "W"), ("power_count", 3, start, None),
        ("power_avg", 150.0, start + 60, "W"), ("power_min", 100.0, start + 60, "W"),
        ("power_max", 200.0, start + 60, "W"), ("power_count", 2, start + 60, None)]


def test_aggregate_ignores_resends_and_counts_late_readings() -> None:
    reg = CollectorRegistry()
    f = fs({"name": "agg", "metric": "power", "aggregate": {"window": 60,
                                                           "functions": ["sum"]}}, metrics=reg)
    start = T0 - 20
    f.apply([r("power", 1.0, start + 1), r("power", 2.0, start + 2)])
    f.apply([r("power", 1.0, start + 1), r("power", 2.0, start + 2)])  # a refused batch, again
    out = f.apply([r("power", 4.0, start + 61), r("power", 8.0, start + 30)])  # 8 is late
    assert [x.value for x in out] == [3.0]
    assert reg.get_sample_value("gateway_filter_readings_total",
                                {"filter": "agg", "reason": "duplicate"}) == 2
    assert reg.get_sample_value("gateway_filter_readings_total",
                                {"filter": "agg", "reason": "late"}) == 1


def test_text_and_infinite_values_in_an_aggregated_series_are_sent_as_they_are() -> None:
    f = fs({"metric": "*", "aggregate": {"window": 60}})
    out = f.apply([r("state", "open", T0), r("power", 1.0, T0), r("power", float("inf"), T0 + 1)])
    assert [x.value for x in out] == ["open", float("inf")]
    f.apply([r("power", 3.0, T0 + 2)])
    assert [x.value for x in f.close_windows(everything=True) and f.take_queued()] == [2.0, 1.0,
                                                                                     3.0]


def test_a_quiet_series_window_closes_after_its_end_by_the_clock() -> None:
    now = [T0]
    f = fs({"metric": "power", "aggregate": {"window": 60, "functions": ["last"]}},
           clock=lambda: now[0])
    f.apply([r("power", 7.0, T0)])
    now[0] = T0 - 20 + 60 + WINDOW_GRACE - 0.1
    assert f.close_windows() == 0
    now[0] += 0.2
    assert f.close_windows() == 1
    assert [x.value for x in f.take_queued()] == [7.0]


async def test_aggregates_reach_the_outbox_and_open_windows_outlive_a_stop(
        tmp_path: Path) -> None:
    spec = {"metric": "power", "aggregate": {"window": 60, "functions": ["avg", "count"]}}
    outbox = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    f = fs(spec, emit=outbox.append)
    pipeline = Pipeline(outbox)
    pipeline.filters.append(f.apply)
    pipeline.stateful.append(f)
    await f.start()
    start = T0 - 20
    assert await pipeline.accept([r("power", 1.0, start + 1), r("temperature", 20.0, start + 1)])
    assert await pipeline.accept([r("power", 3.0, start + 2)])
    assert await pipeline.accept([r("power", 10.0, start + 61)])
    assert await pipeline.accept([r("power", 30.0, start + 62)])
    await f.stop()  # the second window stays open: its state is in the outbox
    rows = await outbox.read_telemetry(0, 100)
    got = [(x.metric, x.value, x.ts) for row in rows for x in row.readings]
    assert got == [("temperature", 20.0, start + 1), ("power_avg", 2.0, start),
                   ("power_count", 2, start)]
    await outbox.close()

    # the next run reopens the window from the file, ignores a resend of what it holds,
    # and closes it by the clock
    outbox = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    try:
        (key,) = outbox.state(STATE_PREFIX)
        assert "sim:a" in key
        again = fs(spec, emit=outbox.append, clock=lambda: start + 60 + 60 + WINDOW_GRACE)
        assert again.restore(outbox.state(STATE_PREFIX)) == 1
        assert again.apply([r("power", 30.0, start + 62)]) == []  # a resend
        again.close_windows()
        await again.stop()
        rows = await outbox.read_telemetry(0, 100)
        got = [(x.metric, x.value, x.ts) for row in rows for x in row.readings]
        assert got[-2:] == [("power_avg", 20.0, start + 60), ("power_count", 2, start + 60)]
        assert outbox.state(STATE_PREFIX) == {}
    finally:
        await outbox.close()


async def test_a_window_whose_filter_changed_is_closed_at_start_with_its_own_functions(
        tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    try:
        f = fs({"metric": "power", "aggregate": {"window": 60, "functions": ["max"]}},
               emit=outbox.append)
        pipeline = Pipeline(outbox)
        pipeline.filters.append(f.apply)
        pipeline.stateful.append(f)
        assert await pipeline.accept([r("power", 5.0, T0), r("power", 7.0, T0 + 1)])
        changed = fs({"metric": "power", "aggregate": {"window": 300}}, emit=outbox.append)
        assert changed.restore(outbox.state(STATE_PREFIX)) == 0
        assert [(x.metric, x.value) for x in changed.take_queued()] == [("power_max", 7.0)]
    finally:
        await outbox.close()
