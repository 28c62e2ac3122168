"""The control API and CLI against a real running daemon (simulator adapter, no uplink)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import main as cli
from tests.daemon import GatewayProcess
from tests.waiting import eventually, wait_until


def sim_config(state_dir: Path, **api: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "test-gw", "state_dir": str(state_dir)},
        "uplink": {"enabled": False},
        "api": api,
        "adapters": [{"type": "simulator", "name": "sim", "devices": 3, "interval": "0.2s",
                      "seed": 1}],
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One simulator daemon shared by the read-mostly tests of this module."""
    work = tmp_path_factory.mktemp("api")
    gw = GatewayProcess(work, sim_config(work / "state"))
    gw.start()
    # the simulator's first round of messages has reached the registry
    gw.wait_for_log("device sim:sim-3 online", timeout=10)
    yield gw
    gw.stop()


def sock(gw: GatewayProcess) -> str:
    return str(Path(gw.config["gateway"]["state_dir"]) / "gateway.sock")


async def call(gw: GatewayProcess, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
    """One request over the daemon's Unix socket with aiohttp's client."""
    conn = aiohttp.UnixConnector(path=sock(gw))
    async with aiohttp.ClientSession(connector=conn) as session, \
            session.request(method, f"http://gateway{path}", **kw) as resp:
        text = await resp.text()
        body = json.loads(text) if resp.content_type == "application/json" else text
        return resp.status, body, resp.headers.get("Content-Type", "")


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- endpoints ------------------------------------------------------------------------------

async def test_healthz_reports_ready_adapters_outbox_and_devices(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok" and body["ready"] is True
    assert body["gateway"] == "test-gw"
    assert body["adapters"]["sim"]["type"] == "simulator"
    assert body["adapters"]["sim"]["state"] == "running"
    assert body["uplink"] == {"enabled": False, "connected": False, "connected_since": None}
    assert body["outbox"]["depth"] > 0
    assert 0 <= body["outbox"]["oldest_age"] < 600  # the simulator's readings are recent
    assert body["devices"] == {"known": 3, "online": 3}
    assert body["problems"] == []


async def test_metrics_parse_and_reading_counters_move_as_readings_flow(
        daemon: GatewayProcess) -> None:
    sim = (("adapter", "sim"),)

    async def scrape_until(ok: Callable[[dict[Any, float]], bool],
                           what: str) -> dict[Any, float]:
        async def scraped() -> dict[Any, float] | None:
            status, text, ctype = await call(daemon, "GET", "/metrics")
            assert status == 200 and ctype.startswith("text/plain")
            samples = metric_samples(text)
            return samples if ok(samples) else None
        samples: dict[Any, float] = await eventually(scraped, 20.0, what)
        return samples

    # readings count as accepted once durable: a commit (no uplink here) follows soon
    before = await scrape_until(lambda m: m[("gateway_readings_accepted_total", sim)] > 0,
                                "readings accepted")
    received = before[("gateway_readings_received_total", sim)]
    accepted = before[("gateway_readings_accepted_total", sim)]
    assert 0 < accepted <= received
    assert before[("gateway_readings_refused_total", sim)] == 0
    assert before[("gateway_adapter_up", (("adapter", "sim"), ("type", "simulator")))] == 1
    assert before[("gateway_ready", ())] == 1
    assert before[("gateway_devices_online", ())] == 3
    assert before[("gateway_uptime_seconds", ())] > 0
    assert ("gateway_build_info", (("python", sys.version.split()[0]), ("version", "0.1.0"))) \
        in before
    # 3 devices x 3 metrics every 0.2 s: ~45 readings/s
    after = await scrape_until(
        lambda m: m[("gateway_readings_accepted_total", sim)] >= accepted + 9
        and m[("gateway_outbox_depth", ())] > before[("gateway_outbox_depth", ())],
        "nine more readings accepted and a deeper outbox")
    assert after[("gateway_readings_received_total", sim)] >= received + 9
    assert after[("gateway_readings_accepted_total", sim)] >= accepted + 9
    # nothing leaves without an uplink: the outbox depth grows with what was accepted
    assert after[("gateway_outbox_depth", ())] > before[("gateway_outbox_depth", ())]
    assert after[("gateway_api_requests_total", (("code", "200"), ("endpoint", "/metrics")))] \
        >= 1
    # every metric of every component is the gateway's own, on the daemon's registry
    assert all(name.startswith("gateway_") for name, _ in after), \
        sorted({name for name, _ in after if not name.startswith("gateway_")})


async def test_metrics_speak_openmetrics_when_asked(daemon: GatewayProcess) -> None:
    status, text, ctype = await call(daemon, "GET", "/metrics",
                                     headers={"Accept": "application/openmetrics-text"})
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


async def test_devices_lists_every_simulated_device_with_values(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/api/devices")
    assert status == 200
    assert [d["id"] for d in body] == ["sim:sim-1", "sim:sim-2", "sim:sim-3"]
    one = body[0]
    assert one["adapter"] == "sim" and one["online"] is True and one["model"] == "simulator"
    assert set(one["values"]) == {"temperature", "humidity", "battery"}
    assert one["values"]["temperature"]["unit"] == "Cel"
    _, online, _ = await call(daemon, "GET", "/api/devices?online=false")
    assert online == []
    _, other, _ = await call(daemon, "GET", "/api/devices?adapter=zigbee")
    assert other == []
    _, slim, _ = await call(daemon, "GET", "/api/devices?fields=model,online")
    assert slim[0] == {"id": "sim:sim-1", "model": "simulator", "online": True}


async def test_one_device_by_id_and_404_for_unknown(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/api/devices/sim:sim-2")
    assert status == 200 and body["id"] == "sim:sim-2"
    status, body, _ = await call(daemon, "GET", "/api/devices/sim:nope")
    assert status == 404 and "sim:nope" in body["error"]


async def test_rename_device_changes_its_name(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "PATCH", "/api/devices/sim:sim-3",
                                 json={"name": "Hall sensor"})
    assert status == 200 and body["name"] == "Hall sensor"
    _, again, _ = await call(daemon, "GET", "/api/devices/sim:sim-3")
    assert again["name"] == "Hall sensor"
    status, _, _ = await call(daemon, "PATCH", "/api/devices/sim:sim-9", json={"name": "x"})
    assert status == 404
    status, body, _ = await call(daemon, "PATCH", "/api/devices/sim:sim-3", json={"nom": "x"})
    assert status == 400 and "name" in body["error"]


async def test_outbox_endpoint_reports_depth_bounds_and_age(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/api/outbox")
    assert status == 200
    assert body["depth"] > 0 and body["rows"] > 0
    assert body["max_bytes"] == 256 * 1024 * 1024 and body["max_age"] == 7 * 86400
    assert body["oldest_age"] >= 0 and body["dropped"] == 0
    assert body["uplink_enabled"] is False
    assert body["path"].endswith("outbox.db")


async def test_dead_letters_endpoint_lists_what_was_set_aside_and_checks_its_limit(
        daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/api/outbox")
    assert status == 200 and body["dead_letters"] == 0
    status, body, _ = await call(daemon, "GET", "/api/outbox/dead-letters?limit=5")
    assert status == 200
    assert body == {"count": 0, "deleted": 0, "max": 1000, "dead_letters": []}
    status, body, _ = await call(daemon, "GET", "/api/outbox/dead-letters?limit=-1")
    assert status == 400 and "limit" in body["error"]


async def test_command_reaches_the_simulator_and_results_map_to_http_status(
        daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                 json={"action": "off"})
    assert (status, body) == (200, {"ok": True, "status": "delivered", "detail": "power off"})
    status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                 json={"action": "dim", "params": {"level": 5}})
    assert status == 422 and body["status"] == "unsupported"
    status, body, _ = await call(daemon, "POST", "/api/devices/mqtt:kitchen/commands",
                                 json={"action": "on"})
    assert status == 404 and body["status"] == "unknown_device"
    status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                 data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]
    status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                 json={"params": {}})
    assert status == 400 and "action" in body["error"]
    _, metrics, _ = await call(daemon, "GET", "/metrics")
    samples = metric_samples(metrics)
    assert samples[("gateway_api_commands_total", (("status", "delivered"),))] >= 1


async def test_oversized_and_odd_bodies_get_clear_errors_and_the_api_keeps_answering(
        daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                 data=b"{" + b" " * 100_000 + b"}",
                                 headers={"Content-Type": "application/json"})
    assert status == 413 and "error" in body
    for payload in (b"[1, 2]", b'"on"', b"\xff\xfe", b'{"action": "on", "params": [1]}'):
        status, body, _ = await call(daemon, "POST", "/api/devices/sim:sim-1/commands",
                                     data=payload, headers={"Content-Type": "application/json"})
        assert status == 400 and "error" in body, payload
    status, body, _ = await call(daemon, "POST", "/api/permit-join", data=b"{\"seconds\": true}")
    assert status == 400
    status, _, _ = await call(daemon, "GET", "/healthz")
    assert status == 200


async def test_permit_join_without_a_joining_adapter_answers_409(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "POST", "/api/permit-join", json={"seconds": 30})
    assert status == 409
    assert "no running adapter can permit joining" in body["error"]
    status, body, _ = await call(daemon, "POST", "/api/permit-join", json={"seconds": 999})
    assert status == 400 and "0 to 254" in body["error"]


async def test_unknown_path_and_wrong_method_answer_json(daemon: GatewayProcess) -> None:
    status, body, _ = await call(daemon, "GET", "/api/nothing")
    assert status == 404 and body == {"error": "Not Found"}
    status, body, _ = await call(daemon, "DELETE", "/healthz")
    assert status == 405 and "error" in body


def test_socket_is_a_socket_with_mode_0660(daemon: GatewayProcess) -> None:
    st = os.stat(sock(daemon))
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


# -- CLI ------------------------------------------------------------------------------------

def test_cli_status_prints_a_table_and_json(daemon: GatewayProcess,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "status", "--socket", sock(daemon))
    assert rc == 0
    assert out.startswith("gateway test-gw 0.1.0: ok, up ")
    assert "uplink   disabled" in out
    assert "devices  3 known, 3 online" in out
    row = next(line for line in out.splitlines() if line.startswith("sim "))
    assert row.split()[:4] == ["sim", "simulator", "running", "0"]
    rc, out, _ = run_cli(capsys, "status", "--socket", sock(daemon), "--json")
    assert rc == 0 and json.loads(out)["adapters"]["sim"]["state"] == "running"


def test_cli_finds_the_socket_from_the_config(daemon: GatewayProcess,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "status", "--config", str(daemon.config_path), "--json")
    assert rc == 0 and json.loads(out)["gateway"] == "test-gw"


def test_cli_devices_table_json_filter_and_one(daemon: GatewayProcess,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "ONLINE", "LAST", "SEEN", "VALUES"]
    assert [line.split()[0] for line in lines[1:4]] == ["sim:sim-1", "sim:sim-2", "sim:sim-3"]
    assert "temperature=" in lines[1] and "Cel" in lines[1]
    assert lines[-1] == "3 device(s), 3 online"
    rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon), "--json")
    assert rc == 0 and len(json.loads(out)) == 3
    rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon), "--offline")
    assert rc == 0 and out.strip() == "no devices known yet"
    rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon), "sim:sim-2")
    assert rc == 0 and "id           sim:sim-2" in out and "temperature" in out
    rc, _, err = run_cli(capsys, "devices", "--socket", sock(daemon), "sim:ghost")
    assert rc == 1 and "no device 'sim:ghost'" in err


def test_cli_outbox_shows_depth_and_bounds(daemon: GatewayProcess,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "outbox", "--socket", sock(daemon))
    assert rc == 0
    assert out.startswith("waiting   ")
    assert "of 256.0 MiB" in out and "uplink    disabled" in out
    rc, out, _ = run_cli(capsys, "outbox", "--socket", sock(daemon), "--json")
    assert rc == 0 and json.loads(out)["depth"] > 0


def test_cli_send_exit_code_follows_the_result(daemon: GatewayProcess,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "send", "--socket", sock(daemon), "sim:sim-2", "toggle")
    assert rc == 0 and out.startswith("delivered: power")
    rc, _, err = run_cli(capsys, "send", "--socket", sock(daemon), "sim:sim-2", "dim",
                         "level=50", "fast=true")
    assert rc == 1 and err.startswith("unsupported:")
    rc, out, _ = run_cli(capsys, "send", "--socket", sock(daemon), "sim:sim-2", "level",
                         "level=40")
    assert rc == 0 and out.startswith("delivered: level 40 %")
    rc, _, err = run_cli(capsys, "send", "--socket", sock(daemon), "sim:sim-2", "level",
                         "level=150")
    assert rc == 1 and err.startswith("refused: level: expected a percentage")
    rc, _, err = run_cli(capsys, "send", "--socket", sock(daemon), "sim:sim-2", "dim", "level")
    assert rc == 2 and "key=value" in err
    rc, out, _ = run_cli(capsys, "send", "--socket", sock(daemon), "--json", "nobody:1", "on")
    assert rc == 1 and json.loads(out)["status"] == "unknown_device"


def test_cli_pair_without_a_joining_adapter_says_so(daemon: GatewayProcess,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "pair", "--socket", sock(daemon), "--seconds", "5")
    assert rc == 1 and "no running adapter can permit joining" in err


def test_cli_exits_3_with_a_clear_message_when_the_daemon_is_not_running(
        tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway:\n  state_dir: {tmp_path / 'state'}\n")
    for argv in (["status"], ["devices", "--json"], ["outbox"], ["send", "sim:sim-1", "on"],
                 ["pair", "--seconds", "3"]):
        proc = subprocess.run([sys.executable, "-m", "gateway", *argv, "--config", str(config)],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 3, (argv, proc.stderr)
        assert "the gateway is not running" in proc.stderr
        assert str(tmp_path / "state" / "gateway.sock") in proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_rename_names_a_device(daemon: GatewayProcess,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "rename", "--socket", sock(daemon), "sim:sim-1", "Porch")
    assert rc == 0 and out.strip() == "sim:sim-1 is now named 'Porch'"
    rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon), "--json", "sim:sim-1")
    assert json.loads(out)["name"] == "Porch"
    rc, _, err = run_cli(capsys, "rename", "--socket", sock(daemon), "sim:ghost", "x")
    assert rc == 1 and "no device 'sim:ghost'" in err


def test_cli_forget_removes_a_device_until_it_sends_again(
        daemon: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "forget", "--socket", sock(daemon), "sim:sim-2")
    assert rc == 0 and out.startswith("sim:sim-2 forgotten")
    # the simulator keeps sending: the device registers again, with a new first_seen
    forgotten_at = time.time()

    def shown() -> str | None:
        rc, out, _ = run_cli(capsys, "devices", "--socket", sock(daemon), "--json", "sim:sim-2")
        return out if rc == 0 else None

    out = wait_until(shown, 10, "sim:sim-2 registered again")
    assert json.loads(out)["first_seen"] >= forgotten_at - 0.5
    rc, _, err = run_cli(capsys, "forget", "--socket", sock(daemon), "sim:ghost")
    assert rc == 1 and "no device 'sim:ghost'" in err
