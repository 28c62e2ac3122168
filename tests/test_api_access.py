"""Who may reach the control API: config check of binds, tokens on TCP, the socket file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.api.config import ApiConfig
from gateway.config.model import ConfigError, load_config
from tests.brokers import free_port
from tests.daemon import GatewayProcess

TOKEN = "0123456789abcdef0123456789abcdef"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def base_yaml(tmp_path: Path) -> str:
    return (f"gateway:\n  state_dir: {tmp_path / 'state'}\n"
            "uplink:\n  enabled: false\n")


def test_non_loopback_bind_without_token_is_refused_by_gateway_check(tmp_path: Path) -> None:
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path)
                   + "api:\n  enabled: true\n  http: 0.0.0.0:8780\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "check", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    # file, line of the key, key path, and what to do
    assert f"{config}:7: api.http: 0.0.0.0 is reachable from other machines" in proc.stderr
    assert "api.token_file" in proc.stderr


@pytest.mark.parametrize("http", ["192.168.1.10:8780", "[::]:8780", "gateway.local:8780"])
def test_every_non_loopback_address_needs_a_token(tmp_path: Path, http: str) -> None:
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path) + f"api:\n  http: '{http}'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert exc.value.problems[0].startswith(f"{config}:6: api.http: ")


@pytest.mark.parametrize("http", ["127.0.0.1:8780", "[::1]:8780", "localhost:8780"])
def test_loopback_bind_needs_no_token(tmp_path: Path, http: str) -> None:
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path) + f"api:\n  http: '{http}'\n")
    assert load_config(config).api.http == http


def test_non_loopback_bind_with_token_file_passes_check(tmp_path: Path) -> None:
    write(tmp_path / "token", TOKEN + "\n")
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path)
                   + f"api:\n  token_file: {tmp_path / 'token'}\n  http: 0.0.0.0:8780\n")
    assert load_config(config).api.http_address == ("0.0.0.0", 8780)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("http", "'8780'", "expected host:port"),
    ("http", "127.0.0.1:99999", "port must be between 1 and 65535"),
    ("socket_mode", "'0999'", "octal permissions"),
    ("command_timeout", "0", "greater than 0"),
    ("sockt", "/run/gw.sock", "unknown key"),
    ("socket", "/run/" + "x" * 120 + ".sock", "at most 107 bytes"),
])
def test_bad_api_values_name_line_and_key(tmp_path: Path, key: str, value: str,
                                          expected: str) -> None:
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path)
                   + f"api:\n  enabled: true\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert exc.value.problems[0].startswith(f"{config}:7: api.{key}: ")
    assert expected in exc.value.problems[0]


def test_socket_mode_is_parsed_as_octal() -> None:
    assert ApiConfig(socket_mode="0600").mode == 0o600
    assert ApiConfig().mode == 0o660


async def get(url: str, connector: aiohttp.BaseConnector | None = None,
              **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_tcp_needs_the_bearer_token_and_the_unix_socket_does_not(tmp_path: Path) -> None:
    token_file = write(tmp_path / "api-token", TOKEN + "\n")
    port = free_port()
    state = tmp_path / "state"
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(state)}, "uplink": {"enabled": False},
        "api": {"http": f"127.0.0.1:{port}", "token_file": str(token_file)},
    })
    gw.start()
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = await get(f"{base}/healthz")
        assert status == 401 and "Authorization: Bearer" in body["error"]
        status, _ = await get(f"{base}/healthz", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, body = await get(f"{base}/healthz",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["ready"] is True
        async with aiohttp.ClientSession() as session, \
                session.post(f"{base}/api/permit-join", json={"seconds": 5},
                             headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            # past the token check: no adapter can join here
            assert resp.status == 409
        status, body = await get("http://gateway/healthz",
                                 aiohttp.UnixConnector(path=str(state / "gateway.sock")))
        assert status == 200 and body["ready"] is True
    finally:
        assert gw.stop() == 0


async def test_loopback_tcp_without_token_reads_but_takes_no_commands(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(state)}, "uplink": {"enabled": False},
        "api": {"http": f"127.0.0.1:{port}"},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 1}],
    })
    gw.start()
    try:
        status, body = await get(f"http://127.0.0.1:{port}/api/outbox")
        assert status == 200 and "depth" in body
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200 and "gateway_ready 1.0" in await resp.text()
            for method, path in (("POST", "/api/devices/sim:sim-1/commands"),
                                 ("POST", "/api/permit-join"),
                                 ("DELETE", "/api/devices/sim:sim-1"),
                                 ("PATCH", "/api/devices/sim:sim-1")):
                async with session.request(method, f"http://127.0.0.1:{port}{path}",
                                           json={"action": "off", "name": "x"}) as resp:
                    assert resp.status == 403, (method, path)
                    assert "needs api.token_file" in (await resp.json())["error"]
        # the same command through the Unix socket goes through
        async with aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(state / "gateway.sock"))) as session, \
                session.post("http://gateway/api/devices/sim:sim-1/commands",
                             json={"action": "off"}) as resp:
            assert resp.status == 200
    finally:
        gw.stop()


@pytest.mark.parametrize(("content", "expected"), [
    ("tiny5\n", "holds 5 characters; use a token of at least 16"),
    (None, "cannot read"),
])
def test_a_short_or_missing_token_is_refused_at_config_check(
        tmp_path: Path, content: str | None, expected: str) -> None:
    token_file = tmp_path / "api-token"
    if content is not None:
        write(token_file, content)
    config = write(tmp_path / "gw.yaml", base_yaml(tmp_path)
                   + f"api:\n  token_file: {token_file}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    problem = exc.value.problems[0]
    assert problem.startswith(f"{config}:6: api.token_file: ")
    assert expected in problem
    assert "tiny5" not in problem  # the secret itself is never shown


def test_socket_left_by_a_killed_daemon_is_replaced_and_a_live_one_is_not(
        tmp_path: Path) -> None:
    sock = tmp_path / "gateway.sock"

    def config(name: str) -> dict[str, Any]:
        return {"gateway": {"state_dir": str(tmp_path / name / "state")},
                "uplink": {"enabled": False}, "api": {"socket": str(sock)}}

    first = GatewayProcess(tmp_path / "first", config("first")).start()
    try:
        # a second daemon on the same socket must not steal it from the running one
        second = GatewayProcess(tmp_path / "second", config("second"))
        second.start(wait_ready=0)
        assert second.proc is not None
        assert second.proc.wait(30) == 1
        assert "another gateway is listening on" in second.log_text()
        second.stop()
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)  # type: ignore[union-attr]
        assert sock.exists()  # SIGKILL leaves the socket file behind
    finally:
        first.stop()
    third = GatewayProcess(tmp_path / "third", config("third")).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
    finally:
        assert third.stop() == 0
    assert not sock.exists()  # a clean stop removes it


def test_socket_path_too_long_for_unix_is_a_clear_start_error(tmp_path: Path) -> None:
    # the default socket lives in state_dir, which the config check cannot judge alone
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(tmp_path / ("x" * 100))}, "uplink": {"enabled": False},
    })
    gw.start(wait_ready=0)
    assert gw.proc is not None
    assert gw.proc.wait(30) == 1
    assert "set api.socket to a shorter path" in gw.log_text()
    gw.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a client as another user")
def test_socket_mode_decides_which_users_may_operate_the_gateway(tmp_path: Path) -> None:
    # a directory everyone may traverse, so only the socket's own mode is in the way
    run_dir = Path(tempfile.mkdtemp(prefix="gwsock", dir="/tmp"))
    run_dir.chmod(0o755)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-m", "gateway", "status", "--socket"]
    sock = run_dir / "gw.sock"
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(tmp_path / "state")},
        "uplink": {"enabled": False}, "api": {"socket": str(sock), "socket_mode": "0660"},
    })
    try:
        gw.start()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        denied = subprocess.run([*as_nobody, str(sock)], capture_output=True, text=True,
                                timeout=30, cwd="/")
        assert denied.returncode == 3, denied.stderr
        assert f"permission denied on {sock}" in denied.stderr
        sock.chmod(0o666)  # what socket_mode: "0666" would give: now anyone may
        allowed = subprocess.run([*as_nobody, str(sock)], capture_output=True, text=True,
                                 timeout=30, cwd="/")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        gw.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
