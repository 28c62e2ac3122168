"""Shared fixtures: real mosquitto brokers and the real daemon, on loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Mosquitto
from tests.coap_helpers import client
from tests.daemon import GatewayProcess


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers: ``mosquitto_factory(extra="...", name="cloud")``; all stopped at teardown."""
    started: list[Mosquitto] = []

    def make(extra: str = "", name: str = "broker", **kw: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{name}-{len(started)}", extra=extra, **kw)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """One plain broker on a free loopback port."""
    return mosquitto_factory(name="default")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start daemons from config dicts; every one is stopped (by PID) at teardown."""
    started: list[GatewayProcess] = []

    def make(config: dict[str, Any], name: str = "gw", **kw: Any) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / name, config, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def cloud_sink_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start cloud-side subscribers (separate processes) on a broker port; stopped at teardown."""
    from tests.cloud_sink import CloudSink

    started: list[CloudSink] = []

    def make(port: int, name: str = "cloud", topic: str = "gateway/#") -> CloudSink:
        sink = CloudSink(port, tmp_path / f"{name}.jsonl", topic)
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


@pytest.fixture
async def cli() -> AsyncIterator[Any]:
    """A real aiocoap client context (UDP only), shut down after the test."""
    c = await client()
    try:
        yield c
    finally:
        await c.shutdown()


@pytest.fixture
async def zb(tmp_path: Path) -> AsyncIterator[Any]:
    """A Zigbee test harness (tests/zigbee_harness.py) with its core started; closed after."""
    from tests.zigbee_harness import Harness  # zigpy is loaded only by the tests that use it

    h = Harness(tmp_path)
    await h.start_core()
    try:
        yield h
    finally:
        await h.close()
