"""Permit-join and ``gateway pair`` against a daemon running a joining-capable plugin.

No Zigbee stick here: ``tests/joining_adapter.py`` stands in for the radio, loaded
through a real ``gateway.adapters`` entry point, and makes one device join and be
interviewed when joining is opened.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon import GatewayProcess
from tests.joining_adapter import install_plugin

DEVICE_PREFIX = "zb:00:11:22:33:44:55:66:"


@pytest.fixture(scope="module")
def joining_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One daemon for the module: each permit-join makes a new device join."""
    tmp_path = tmp_path_factory.mktemp("pair")
    env = install_plugin(tmp_path / "plugins")
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(tmp_path / "state")}, "uplink": {"enabled": False},
        "adapters": [{"type": "joining", "name": "zb", "step": 0.7},
                     {"type": "joining", "name": "zb2", "refuse_join": True}],
    }, env=env)
    gw.start()
    yield gw
    gw.stop()


def sock(gw: GatewayProcess) -> str:
    return str(Path(gw.config["gateway"]["state_dir"]) / "gateway.sock")


def pair_cli(gw: GatewayProcess, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "pair", "--socket", sock(gw),
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=gw.env)


def test_pair_opens_joining_and_shows_the_device_as_it_is_interviewed(
        joining_daemon: GatewayProcess) -> None:
    proc = pair_cli(joining_daemon, "--seconds", "3", "--interval", "0.1")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("joining open on zb for 3 s")
    # the other adapter could not open joining: said on stderr, pairing goes on
    assert "gateway pair: zb2: RuntimeError: network not formed yet" in err
    device = lines[1].split()[1].rstrip(":")
    assert device.startswith(DEVICE_PREFIX)
    joined = [line for line in lines if device in line]
    assert joined[0] == f"+ {device}: model TS0201, manufacturer _TZ3000_test, interview started"
    assert joined[-1] == f"~ {device}: model TS0201, manufacturer _TZ3000_test, interview done"
    assert lines[-1] == "joining closed: 1 new device(s)"
    assert "zb: permit_join 3" in joining_daemon.log_text()


def test_pair_json_prints_one_device_object_per_change(joining_daemon: GatewayProcess) -> None:
    proc = pair_cli(joining_daemon, "--seconds", "3", "--json", "--interval", "0.1")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["interview"] for o in objects] == ["started", "done"]
    assert objects[0]["id"].startswith(DEVICE_PREFIX)
    assert all(o["id"] == objects[0]["id"] and o["model"] == "TS0201" for o in objects)
    assert objects[-1]["adapter"] == "zb" and "first_seen" in objects[-1]


def test_ctrl_c_during_pair_closes_joining(joining_daemon: GatewayProcess) -> None:
    closes = joining_daemon.log_text().count("zb: permit_join 0")
    proc = pair_cli(joining_daemon, "--seconds", "60")
    joining_daemon.wait_for_log("zb: permit_join 60", timeout=15)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "joining closed" in err
    joining_daemon.wait_for_log("zb: permit_join 0", timeout=10, count=closes + 1)


def test_pair_close_closes_joining_at_once(joining_daemon: GatewayProcess) -> None:
    closes = joining_daemon.log_text().count("zb: permit_join 0")
    proc = pair_cli(joining_daemon, "--close", "--adapter", "zb")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "joining closed on zb"
    joining_daemon.wait_for_log("zb: permit_join 0", timeout=10, count=closes + 1)


async def test_permit_join_endpoint_reports_each_adapter(joining_daemon: GatewayProcess) -> None:
    conn = aiohttp.UnixConnector(path=sock(joining_daemon))
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.post("http://gateway/api/permit-join", json={"seconds": 5}) as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["seconds"] == 5 and body["adapters"]["zb"] == {"ok": True}
            assert body["adapters"]["zb2"] == {
                "ok": False, "error": "RuntimeError: network not formed yet"}
            assert body["until"] == pytest.approx(time.time() + 5, abs=2)
        async with session.post("http://gateway/api/permit-join",
                                json={"seconds": 5, "adapter": "zb2"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == \
                "permit-join failed: zb2: RuntimeError: network not formed yet"
        async with session.post("http://gateway/api/permit-join",
                                json={"seconds": 5, "adapter": "other"}) as resp:
            assert resp.status == 409
            assert "'other'" in (await resp.json())["error"]
        # a plugin's routes are mounted through the gateway.api_routes entry point; a
        # plugin whose add_routes fails is left out, logged, and the rest still answers
        async with session.get("http://gateway/api/joining") as resp:
            assert resp.status == 200 and await resp.json() == {"joining": ["zb", "zb2"]}
    assert "routes 'broken' (tests.joining_adapter:broken_routes) not mounted: " \
        "RuntimeError: broken on purpose" in joining_daemon.log_text()


async def test_adapter_in_backoff_makes_health_degraded_and_pairing_explains(
        tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "plugins")
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(tmp_path / "state")}, "uplink": {"enabled": False},
        "adapters": [{"type": "joining", "name": "zb", "fail_start": True}],
    }, env=env)
    gw.start()
    try:
        conn = aiohttp.UnixConnector(path=sock(gw))
        async with aiohttp.ClientSession(connector=conn) as session:
            async with session.get("http://gateway/healthz") as resp:
                health = await resp.json()
            async with session.post("http://gateway/api/permit-join",
                                    json={"seconds": 5}) as resp:
                status, join = resp.status, await resp.json()
            async with session.get("http://gateway/metrics") as resp:
                metrics = await resp.text()
        assert health["status"] == "degraded" and health["ready"] is True
        assert health["adapters"]["zb"]["state"] in ("backoff", "starting")
        assert "no radio on /dev/ttyUSB9" in health["adapters"]["zb"]["last_error"]
        assert any(p.startswith("adapter zb is ") for p in health["problems"])
        assert status == 409 and "zb (" in join["error"] and "not running" in join["error"]
        assert 'gateway_adapter_up{adapter="zb",type="joining"} 0.0' in metrics
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "status", "--socket", sock(gw),
            stdout=asyncio.subprocess.PIPE, env=gw.env)
        out, _ = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 1
        assert b": degraded, up " in out and b"problems:" in out
    finally:
        gw.stop()
