"""Config reload in the real daemon (SIGHUP and ``gateway reload``) with real mosquitto.

An MQTT device publishes a numbered sequence at QoS 1 while the config file changes under
the daemon: every number must reach the outbox, and an adapter whose section did not
change must keep its broker connection (counted in mosquitto's own log).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.api.client import ApiClient
from gateway.cli import main as cli_main
from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess, outbox_readings
from tests.waiting import wait_until

TOTAL = 300


def base_config(state: Path, broker: Mosquitto) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-reload", "state_dir": str(state), "log_level": "info"},
        "store": {"commit_interval": "5ms"},
        "uplink": {"enabled": False},
        "api": {"enabled": True},
        "adapters": [{"type": "mqtt", "name": "mqtt", "host": broker.host, "port": broker.port,
                      "client_id": "gw-reload-a", "reconnect_delay": 0.2,
                      "subscriptions": [{"topic": "sensors/{device}", "format": "json"}]}],
        "rules": [{"name": "high", "when": "seq > 100000",
                   "actions": [{"alert": {"severity": "info", "message": "{device} high"}}]}],
    }


def write(gw: GatewayProcess, config: dict[str, Any]) -> None:
    gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def connections(broker: Mosquitto, client_id: str) -> int:
    """Connections mosquitto accepted from ``client_id`` (its notice log lines)."""
    return broker.log_text().count(f" as {client_id} (")


def reload_via_sighup(gw: GatewayProcess, count: int) -> str:
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("reload of ", count=count, timeout=30)
    return [line for line in gw.log_text().splitlines() if "reload of " in line][-1]


def seqs(state: Path) -> list[int]:
    return sorted(int(v) for d, m, v in outbox_readings(state / "outbox.db")
                  if d == "mqtt:dev1" and m == "seq")


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Callable[[], threading.Thread]]:
    """A device publishing seq 0..TOTAL-1 at QoS 1, one every 10 ms, on its own thread."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> threading.Thread:
        proc = subprocess.Popen(["mosquitto_pub", "-h", mosquitto.host, "-p",
                                 str(mosquitto.port), "-V", "mqttv5", "-q", "1", "-i", "dev1",
                                 "-t", "sensors/dev1", "-l"], stdin=subprocess.PIPE)
        procs.append(proc)

        def feed() -> None:
            assert proc.stdin is not None
            for i in range(TOTAL):
                proc.stdin.write((json.dumps({"seq": i}) + "\n").encode())
                proc.stdin.flush()
                time.sleep(0.01)
            proc.stdin.close()
            proc.wait(30)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_reloads_lose_no_reading_and_leave_unchanged_adapters_connected(
        tmp_path: Path, mosquitto: Mosquitto, publisher: Callable[[], threading.Thread],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    config = base_config(state, mosquitto)
    gw = gateway_factory(config).start()
    wait_until(lambda: connections(mosquitto, "gw-reload-a") == 1, 10,
               what="adapter a connected")
    feeding = publisher()
    wait_until(lambda: len(seqs(state)) >= 20, within=20, what="first readings durable")

    # 1. a rule changes: only the rules are replaced
    config["rules"][0]["when"] = "seq > 200000"
    write(gw, config)
    line = reload_via_sighup(gw, 1)
    assert "changed: rules" in line and "adapter" not in line, line

    # 2. a second adapter is added: it connects; the first one is not touched
    config["adapters"].append({"type": "mqtt", "name": "mqtt_b", "host": mosquitto.host,
                               "port": mosquitto.port, "client_id": "gw-reload-b",
                               "reconnect_delay": 0.2,
                               "subscriptions": [{"topic": "b/{device}", "format": "json"}]})
    write(gw, config)
    line = reload_via_sighup(gw, 2)
    assert "adapter mqtt_b added" in line and "adapter mqtt " not in line, line
    wait_until(lambda: connections(mosquitto, "gw-reload-b") == 1, 10,
               what="adapter b connected")
    assert connections(mosquitto, "gw-reload-a") == 1

    # 3. the first adapter's topics change: it alone restarts (and reconnects)
    config["adapters"][0]["subscriptions"].append({"topic": "more/{device}", "format": "json"})
    write(gw, config)
    answer = ApiClient(state / "gateway.sock", timeout=60).call("POST", "/api/reload")
    assert answer["ok"] and answer["changed"] == ["adapter mqtt restarted"], answer
    wait_until(lambda: connections(mosquitto, "gw-reload-a") == 2, 10, what="adapter a back")

    feeding.join(60)
    assert not feeding.is_alive()
    wait_until(lambda: len(seqs(state)) >= TOTAL, 30, what="every reading in the outbox")
    assert seqs(state) == list(range(TOTAL))
    assert connections(mosquitto, "gw-reload-b") == 1  # unchanged by the third reload
    assert gw.proc is not None and gw.proc.poll() is None
    assert gw.stop() == 0


def test_an_invalid_file_changes_nothing_through_sighup_and_the_cli(
        tmp_path: Path, mosquitto: Mosquitto, gateway_factory: Callable[..., GatewayProcess],
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    config = base_config(state, mosquitto)
    gw = gateway_factory(config).start()
    wait_until(lambda: connections(mosquitto, "gw-reload-a") == 1, 10,
               what="adapter a connected")
    bad = json.loads(json.dumps(config))
    bad["store"]["commit_interval"] = "soon"
    bad["adapters"][0]["port"] = 70000
    write(gw, bad)

    line = reload_via_sighup(gw, 1)
    assert "refused: 2 problem(s)" in line, line
    log = gw.log_text()
    assert "config: " in log and "adapters[0].port" in log and "store.commit_interval" in log

    rc = cli_main(["reload", "--socket", str(state / "gateway.sock")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "adapters[0].port" in err and "refused" in err, err

    # still running, with the same connection and the same config
    assert gw.proc is not None and gw.proc.poll() is None
    health = ApiClient(state / "gateway.sock").call("GET", "/healthz")
    assert health["adapters"]["mqtt"]["state"] == "running"
    assert connections(mosquitto, "gw-reload-a") == 1

    # a section that needs a restart is reported and left as it was
    moved = json.loads(json.dumps(config))
    moved["gateway"]["id"] = "gw-renamed"
    moved["readings"] = {"max_string": 64}
    write(gw, moved)
    rc = cli_main(["reload", "--socket", str(state / "gateway.sock"), "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert rc == 0 and answer["restart_needed"] == ["gateway.id"], answer
    assert answer["changed"] == ["readings"], answer
    assert "needs a restart" in gw.log_text()
    assert gw.stop() == 0


def window_counts(path: Path) -> dict[str, int]:
    """Readings absorbed by each open aggregate window, from the outbox's durable state."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT key, value FROM state WHERE key LIKE 'window:%'").fetchall()
    finally:
        db.close()
    return {key.split("\x1f")[-1]: int(json.loads(value)[3]) for key, value in rows}


def test_open_aggregate_windows_survive_a_reload_that_changes_the_filters(
        tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    count = 60
    config: dict[str, Any] = {
        "gateway": {"id": "gw-reload", "state_dir": str(state)},
        "store": {"commit_interval": "5ms"},
        "uplink": {"enabled": False},
        "api": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 1, "interval": 0.03,
                      "metrics": ["temperature", "humidity"], "count": count}],
        # a day-long window stays open for the whole test
        "filters": [{"metric": "temperature", "aggregate": {"window": "1d",
                                                            "functions": ["count"]}}],
    }
    gw = gateway_factory(config).start()
    wait_until(lambda: sum(1 for _, m, _ in outbox_readings(state / "outbox.db")
                           if m == "humidity") >= 10, 20, what="readings flowing")
    config["filters"].append({"metric": "pressure", "drop": True})
    write(gw, config)
    line = reload_via_sighup(gw, 1)
    assert "changed: filters" in line, line
    gw.wait_for_log("messages per device sent", timeout=30)
    assert gw.stop() == 0
    # the window opened before the reload kept counting after it: no reading was lost
    assert window_counts(state / "outbox.db") == {"temperature": count}
    humidity = [v for _, m, v in outbox_readings(state / "outbox.db") if m == "humidity"]
    assert len(humidity) == count


def test_uplink_options_apply_in_place_and_other_changes_reconnect(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cloud = mosquitto_factory(name="cloud")
    state = tmp_path / "state"
    config: dict[str, Any] = {
        "gateway": {"id": "gw-reload", "state_dir": str(state)},
        "store": {"commit_interval": "5ms"},
        "uplink": {"host": cloud.host, "port": cloud.port, "client_id": "gw-reload-up",
                   "batch_linger": "10ms"},
        "api": {"enabled": True},
    }
    gw = gateway_factory(config).start()
    wait_until(lambda: connections(cloud, "gw-reload-up") == 1, 10, what="uplink connected")
    api = ApiClient(state / "gateway.sock", timeout=30)

    config["uplink"]["batch_linger"] = "50ms"
    write(gw, config)
    answer = api.call("POST", "/api/reload")
    assert answer["changed"] == ["uplink options (in place)"], answer

    config["uplink"]["topic_prefix"] = "site7"
    write(gw, config)
    answer = api.call("POST", "/api/reload")
    assert answer["changed"] == ["uplink reconnects"], answer
    wait_until(lambda: connections(cloud, "gw-reload-up") >= 2, 10, what="uplink reconnected")
    # exactly one reconnect: the in-place change before it did not reconnect
    assert connections(cloud, "gw-reload-up") == 2
    wait_until(lambda: api.call("GET", "/healthz")["uplink"]["connected"], 10,
               what="uplink connected again")
    assert gw.stop() == 0
