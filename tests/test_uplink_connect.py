"""The uplink gives up on a broker that takes the TCP connection and never answers.

The "broker" is a loopback TCP listener that accepts and reads but never sends a CONNACK
(what a half-open proxy or a hung broker does); the uplink must give each attempt up
after ``uplink.connect_timeout`` and try again, not wait half the keepalive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from gateway.uplink.client import Uplink
from gateway.uplink.config import UplinkConfig
from tests.waiting import eventually


@pytest.fixture
async def silent_broker() -> AsyncIterator[tuple[int, list[float]]]:
    accepted: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        try:
            while await reader.read(4096):
                pass  # the CONNECT is read and never answered
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_a_silent_broker_is_given_up_after_connect_timeout_and_tried_again(
        tmp_path: Path, silent_broker: tuple[int, list[float]]) -> None:
    port, accepted = silent_broker
    outbox = await Outbox.open(tmp_path / "outbox.db", StoreConfig(), metrics=None)
    reg = CollectorRegistry()
    config = UplinkConfig(host="127.0.0.1", port=port, keepalive=60, connect_timeout=0.5,
                          backoff_initial=0.1, backoff_max=0.2)
    uplink = Uplink(config, "gw-silent", outbox, metrics=reg)
    await uplink.start()
    try:
        await eventually(lambda: len(accepted) >= 3, 10, "three connection attempts")
        # each attempt ended after about connect_timeout, not keepalive / 2 (30 s)
        gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)]
        assert all(gap < 0.5 + 0.2 + 1.0 for gap in gaps), gaps
        assert reg.get_sample_value("gateway_uplink_connects_total", {"result": "failed"}) >= 2
        assert uplink.last_error is not None and "no CONNACK within 0.5 s" in uplink.last_error
        assert not uplink.connected
    finally:
        await uplink.stop(drain=0.1)
        await outbox.close()
