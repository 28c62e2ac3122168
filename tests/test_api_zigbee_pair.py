"""``gateway pair`` against the real Zigbee adapter and real zigpy on a virtual radio.

The daemon runs in this process (the virtual radio's air lives in memory, so the test
must share it to make a device join); the CLI runs as its own process and talks to the
daemon's real socket. Only the radio is simulated (no stick here), see
``tests/zigbee_virtual.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from gateway.config.model import load_config
from gateway.daemon import Gateway
from tests.waiting import eventually
from tests.zigbee_virtual import RADIO_TYPE, climate_sensor, network


def zigbee_config(tmp_path: Path, net: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "pair-test", "state_dir": str(tmp_path / "state")},
        "uplink": {"enabled": False},
        "adapters": [{"type": "zigbee", "name": "zigbee", "radio_type": RADIO_TYPE,
                      "port": f"virtual://{net}", "channel": 15}],
    }))
    return path


async def test_pair_shows_a_zigbee_sensor_joining_and_being_interviewed(tmp_path: Path) -> None:
    name = f"api-pair-{os.getpid()}"
    gw = Gateway(load_config(zigbee_config(tmp_path, name)))
    await gw.start()
    sock = str(tmp_path / "state" / "gateway.sock")
    try:
        assert gw.supervisor is not None and gw.supervisor.states["zigbee"].state == "running"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "pair", "--socket", sock, "--seconds", "60",
            "--interval", "0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        net = network(name)
        await eventually(lambda: net.permit_open, 15, "joining open on the virtual stick")
        assert net.join(climate_sensor("00:15:8d:00:0a:0b:0c:0d"))
        device = "zigbee:00:15:8d:00:0a:0b:0c:0d"
        lines: list[str] = []

        async def read_until_interviewed() -> None:
            assert cli.stdout is not None
            while line := (await cli.stdout.readline()).decode():
                lines.append(line.rstrip("\n"))
                if device in line and ("interview interviewed" in line
                                       or "interview configured" in line):
                    return

        await asyncio.wait_for(read_until_interviewed(), 30)
        cli.send_signal(signal.SIGINT)  # Ctrl-C: pair closes joining on its way out
        rest, err = await asyncio.wait_for(cli.communicate(), 30)
        lines += rest.decode().splitlines()
        assert cli.returncode == 130, err.decode()
        assert "joining closed" in err.decode()
        await eventually(lambda: not net.permit_open, 10, "joining closed on the virtual stick")
        assert lines[0].startswith("joining open on zigbee for 60 s")
        seen = [line for line in lines if device in line]
        assert seen[0].startswith(f"+ {device}: ")
        # zigpy's interview fills in model and manufacturer from the Basic cluster
        # (the first poll may already find it interviewed: then "+" is its only line)
        assert seen[-1][2:].startswith(f"{device}: model lumi.weather, manufacturer LUMI, "
                                       "interview ")
        conn = aiohttp.UnixConnector(path=sock)
        async with aiohttp.ClientSession(connector=conn) as session, \
                session.get(f"http://gateway/api/devices/{device}") as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["model"] == "lumi.weather" and body["manufacturer"] == "LUMI"
        assert body["interview"] in ("interviewed", "configured")
        # the Zigbee adapter's own routes are mounted on the same API
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session, \
                session.post("http://gateway/api/zigbee/backup?adapter=nope") as resp:
            assert resp.status == 404
            assert "no running Zigbee adapter 'nope'" in (await resp.json())["error"]
        # forgetting a Zigbee device asks it to leave the network through the adapter
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
            async with session.delete(f"http://gateway/api/devices/{device}") as resp:
                removed = await resp.json()
                assert resp.status == 200, removed
            async with session.get(f"http://gateway/api/devices/{device}") as resp:
                assert resp.status == 404
        assert removed["adapter"]["status"] == "delivered"
        assert removed["adapter"]["detail"] == "left the network"
    finally:
        await gw.stop()
