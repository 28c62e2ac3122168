"""The spine end to end: simulator → pipeline → outbox → uplink → a real cloud mosquitto.

Every test runs the real daemon as a subprocess and a real cloud-side subscriber; faults
are real too (broker stopped, daemon SIGKILLed, ACL refusals, corrupt files).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.reading import Reading
from tests.brokers import Mosquitto, free_port
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess, outbox_readings
from tests.waiting import wait_until

DEVICES = 4


def gw_config(state: Path, cloud_port: int, count: int, interval: float = 0.04,
              **store: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-test", "state_dir": str(state), "log_level": "info"},
        "store": {"commit_interval": "10ms", **store},
        "uplink": {"host": "127.0.0.1", "port": cloud_port, "backoff_initial": 0.2,
                   "backoff_max": 1.0, "ack_timeout": 5},
        "api": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": DEVICES,
                      "interval": interval, "metrics": ["seq", "temperature"],
                      "count": count, "enabled": count > 0}],
    }


def seqs_by_device(readings: list[Reading]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        if r.metric == "seq":
            out[r.device].append(int(r.value))
    return out


def first_occurrences(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def outbox_seqs(db_path: Path) -> dict[str, set[int]]:
    """The seq readings the outbox file holds, read straight from SQLite (one read
    transaction, safe beside a running daemon)."""
    out: dict[str, set[int]] = defaultdict(set)
    for device, metric, value in outbox_readings(db_path):
        if metric == "seq":
            out[device].add(value)
    return out


def waiting_count(db_path: Path) -> int:
    """How many seq readings wait in the outbox (0 before the file exists)."""
    return sum(len(s) for s in outbox_seqs(db_path).values())


def test_readings_reach_the_cloud_in_order_with_units(
        tmp_path: Path, mosquitto: Mosquitto, cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    sink = cloud_sink_factory(mosquitto.port)
    gw = gateway_factory(gw_config(tmp_path / "state", mosquitto.port, count=25)).start()
    sink.wait_for(lambda: len(sink.readings()) >= DEVICES * 25 * 2, timeout=30)
    by_dev = seqs_by_device(sink.readings())
    assert sorted(by_dev) == [f"sim:sim-{i}" for i in range(1, DEVICES + 1)]
    for seqs in by_dev.values():
        assert seqs == list(range(25))
    temps = [r for r in sink.readings() if r.metric == "temperature"]
    assert temps and all(r.unit == "Cel" and isinstance(r.value, float) for r in temps)
    status = [json.loads(m["payload"]) for m in sink.messages("/status")]
    assert status[0]["online"] is True
    gw.stop()
    # a clean stop says so on the retained status topic
    sink.wait_for(lambda: json.loads(sink.messages("/status")[-1]["payload"])["online"] is False,
                  timeout=10)


def test_cloud_outage_loses_nothing_and_keeps_per_device_order(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cloud = mosquitto_factory(name="cloud", persistence=True)
    sink = cloud_sink_factory(cloud.port)
    count = 120
    gw = gateway_factory(gw_config(tmp_path / "state", cloud.port, count=count)).start()
    sink.wait_for(lambda: len(sink.readings()) > 40, timeout=20)
    cloud.stop()  # the cloud goes away mid-stream; the simulator keeps producing
    # the outage lasts until the gateway has noticed it and a backlog has built up, so
    # the reconnect has readings from the outage to deliver whatever the machine's speed
    gw.wait_for_log("reconnecting", timeout=20)
    db = tmp_path / "state" / "outbox.db"
    wait_until(lambda: waiting_count(db) >= 10 * DEVICES, 20, "a backlog while the cloud is away")
    cloud.start()
    sink.wait_for(lambda: all(len(set(s)) == count
                              for s in seqs_by_device(sink.readings()).values())
                  and len(seqs_by_device(sink.readings())) == DEVICES, timeout=60)
    for device, seqs in seqs_by_device(sink.readings()).items():
        assert first_occurrences(seqs) == list(range(count)), device
    assert "uplink connected" in gw.log_text()
    assert gw.log_text().count("uplink connected") >= 2


def test_every_accepted_reading_arrives_after_sigkill(
        tmp_path: Path, mosquitto: Mosquitto, cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    sink = cloud_sink_factory(mosquitto.port)
    state = tmp_path / "state"
    gw = gateway_factory(gw_config(state, mosquitto.port, count=400, interval=0.02)).start()
    sink.wait_for(lambda: len(sink.readings()) > 200, timeout=20)
    # the kill must find readings still waiting, or it proves nothing about the outbox: the
    # cloud broker is frozen (SIGSTOP), so nothing is acknowledged and no row can leave the
    # outbox between the look and the kill; what was already published stays in flight
    assert mosquitto.proc is not None
    broker_pid = mosquitto.proc.pid
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: waiting_count(state / "outbox.db") >= 2 * DEVICES, 10,
                   "readings waiting in the outbox behind the frozen cloud")
        gw.kill()  # SIGKILL mid-stream: no last commit, no goodbye
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    delivered = {d: set(s) for d, s in seqs_by_device(sink.readings()).items()}
    waiting = outbox_seqs(state / "outbox.db")
    accepted = {d: delivered.get(d, set()) | waiting.get(d, set())
                for d in set(delivered) | set(waiting)}
    assert any(delivered.values())  # the cloud had readings before the kill...
    # ...and some still waited. Fewer than the look saw is possible: PUBACKs the broker
    # sent just before it froze can still delete rows between the look and the kill
    assert sum(len(s) for s in waiting.values()) >= 1
    # restart without the simulator: the backlog alone must drain
    gw2 = gateway_factory(gw_config(state, mosquitto.port, count=0), name="gw2").start()

    def all_arrived() -> bool:
        got = {d: set(s) for d, s in seqs_by_device(sink.readings()).items()}
        return all(accepted[d] <= got.get(d, set()) for d in accepted)

    sink.wait_for(all_arrived, timeout=30)
    got = seqs_by_device(sink.readings())
    for device, seqs in got.items():
        # nothing accepted is missing: each device's sequence has no gap
        assert sorted(set(seqs)) == list(range(max(seqs) + 1)), device
    duplicates = sum(len(s) - len(set(s)) for s in got.values())
    print(f"accepted before kill: {sum(len(s) for s in accepted.values())}, "
          f"waiting in outbox: {sum(len(s) for s in waiting.values())}, "
          f"duplicates at the cloud: {duplicates}")
    gw2.stop()


def test_a_refused_publish_keeps_its_rows_until_the_broker_accepts(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    acl = tmp_path / "acl"
    # the gateway may write its status and events, but not telemetry: MQTT 5 answers 0x87
    acl.write_text("topic readwrite gateway/gw-test/status\n"
                   "topic readwrite gateway/gw-test/events\n"
                   "topic readwrite gateway/gw-test/commands/#\n"
                   "pattern read #\n")
    port = free_port()
    cloud = mosquitto_factory(name="cloud", extra=f"acl_file {acl}", port=port)
    sink = cloud_sink_factory(cloud.port)
    state = tmp_path / "state"
    gw = gateway_factory(gw_config(state, cloud.port, count=10, interval=0.05)).start()
    gw.wait_for_log("reason 0x87 (not authorized)", timeout=20)
    # the simulator has finished (every message durable) and a retry was refused as well:
    # by then a publish that got through would be at the cloud
    gw.wait_for_log("messages per device sent", timeout=20)
    gw.wait_for_log("reason 0x87 (not authorized)", timeout=20, count=2)
    assert sink.readings() == []
    gw.stop()
    waiting = outbox_seqs(state / "outbox.db")
    assert {d: sorted(s) for d, s in waiting.items()} == {
        f"sim:sim-{i}": list(range(10)) for i in range(1, DEVICES + 1)}
    # the operator fixes the ACL: everything that was refused arrives
    acl.write_text("topic readwrite gateway/#\npattern read #\n")
    cloud.stop()
    cloud.start()
    sink2 = cloud_sink_factory(cloud.port, name="cloud2")
    gateway_factory(gw_config(state, cloud.port, count=0), name="gw2").start()
    sink2.wait_for(lambda: len(sink2.readings()) >= DEVICES * 10 * 2, timeout=30)
    for seqs in seqs_by_device(sink2.readings()).values():
        assert first_occurrences(seqs) == list(range(10))


def test_outbox_at_its_bound_drops_the_oldest_and_counts_exactly_what_is_missing(
        tmp_path: Path, mosquitto: Mosquitto, cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    count = 1500
    dead_port = free_port()  # no cloud yet: everything queues until the bound
    gw = gateway_factory(gw_config(state, dead_port, count=count, interval=0.002,
                                   max_bytes="48KiB")).start()
    gw.wait_for_log("messages per device sent", timeout=60)  # every message durable
    gw.stop()
    db = sqlite3.connect(state / "outbox.db")
    dropped = int(db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0])
    db.close()
    assert dropped > 0
    waiting = outbox_seqs(state / "outbox.db")  # read while no daemon runs
    sink = cloud_sink_factory(mosquitto.port)
    gateway_factory(gw_config(state, mosquitto.port, count=0), name="gw2").start()

    def all_waiting_arrived() -> bool:
        got = {d: set(s) for d, s in seqs_by_device(sink.readings()).items()}
        return all(seqs <= got.get(d, set()) for d, seqs in waiting.items())

    sink.wait_for(all_waiting_arrived, timeout=30)
    got = seqs_by_device(sink.readings())
    received = sum(len(set(s)) for s in got.values())
    emitted_seq = DEVICES * count
    # dropped counts readings (seq + temperature); each message is two readings
    assert received + dropped // 2 == emitted_seq
    for device, seqs in got.items():
        present = sorted(set(seqs))
        # the survivors are the newest: one unbroken run up to the last message
        assert present == list(range(present[0], count)), device


def test_a_corrupt_outbox_at_start_is_set_aside_and_the_daemon_runs(
        tmp_path: Path, mosquitto: Mosquitto, cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"this is not a database" * 1000)
    sink = cloud_sink_factory(mosquitto.port)
    gw = gateway_factory(gw_config(state, mosquitto.port, count=5)).start()
    assert "is corrupt" in gw.log_text()
    sink.wait_for(lambda: len(sink.readings()) >= DEVICES * 5 * 2, timeout=20)
    sink.wait_for(lambda: any('"outbox_corrupt"' in m["payload"]
                              for m in sink.messages("/events")), timeout=10)
    assert list(state.glob("outbox.db.corrupt-*"))


def test_a_cloud_command_reaches_the_device_and_its_result_comes_back(
        tmp_path: Path, mosquitto: Mosquitto, cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    import subprocess

    sink = cloud_sink_factory(mosquitto.port)
    cfg = gw_config(tmp_path / "state", mosquitto.port, count=0)
    cfg["adapters"][0]["enabled"] = True
    cfg["adapters"][0]["interval"] = 5
    gw = gateway_factory(cfg).start()
    sink.wait_for(lambda: bool(sink.messages("/status")), timeout=20)

    def command(body: str) -> None:
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1",
                        "-t", "gateway/gw-test/commands", "-m", body], check=True, timeout=10)

    command('{"id": "c1", "device": "sim:sim-1", "action": "off"}')
    command('{"id": "c2", "device": "nowhere:1", "action": "on"}')
    command("not json")
    sink.wait_for(lambda: len(sink.messages("/commands/result")) >= 3, timeout=20)
    results = [json.loads(m["payload"]) for m in sink.messages("/commands/result")]
    by_id = {r["id"]: r for r in results}
    assert by_id["c1"]["ok"] is True and by_id["c1"]["status"] == "delivered"
    assert by_id["c2"]["ok"] is False and by_id["c2"]["status"] == "unknown_device"
    assert any(r["status"] == "error" and "bad command" in r["detail"] for r in results)
    gw.stop()


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(
        tmp_path: Path, mosquitto: Mosquitto,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    first = gateway_factory(gw_config(state, mosquitto.port, count=0)).start()
    second = gateway_factory(gw_config(state, mosquitto.port, count=0), name="second")
    second.start(wait_ready=0)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert f"another gateway (pid {first.pid}) is running on state directory" in second.log_text()
    assert first.proc is not None and first.proc.poll() is None  # the first one is untouched
