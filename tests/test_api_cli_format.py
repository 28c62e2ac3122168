"""What the CLI prints and parses, without a daemon: parameters, durations, sizes, tables."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway.api.client import DaemonUnreachable, device_path, socket_from_config
from gateway.api.commands import duration, format_status, parse_params, size, table
from gateway.cli import main as cli


def test_send_parameters_keep_json_types_and_fall_back_to_strings() -> None:
    assert parse_params(["level=50", "on=true", "name=hall", "rgb=[1,2,3]", "note=",
                         "t=21.5", "x=null", "eq=a=b"]) == {
        "level": 50, "on": True, "name": "hall", "rgb": [1, 2, 3], "note": "", "t": 21.5,
        "x": None, "eq": "a=b"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_params(["level"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_params(["=5"])


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3600 + 120, "1h 2m"), (2 * 86400 + 3 * 3600,
                                                                    "2d 3h"), (-5, "0s")])
def test_durations_read_like_people_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_sizes_use_binary_units_like_the_config() -> None:
    assert size(512) == "512 B"
    assert size(20 * 1024) == "20.0 KiB"
    assert size(256 * 1024 * 1024) == "256.0 MiB"
    assert size(3 * 1024**4) == "3072.0 GiB"


def test_table_aligns_columns_and_shows_missing_values_as_dashes() -> None:
    out = table([("a", None, True), ("long-id", ["x", "y"], False)], ("ID", "TAGS", "ON"))
    assert out.splitlines() == ["ID       TAGS  ON", "a        -     yes",
                                "long-id  x,y   no"]


def test_status_report_lists_problems_and_adapter_rows() -> None:
    text = format_status({
        "status": "degraded", "gateway": "gw1", "version": "0.1.0", "uptime": 3700,
        "uplink": {"enabled": True, "connected": False},
        "outbox": {"depth": 12, "events": 1, "bytes": 4096, "oldest_age": 75, "dropped": 0},
        "devices": {"known": 3, "online": 2},
        "adapters": {"zb": {"type": "zigbee", "state": "backoff", "restarts": 2, "since": 0,
                            "last_error": "OSError: no stick"}},
        "problems": ["adapter zb is backoff (OSError: no stick)"],
    })
    lines = text.splitlines()
    assert lines[0] == "gateway gw1 0.1.0: degraded, up 1h 1m"
    assert lines[1] == "uplink   NOT CONNECTED"
    assert lines[2] == "outbox   12 reading(s), 1 event(s), 4.0 KiB, oldest 1m 15s, 0 dropped"
    assert lines[-1] == "  - adapter zb is backoff (OSError: no stick)"
    assert any(line.split()[:4] == ["zb", "zigbee", "backoff", "2"] for line in lines)


def test_device_ids_are_escaped_in_paths() -> None:
    assert device_path("zigbee:00:12:4b:00:01:02:03:04") == \
        "/api/devices/zigbee:00:12:4b:00:01:02:03:04"
    assert device_path("mqtt:home/kitchen", "/commands") == \
        "/api/devices/mqtt:home%2Fkitchen/commands"


def test_socket_comes_from_api_socket_or_state_dir_without_needing_secrets(
        tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    # the uplink password is unreadable here: the CLI must not care
    cfg.write_text("gateway:\n  state_dir: /srv/gw\nuplink:\n  password: ${credential:nope}\n")
    assert socket_from_config(cfg) == Path("/srv/gw/gateway.sock")
    cfg.write_text("api:\n  socket: /run/gateway/api.sock\n")
    assert socket_from_config(cfg) == Path("/run/gateway/api.sock")
    cfg.write_text("gateway: {}\n")
    assert socket_from_config(cfg) == Path("/var/lib/gateway/gateway.sock")
    cfg.write_text("api:\n  enabled: false\n")
    with pytest.raises(DaemonUnreachable, match="api.enabled is false"):
        socket_from_config(cfg)
    with pytest.raises(DaemonUnreachable, match="no such file"):
        socket_from_config(tmp_path / "missing.yaml")


def test_a_hung_daemon_is_reported_after_the_timeout(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)  # connections queue up, nobody ever answers
        t0 = time.monotonic()
        rc = cli(["status", "--socket", str(path), "--timeout", "0.3"])
        elapsed = time.monotonic() - t0
    assert rc == 3
    assert f"the gateway did not answer on {path} within 0.3 s" in capsys.readouterr().err
    assert elapsed < 5
