"""History in the real daemon: the simulator's readings are kept, batched one transaction
per flush interval, answered over the API and by ``gateway history``; a clean stop keeps
everything, a restart keeps history, a SIGKILL loses at most the last flush interval."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.api.client import ApiClient
from gateway.cli import main as cli_main
from tests.daemon import GatewayProcess, outbox_readings
from tests.waiting import wait_until

FLUSH = 1.0


def config(state: Path, adapters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-history", "state_dir": str(state)},
        "store": {"commit_interval": "5ms"},
        "uplink": {"enabled": False},
        "history": {"enabled": True, "flush_interval": f"{FLUSH:g}s"},
        "adapters": adapters,
    }


def simulator(**kw: Any) -> dict[str, Any]:
    return {"type": "simulator", "name": "sim", "devices": 2, "interval": 0.1,
            "metrics": ["temperature", "humidity"], **kw}


def api(state: Path) -> ApiClient:
    return ApiClient(state / "gateway.sock", 10.0)


def history_points(client: ApiClient, device: str, metric: str) -> list[list[float]]:
    answer = client.call("GET", f"/api/devices/{device}/history?metric={metric}&since=1h"
                                "&step=raw")
    return list(answer["metrics"].get(metric, {}).get("points", []))


def test_every_reading_is_in_history_after_a_clean_stop_and_writes_are_batched(
        tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    gw = gateway_factory(config(state, [simulator(count=40)])).start()
    client = api(state)
    t0 = time.monotonic()
    wait_until(lambda: client.call("GET", "/api/history")["flushes"] >= 3, 20,
               what="three history flushes")
    status = client.call("GET", "/api/history")
    elapsed = time.monotonic() - t0 + 2 * FLUSH  # start-up before t0, at most
    # one transaction per flush interval, whatever the rate (20 readings/s here)
    assert status["flushes"] <= elapsed / FLUSH + 1, (status, elapsed)
    gw.wait_for_log("messages per device sent", timeout=30)
    assert gw.stop() == 0
    stored = outbox_readings(state / "outbox.db")
    gw2 = gateway_factory(config(state, []), name="gw2").start()
    client = api(state)
    for device in ("sim:sim-1", "sim:sim-2"):
        for metric in ("temperature", "humidity"):
            values = [p[1] for p in history_points(client, device, metric)]
            assert sorted(values) == sorted(v for d, m, v in stored
                                            if d == device and m == metric)
            assert len(values) == 40
    gw2.stop()


def test_api_and_cli_answers_and_errors(
        tmp_path: Path, gateway_factory: Callable[..., GatewayProcess],
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    gateway_factory(config(state, [simulator()])).start()
    client = api(state)
    wait_until(lambda: history_points(client, "sim:sim-1", "temperature"), 20,
               what="temperature in the history")
    answer = client.call("GET", "/api/devices/sim:sim-1/history?since=10m&step=1m")
    assert set(answer["metrics"]) == {"temperature", "humidity"}
    (bucket, *_) = answer["metrics"]["temperature"]["buckets"]
    start, lo, avg, hi, n = bucket
    assert start % 60 == 0 and lo <= avg <= hi and n >= 1
    assert answer["step"] == 60 and answer["pruned"] == {}

    status, body = client.request("GET", "/api/devices/sim:nobody/history")
    assert status == 404 and "no device 'sim:nobody'" in body["error"]
    status, body = client.request("GET", "/api/devices/sim:sim-1/history?metric=pressure")
    assert status == 404 and "pressure" in body["error"]
    status, body = client.request("GET", "/api/devices/sim:sim-1/history?since=yesterday")
    assert status == 400 and "ISO 8601" in body["error"]
    status, body = client.request("GET", "/api/devices/sim:sim-1/history?since=7d&step=1s")
    assert status == 400 and "at least 121s" in body["error"]

    sock = str(state / "gateway.sock")
    capsys.readouterr()
    assert cli_main(["history", "--socket", sock, "sim:sim-1", "temperature",
                     "--since", "10m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "sim:sim-1" and out["step"] == "raw"
    assert out["metrics"]["temperature"]["unit"] == "Cel"
    assert cli_main(["history", "--socket", sock, "sim:sim-1", "humidity", "--step",
                     "1m"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("humidity (%RH): ") and "min         avg" in text
    assert cli_main(["history", "--socket", sock, "sim:ghost"]) == 1
    assert "no device 'sim:ghost'" in capsys.readouterr().err
    assert cli_main(["history", "--socket", sock, "sim:sim-1", "--since", "soon"]) == 1
    assert "expected 'now'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sigkill_loses_at_most_the_last_flush_interval(
        tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]) -> None:
    state = tmp_path / "state"
    gw = gateway_factory(config(state, [simulator()])).start()
    client = api(state)
    wait_until(lambda: client.call("GET", "/api/history")["flushes"] >= 3, 20,
               what="three history flushes")
    killed_at = time.time()
    gw.kill()
    gw2 = gateway_factory(config(state, []), name="gw2").start()
    newest = max(p[0] for p in history_points(api(state), "sim:sim-1", "temperature"))
    # the flush interval, plus the flush that was being written when the kill came
    assert newest >= killed_at - 2 * FLUSH - 0.5, (killed_at, newest)
    gw2.stop()
