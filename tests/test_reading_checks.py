"""Readings are checked once where they enter the core; what cannot be kept never reaches
the outbox, is counted with its reason and logged at a bounded rate."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.core.config import DevicesSection, ReadingsSection
from gateway.core.pipeline import AdapterSink, Pipeline, SinkCounters
from gateway.core.registry import DeviceRegistry
from gateway.logs import InputLog
from gateway.reading import Reading, ReadingLimits
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox

NOW = 1_800_000_000.0
LIMITS = ReadingLimits()


def r(value: Any = 21.5, ts: Any = NOW, device: Any = "mqtt:kitchen", metric: Any = "temperature",
      unit: Any = "Cel") -> Reading:
    return Reading(device, metric, value, unit, ts)


@pytest.mark.parametrize(("reading", "reason"), [
    (r(value=math.inf), "value_not_finite"),
    (r(value=-math.inf), "value_not_finite"),
    (r(value=math.nan), "value_not_finite"),
    (r(value=1e305), "value_out_of_range"),
    (r(value=2**64), "value_out_of_range"),
    (r(value="x" * 1025), "string_too_long"),
    (r(value=[1, 2]), "value_type"),
    (r(value=None), "value_type"),
    (r(ts=math.inf), "ts_not_finite"),
    (r(ts=1e308 + 1e308), "ts_not_finite"),
    (r(ts="now"), "ts_type"),
    (r(ts=NOW - 400 * 86400), "ts_too_old"),
    (r(ts=0.0), "ts_too_old"),
    (r(ts=NOW + 2 * 86400), "ts_in_future"),
    (r(device=""), "bad_device_id"),
    (r(device="kitchen"), "bad_device_id"),
    (r(device="mqtt:" + "x" * 300), "bad_device_id"),
    (r(metric=""), "bad_metric"),
    (r(metric="m" * 101), "bad_metric"),
    (r(unit="u" * 40), "bad_unit"),
])
def test_a_reading_the_store_cannot_keep_is_named_with_its_reason(reading: Reading,
                                                                   reason: str) -> None:
    assert LIMITS.problems([r(), reading, r()], NOW) == [(1, reason)]


@pytest.mark.parametrize("reading", [
    r(), r(value=True), r(value=0), r(value=-(2**62)), r(value="on"), r(value=""),
    r(ts=int(NOW)), r(ts=NOW - 364 * 86400), r(ts=NOW + 3600), r(unit=None),
])
def test_ordinary_readings_pass(reading: Reading) -> None:
    assert LIMITS.problems([reading], NOW) == []


def test_the_window_is_configurable() -> None:
    limits = ReadingsSection.model_validate({"max_past": "1h", "max_future": "10s",
                                             "max_string": 4}).limits()
    assert limits.problems([r(ts=NOW - 7200), r(ts=NOW + 60), r(value="abcde"), r()], NOW) == [
        (0, "ts_too_old"), (1, "ts_in_future"), (2, "string_too_long")]


_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.booleans(), st.text(max_size=1100), st.none(), st.binary(max_size=8),
                    st.lists(st.integers(), max_size=2))
_times = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                   st.floats(min_value=NOW - 400 * 86400, max_value=NOW + 2 * 86400),
                   st.text(max_size=5))
_names = st.one_of(st.text(max_size=220), st.just("mqtt:a"), st.integers())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.builds(Reading, _names, _names, _values,
                          st.one_of(st.none(), st.text(max_size=40)), _times), max_size=8))
def test_what_passes_the_checks_can_be_stored_and_what_fails_is_named(
        readings: list[Reading]) -> None:
    problems = LIMITS.problems(readings, NOW)
    bad = {i for i, _ in problems}
    assert len(bad) == len(problems)  # one reason per reading
    for i, reading in enumerate(readings):
        if i in bad:
            continue
        # what passes is what the outbox encodes without loss or error
        assert isinstance(reading.device, str) and ":" in reading.device
        assert isinstance(reading.metric, str) and reading.metric
        assert isinstance(reading.value, (bool, int, float, str))
        assert not isinstance(reading.value, float) or math.isfinite(reading.value)
        assert isinstance(reading.ts, (int, float)) and math.isfinite(reading.ts)
        assert NOW - LIMITS.max_past <= reading.ts <= NOW + LIMITS.max_future
        round(reading.ts * 1000)


class ListStore:
    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    def submit(self, readings: Sequence[Reading]) -> asyncio.Future[bool]:
        self.batches.append(list(readings))
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut


def sink(store: Any, metrics: CollectorRegistry, pipeline: Pipeline | None = None
         ) -> tuple[AdapterSink, Pipeline]:
    pipeline = pipeline or Pipeline(store)
    return AdapterSink(pipeline, "mqtt", SinkCounters(metrics)), pipeline


async def registered(tmp_path: Path, metrics: CollectorRegistry, store: ListStore,
                     **devices: Any) -> tuple[DeviceRegistry, AdapterSink]:
    """A started registry wired into a pipeline as the daemon does, and an adapter's sink."""
    registry = DeviceRegistry(DevicesSection.model_validate(devices), tmp_path / "devices.json",
                              metrics)
    await registry.start()
    pipeline = Pipeline(store)
    pipeline.observers.append(registry.observe)
    pipeline.screen = registry.screen
    return registry, sink(store, metrics, pipeline)[0]


async def test_bad_readings_are_dropped_counted_and_the_rest_of_the_batch_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    store, metrics = ListStore(), CollectorRegistry()
    adapter_sink, _ = sink(store, metrics)
    now = time.time()
    good = [r(ts=now, device="mqtt:a"), r(ts=now, device="mqtt:b")]
    poison = r(ts=1e308 + 1e308, device="mqtt:d")
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            assert await adapter_sink.accept([good[0], poison, good[1]])
    assert store.batches == [good] * 50
    assert metrics.get_sample_value("gateway_readings_malformed_total",
                                    {"adapter": "mqtt", "reason": "ts_not_finite"}) == 50
    assert metrics.get_sample_value("gateway_readings_accepted_total", {"adapter": "mqtt"}) == 100
    lines = [x.getMessage() for x in caplog.records if "mqtt:d" in x.getMessage()]
    assert len(lines) == 1 and "NaN or infinite" in lines[0]


async def test_a_huge_integer_is_refused_and_logged_without_a_logging_error(
        caplog: pytest.LogCaptureFixture) -> None:
    store, metrics = ListStore(), CollectorRegistry()
    adapter_sink, _ = sink(store, metrics)
    with caplog.at_level(logging.WARNING):
        assert await adapter_sink.accept([r(value=10**5000, ts=time.time())])
    assert store.batches == []
    assert any("an integer of 16610 bits" in x.getMessage() for x in caplog.records)


async def test_a_batch_with_nothing_storable_is_answered_accepted_without_a_store_call() -> None:
    store, metrics = ListStore(), CollectorRegistry()
    adapter_sink, _ = sink(store, metrics)
    assert await adapter_sink.accept([r(value=math.nan, ts=time.time())])
    assert store.batches == []


async def test_poison_reading_never_reaches_the_outbox_and_other_devices_commit(
        tmp_path: Path) -> None:
    metrics = CollectorRegistry()
    outbox = await Outbox.open(tmp_path / "outbox.db",
                               StoreConfig.model_validate({"commit_interval": 0.005}), metrics)
    try:
        adapter_sink, _ = sink(outbox, metrics)
        now = time.time()
        assert await adapter_sink.accept([Reading("mqtt:d", "x", 1, None, 1e308 + 1e308)])
        assert await adapter_sink.accept([r(ts=now, device="coap:other")])
        rows = await outbox.read_telemetry(0, 100)
        assert [x.device for row in rows for x in row.readings] == ["coap:other"]
    finally:
        await outbox.close()


async def test_registry_refuses_a_flood_of_new_devices_past_its_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics, store = CollectorRegistry(), ListStore()
    registry, adapter_sink = await registered(tmp_path, metrics, store, max_devices=10)
    try:
        now = time.time()
        with caplog.at_level(logging.INFO, logger="gateway.devices"):
            for i in range(200):
                assert await adapter_sink.accept([r(ts=now, device=f"mqtt:dev{i}")])
            registry.declare("mqtt:declared-late", name="late")
        assert len(registry) == 10
        assert "mqtt:declared-late" not in registry
        # known devices keep working
        assert await adapter_sink.accept([r(ts=now, device="mqtt:dev3")])
        assert [b[0].device for b in store.batches][-1] == "mqtt:dev3"
        assert len(store.batches) == 11
        assert metrics.get_sample_value("gateway_devices_refused_total") == 191
        assert metrics.get_sample_value("gateway_readings_malformed_total",
                                        {"adapter": "mqtt", "reason": "device_limit"}) == 190
        full = [x for x in caplog.records if "registry full" in x.getMessage()]
        assert len(full) == 1
        # "new device" lines are bounded too: a flood cannot write the log full
        assert len([x for x in caplog.records if "new device" in x.getMessage()]) <= 11
    finally:
        await registry.stop()


def test_input_log_logs_once_per_source_and_reason_per_interval_with_a_suppressed_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    log = InputLog(logging.getLogger("test.input"), interval=60.0, max_keys=3,
                   clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="test.input"):
        for _ in range(100):
            log.warning("dev1", "bad_json", "bad from %s", "dev1")
        log.warning("dev1", "bad_cbor", "cbor from %s", "dev1")
        for i in range(1000):  # invented sources share one key past max_keys
            log.warning(f"inv{i}", "bad_json", "bad from %s", f"inv{i}")
        assert len(caplog.records) == 4
        clock[0] = 61.0
        log.warning("dev1", "bad_json", "bad from %s", "dev1")
    messages = [x.getMessage() for x in caplog.records]
    assert len(messages) == 5
    assert "99 more like this" in messages[-1]
    assert "share this line" in messages[3]


async def test_invented_metric_names_are_refused_past_the_per_device_and_total_bounds(
        tmp_path: Path) -> None:
    metrics, store = CollectorRegistry(), ListStore()
    registry, adapter_sink = await registered(tmp_path, metrics, store, max_metrics=5,
                                              max_series=12)
    try:
        now = time.time()
        # one message with 8 invented keys: 5 kept, 3 refused
        assert await adapter_sink.accept([r(ts=now, metric=f"k{i}") for i in range(8)])
        assert [x.metric for x in store.batches[-1]] == [f"k{i}" for i in range(5)]
        # known metrics keep flowing; a new one is refused
        assert await adapter_sink.accept([r(ts=now, metric="k0"), r(ts=now, metric="new")])
        assert [x.metric for x in store.batches[-1]] == ["k0"]
        # 12 series in all: the third device gets only 2
        for device in ("mqtt:b", "mqtt:c"):
            assert await adapter_sink.accept([r(ts=now, device=device, metric=f"m{i}")
                                              for i in range(5)])
        assert [x.metric for x in store.batches[-1]] == ["m0", "m1"]
        malformed = {reason: metrics.get_sample_value(
            "gateway_readings_malformed_total", {"adapter": "mqtt", "reason": reason})
            for reason in ("metric_limit", "series_limit")}
        assert malformed == {"metric_limit": 4, "series_limit": 3}
        # forgetting a device frees its series
        assert registry.remove("mqtt:b")
        assert await adapter_sink.accept([r(ts=now, device="mqtt:c", metric="m4")])
        assert [x.metric for x in store.batches[-1]] == ["m4"]
    finally:
        await registry.stop()
