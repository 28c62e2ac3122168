"""Every metric worth alerting on is exposed on /metrics by a daemon running all its parts:
simulator and MQTT adapters (real local mosquitto), rules, uplink (real cloud mosquitto)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.api.client import ApiClient
from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess
from tests.waiting import wait_until

Samples = dict[str, list[tuple[dict[str, str], float]]]


def families(text: str) -> tuple[set[str], Samples]:
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if labels.items() <= lab.items())


def test_metrics_worth_alerting_on_are_all_exposed_and_move(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cloud = mosquitto_factory(name="cloud")
    local = mosquitto_factory(name="local")
    state = tmp_path / "state"
    gw = gateway_factory({
        "gateway": {"id": "gw-metrics", "state_dir": str(state)},
        "uplink": {"host": "127.0.0.1", "port": cloud.port, "backoff_initial": 0.2,
                   "batch_linger": "20ms"},
        "adapters": [
            {"type": "simulator", "name": "sim", "devices": 2, "interval": "0.1s",
             "metrics": ["temperature"]},
            {"type": "mqtt", "name": "mqtt", "host": "127.0.0.1", "port": local.port,
             "subscriptions": [{"topic": "sensors/{device}", "format": "json"}]},
        ],
        "rules": [{"name": "warm", "device": ["sim:*"], "when": "temperature > -100",
                   "actions": [{"alert": {"message": "{device} is warm"}}]}],
    }).start()
    gw.wait_for_log("uplink connected", 15)
    for payload in ('{"temperature": 21.5}', "not json at all"):
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(local.port), "-q", "1",
                        "-t", "sensors/kitchen", "-m", payload], check=True, timeout=10)
    api = ApiClient(state / "gateway.sock")

    def scraped() -> tuple[set[str], Samples] | None:
        names, samples = families(api.call("GET", "/metrics"))
        done = (value(samples, "gateway_readings_accepted_total", adapter="mqtt") >= 1
                and value(samples, "gateway_mqtt_messages_total", result="malformed") >= 1
                and value(samples, "gateway_uplink_ack_seconds_count") >= 1)
        return (names, samples) if done else None

    names, samples = wait_until(scraped, 15, "the MQTT reading, the malformed message and "
                                "an uplink acknowledgement counted", step=0.1)

    for adapter in ("sim", "mqtt"):
        assert value(samples, "gateway_readings_received_total", adapter=adapter) >= 1
        assert value(samples, "gateway_readings_accepted_total", adapter=adapter) >= 1
        assert any(lab.get("adapter") == adapter
                   for lab, _ in samples["gateway_readings_refused_total"])
    # decode errors
    assert value(samples, "gateway_mqtt_messages_total", result="malformed") >= 1
    # outbox
    for name in ("gateway_outbox_depth", "gateway_outbox_bytes",
                 "gateway_outbox_oldest_age_seconds", "gateway_outbox_dropped",
                 "gateway_outbox_dead_letters", "gateway_outbox_dead_letter_rows"):
        assert name in names, name
    assert value(samples, "gateway_outbox_bytes") > 0
    assert value(samples, "gateway_outbox_dead_letter_rows") == 0
    # uplink
    assert value(samples, "gateway_uplink_connected") == 1
    assert value(samples, "gateway_uplink_publishes_total") >= 1
    assert value(samples, "gateway_uplink_acks_total") >= 1
    assert "gateway_uplink_refusals" in names
    assert value(samples, "gateway_uplink_ack_seconds_count") >= 1
    # devices, adapters, rules, the gateway itself
    assert value(samples, "gateway_devices_online") >= 3
    assert "gateway_adapter_restarts" in names
    assert value(samples, "gateway_adapter_up", adapter="mqtt") == 1
    assert value(samples, "gateway_rule_fired_total", rule="warm") >= 1
    assert value(samples, "gateway_ready") == 1
    assert all(n.startswith("gateway_") for n in names), sorted(names)
