"""End to end through the real daemon: CoAP device → ``gateway run`` → cloud broker.

The gateway is its own process, the cloud a real mosquitto with a recording subscriber,
the device a real aiocoap client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiocoap.numbers.codes import Code

from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import Mosquitto
from tests.coap_helpers import client, post, udp_port
from tests.daemon import GatewayProcess


def _config(state: Path, port: int, cloud: Mosquitto | None) -> dict[str, Any]:
    uplink: dict[str, Any] = ({"host": cloud.host, "port": cloud.port, "batch_linger": "10ms"}
                              if cloud else {"enabled": False})
    return {
        "gateway": {"id": "gw-coap", "state_dir": str(state)},
        "uplink": uplink,
        "api": {"enabled": False},
        "store": {"commit_interval": "20ms"},
        "adapters": [{"type": "coap", "bind": "127.0.0.1", "port": port}],
    }


async def _post_all(port: int, bodies: list[bytes]) -> list[Code]:
    c = await client()
    try:
        return [(await post(c, f"coap://127.0.0.1:{port}/readings/th-1", b, 50)).code
                for b in bodies]
    finally:
        await c.shutdown()


def test_coap_readings_reach_the_cloud_through_the_daemon(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., Any]) -> None:
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    port = udp_port()
    gateway_factory(_config(tmp_path / "state", port, cloud_broker)).start()
    bodies = [f'{{"seq": {i}, "temperature": 20.5}}'.encode() for i in range(20)]
    codes = asyncio.run(_post_all(port, bodies))
    assert codes == [Code.CHANGED] * 20

    def seqs() -> list[int]:
        return sorted(int(r.value) for r in cloud.readings()
                      if r.device == "coap:th-1" and r.metric == "seq")

    cloud.wait_for(lambda: seqs() == list(range(20)), 20)


def test_reading_survives_sigkill_after_the_204(
        tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]) -> None:
    port = udp_port()
    state = tmp_path / "state"
    gw = gateway_factory(_config(state, port, None)).start()
    codes = asyncio.run(_post_all(port, [b'{"seq": 1, "ts": %d}' % int(time.time())]))
    assert codes == [Code.CHANGED]
    gw.kill()  # no shutdown, no last commit: what a power cut does

    async def stored() -> list[tuple[str, str, Any]]:
        outbox = await Outbox.open(state / "outbox.db", StoreConfig(), metrics=None)
        try:
            rows = await outbox.read_telemetry(0, 1000)
            return [(r.device, r.metric, r.value) for row in rows for r in row.readings]
        finally:
            await outbox.close()

    assert asyncio.run(stored()) == [("coap:th-1", "seq", 1)]
