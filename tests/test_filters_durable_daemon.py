"""An open aggregate window survives SIGKILL: ``gateway run`` with an aggregate filter.

A device publishes readings of one window over a real local broker (QoS 1: each is
acknowledged, so the gateway took responsibility for it), the daemon is killed with the
window open, restarted, and a reading of the next window closes it: the window's
aggregates must count every reading acknowledged before the kill, once.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Mosquitto
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess


def _config(state: Path, broker: Mosquitto, cloud: Mosquitto) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-agg", "state_dir": str(state)},
        "uplink": {"host": cloud.host, "port": cloud.port, "batch_linger": "10ms"},
        "api": {"enabled": False},
        "store": {"commit_interval": "20ms"},
        "adapters": [{"type": "mqtt", "host": broker.host, "port": broker.port,
                      "client_id": "gw-agg-dev", "reconnect_delay": 0.2,
                      "subscriptions": [{"topic": "d/{device}", "timestamp": "ts"}]}],
        "filters": [{"metric": "power",
                     "aggregate": {"window": "1h", "functions": ["avg", "count", "max"]}}],
    }


def _publish(broker: Mosquitto, payloads: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(p) + "\n" for p in payloads).encode()
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                    "-q", "1", "-t", "d/meter", "-l"], input=lines, check=True, timeout=20)


@pytest.mark.slow
def test_an_open_window_survives_sigkill(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., CloudSink]) -> None:
    broker = mosquitto_factory(name="devices", persistence=True)
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    state = tmp_path / "state"
    # a window that is open for the whole test: it starts at the next full hour (device
    # timestamps may be up to a day ahead)
    window = math.ceil(time.time() / 3600) * 3600 + 3600
    gw = gateway_factory(_config(state, broker, cloud_broker)).start()
    # the first reading is the marker that everything before the kill was handled
    _publish(broker, [{"power": float(v), "ts": window + v, "seq": v} for v in range(1, 6)])
    cloud.wait_for(lambda: any(r.metric == "seq" and r.value == 5 for r in cloud.readings()), 20)
    assert not [r for r in cloud.readings() if r.metric.startswith("power")]  # still open
    gw.kill()

    gateway_factory(_config(state, broker, cloud_broker), name="gw2").start()
    # a resend of an absorbed reading (the device never saw its PUBACK, say) and a reading
    # of the next window, which closes the restored one
    _publish(broker, [{"power": 5.0, "ts": window + 5}, {"power": 100.0, "ts": window + 3601}])

    def aggregates() -> dict[str, Any]:
        return {r.metric: r.value for r in cloud.readings()
                if r.metric.startswith("power_") and r.ts == window}

    cloud.wait_for(lambda: len(aggregates()) == 3, 30)
    assert aggregates() == {"power_avg": 3.0, "power_count": 5, "power_max": 5.0}
