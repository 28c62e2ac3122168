"""``gateway zigbee backup``, ``gateway send`` and ``gateway hardware`` against a real daemon.

The daemon runs in this process with the Zigbee adapter on the virtual radio (no stick
here, and the virtual air must be shared with the test to pair a device); the CLI runs as
its own process and talks to the daemon's real control socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import load_config
from gateway.daemon import Gateway
from tests.zigbee_harness import wait_for
from tests.zigbee_virtual import NETWORKS, RADIO_TYPE, network, smart_plug


def _config(tmp_path: Path, net: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "zigbee-cli", "state_dir": str(tmp_path / "state")},
        "uplink": {"enabled": False},
        "adapters": [{"type": "zigbee", "name": "zb", "radio_type": RADIO_TYPE,
                      "port": f"virtual://{net}", "channel": 20}],
    }))
    return path


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_zigbee_backup_and_send_through_the_running_daemon(tmp_path: Path) -> None:
    name = f"zigbee-cli-{os.getpid()}"
    gw = Gateway(load_config(_config(tmp_path, name)))
    await gw.start()
    sock = str(tmp_path / "state" / "gateway.sock")
    try:
        assert gw.supervisor is not None
        adapter = gw.supervisor.adapters["zb"]
        await adapter.permit_join(30)  # type: ignore[attr-defined]
        plug = smart_plug()
        assert network(name).join(plug)
        dev = f"zb:{plug.ieee}"
        await wait_for(lambda: (gw.devices.get(dev) or {}).get("interview") == "configured",
                       10, "the plug to be configured")

        rc, out, err = await _cli("zigbee", "backup", "--socket", sock, "--json")
        assert rc == 0, err
        backup = json.loads(out)["backups"]["zb"]
        written = json.loads(await asyncio.to_thread(Path(backup["path"]).read_text))
        assert written["metadata"]["format"] == "zigpy/open-coordinator-backup"
        assert written["channel"] == 20
        assert Path(backup["latest"]).parent == tmp_path / "state" / "zb"

        rc, out, err = await _cli("send", "--socket", sock, dev, "on")
        assert rc == 0, err + out
        assert plug.endpoints[1].in_clusters[0x0006][0x0000] is True

        rc, out, err = await _cli("zigbee", "backup", "--socket", sock, "--adapter", "nope")
        assert rc == 1 and "no running Zigbee adapter 'nope'" in err
    finally:
        await gw.stop()
        NETWORKS.pop(name, None)


async def test_zigbee_backup_without_a_daemon_says_so() -> None:
    rc, _, err = await _cli("zigbee", "backup", "--socket", "/nonexistent/gateway.sock")
    assert rc == 3 and "not running" in err


async def test_hardware_lists_no_stick_on_a_machine_without_one() -> None:
    # this machine has no USB Zigbee stick: the listing is empty, and says what to check
    rc, out, _ = await _cli("hardware", "--json")
    assert rc == 0 and json.loads(out) == []
    rc, out, _ = await _cli("hardware")
    assert rc == 1 and "no known Zigbee stick" in out


def test_daemon_keeps_its_zigbee_network_across_a_restart(gateway_factory: Any,
                                                          tmp_path: Path) -> None:
    """The real ``gateway run`` process, loading the adapter by its entry point; the
    virtual radio (no stick here) forms the network inside that process."""
    state = tmp_path / "gw" / "state"
    config = {
        "gateway": {"id": "zigbee-daemon", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "adapters": [{"type": "zigbee", "name": "zigbee", "radio_type": RADIO_TYPE,
                      "port": "virtual://daemon", "channel": 25}],
    }
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    gw = gateway_factory(config, env=env).start()
    assert "radio on virtual://daemon up" in gw.log_text()
    sock = str(state / "gateway.sock")
    first = subprocess.run([sys.executable, "-m", "gateway", "zigbee", "backup", "--socket",
                            sock, "--json"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    pan = json.loads(first.stdout)["backups"]["zigbee"]["pan_id"]
    assert gw.stop() == 0
    assert "gateway stopped" in gw.log_text()

    # the virtual stick's memory lived in that process: the new one starts blank, and the
    # network comes back from zigpy's database in the state directory
    gw = gateway_factory(config, name="gw", env=env).start(wait_ready=0)
    gw.wait_for_log("ready in", count=2)  # the same log file as the first run
    again = subprocess.run([sys.executable, "-m", "gateway", "zigbee", "backup", "--socket",
                            sock, "--json"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["backups"]["zigbee"]["pan_id"] == pan
    assert gw.stop() == 0
