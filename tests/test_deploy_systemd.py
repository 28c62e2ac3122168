"""systemd/gateway.service: hardened, yet able to open serial sticks and reach the network.

The exposure score comes from the real ``systemd-analyze security --offline=yes``; the
units are parsed by the real ``systemd-analyze verify``. No systemd runs here as PID 1,
so the unit is not started (that needs a booted Pi or VM).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd/gateway.service"
FIRSTBOOT = REPO / "systemd/gateway-firstboot.service"
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing (Debian package systemd; tests/run.sh "
                            "installs it)")


def settings(unit: Path) -> dict[str, list[str]]:
    """key → every value it is given in the unit, in order (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def security(unit: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=20", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_unit_exposure_is_within_threshold_20() -> None:
    result = security(UNIT)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0
    # the device ACL that the score accounts for is the serial sticks', nothing broader
    acl = next(line for line in result.stdout.splitlines() if "device ACL" in line)
    assert "char-ttyUSB:rw" in acl and "char-ttyACM:rw" in acl
    assert "char-ttyS" not in acl  # shares its major number with the virtual consoles


@needs_analyze
def test_security_check_fails_an_unhardened_unit(tmp_path: Path) -> None:
    plain = tmp_path / "gateway.service"
    plain.write_text("[Service]\nExecStart=/bin/true\nUser=gateway\n")
    result = security(plain)
    assert result.returncode != 0


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, FIRSTBOOT], ids=lambda p: p.name)
def test_units_verify_without_warnings(tmp_path: Path, unit: Path) -> None:
    # ExecStart points into /opt/gateway, which exists on the Pi only: swap the binary
    copy = tmp_path / unit.name
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", unit.read_text()))
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unit_runs_as_notify_service_with_watchdog_restart_and_state() -> None:
    s = settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert re.fullmatch(r"\d+s", s["WatchdogSec"][0])
    assert s["Restart"] == ["always"]
    assert s["StateDirectory"] == ["gateway"]
    assert s["User"] == ["gateway"] and s["SupplementaryGroups"] == ["dialout"]
    assert s["EnvironmentFile"] == ["-/etc/gateway/gateway.env"]
    assert "gateway-firstboot.service" in s["After"][0]
    # the command line is one the CLI accepts
    command = s["ExecStart"][0].split()
    assert command[0] == "/opt/gateway/venv/bin/gateway"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run" and args.config == "/etc/gateway/gateway.yaml"


def test_unit_loads_every_credential_the_example_config_uses() -> None:
    config = REPO / "configs/gateway.yaml"
    used = {m for line in config.read_text().splitlines()
            if not line.lstrip().startswith("#")
            for m in re.findall(r"\$\{credential:([^}]+)\}", line)}
    assert used, "the example config uses no credential: this test checks nothing"
    loaded = {v.split(":", 1)[0]: v.split(":", 1)[1] for v in settings(UNIT)["LoadCredential"]}
    assert used <= set(loaded)
    for name, path in loaded.items():
        assert path == f"/etc/gateway/credentials/{name}"
    # and first boot generates each of them
    firstboot = (REPO / "deploy/firstboot.sh").read_text()
    generated = re.search(r'^GENERATED="([^"]*)"', firstboot, re.M)
    assert generated and set(loaded) == set(generated.group(1).split())


def test_unit_keeps_serial_sticks_network_and_unprivileged_ports_reachable() -> None:
    s = settings(UNIT)
    assert s["DevicePolicy"] == ["closed"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(s["DeviceAllow"])
    assert "PrivateDevices" not in s and "PrivateUsers" not in s  # both would hide the sticks
    families = set(s["RestrictAddressFamilies"][0].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families
    assert "PrivateNetwork" not in s and "IPAddressDeny" not in s
    # ports >= 1024 need no capability: none is granted
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["ProtectSystem"] == ["strict"]


def test_unit_restarts_after_any_unasked_death_but_not_a_config_error() -> None:
    s = settings(UNIT)
    # systemd counts death by SIGHUP/SIGINT/SIGTERM/SIGPIPE as clean: only "always"
    # restarts after them (on-failure and on-abnormal would leave the gateway down)
    assert s["Restart"] == ["always"]
    assert re.fullmatch(r"[1-9]\d*s", s["RestartSec"][0])
    # exit 2 is `gateway run`'s config error: retrying cannot fix it
    assert s["RestartPreventExitStatus"] == ["2"]
    # a daemon dying at once, again and again, stops being restarted after a bound
    assert int(s["StartLimitBurst"][0]) >= 3
    assert int(s["StartLimitIntervalSec"][0]) >= int(s["StartLimitBurst"][0]) * int(
        s["RestartSec"][0].rstrip("s"))
    unit = UNIT.read_text()
    assert unit.index("StartLimitBurst") < unit.index("[Service]")  # a [Unit] setting


def test_unit_reload_sends_sighup_to_the_main_process() -> None:
    s = settings(UNIT)
    # the daemon takes SIGHUP as a reload (tests/test_reload_daemon.py sends it)
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_unit_keeps_its_hardening() -> None:
    s = settings(UNIT)
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"] and s["DevicePolicy"] == ["closed"]


def syscall_group(name: str, seen: dict[str, set[str]]) -> set[str]:
    """The system calls of a systemd syscall group (``@name``), as this systemd expands it."""
    if name not in seen:
        assert ANALYZE is not None
        result = subprocess.run([ANALYZE, "syscall-filter", "--no-pager", name],
                                capture_output=True, text=True, timeout=60, check=True)
        calls: set[str] = set()
        for line in result.stdout.splitlines()[1:]:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            calls |= syscall_group(entry, seen) if entry.startswith("@") else {entry}
        seen[name] = calls
    return seen[name]


def allowed_syscalls(unit: Path) -> set[str]:
    """What SystemCallFilter= lets through, read the way systemd reads it: the first line
    is an allow list (or, with ~, a deny list on top of everything), every later line adds
    to the allowed set or, with ~, takes away from it."""
    lines = settings(unit)["SystemCallFilter"]
    assert not lines[0].startswith("~"), "these tests expect an allow list first"
    seen: dict[str, set[str]] = {}

    def expand(words: str) -> set[str]:
        out: set[str] = set()
        for word in words.split():
            out |= syscall_group(word, seen) if word.startswith("@") else {word}
        return out

    allowed = expand(lines[0])
    for line in lines[1:]:
        if line.startswith("~"):
            allowed -= expand(line[1:])
        else:
            allowed |= expand(line)
    return allowed


@needs_analyze
def test_unit_lets_the_api_hand_its_socket_to_a_group() -> None:
    # api.socket_group: the server chowns the socket (fchownat); ~@privileged alone removes
    # @chown and the daemon died at start with PermissionError
    allowed = allowed_syscalls(UNIT)
    assert {"fchownat", "fchown", "chown"} <= allowed
    # while what the deny line is there for stays denied
    for call in ("mount", "reboot", "init_module", "settimeofday", "ptrace", "setuid",
                 "swapon", "iopl", "bpf"):
        assert call not in allowed, call


@needs_analyze
def test_syscall_reading_sees_chown_denied_without_the_allow_line(tmp_path: Path) -> None:
    # the reading above can fail: the unit as it was before denies chown
    old = tmp_path / "gateway.service"
    old.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                             if line.strip() != "SystemCallFilter=@chown") + "\n")
    assert settings(old)["SystemCallFilter"] != settings(UNIT)["SystemCallFilter"]
    assert "fchownat" not in allowed_syscalls(old)


def test_socket_group_of_the_example_is_one_of_the_units_groups() -> None:
    # chown to a group needs no capability only when the process is in that group
    s = settings(UNIT)
    groups = set(s["Group"]) | {g for line in s["SupplementaryGroups"] for g in line.split()}
    example = re.search(r"(?m)^\s*#?\s*socket_group:\s*(\S+)",
                        (REPO / "configs/gateway.yaml").read_text())
    assert example, "configs/gateway.yaml no longer shows api.socket_group"
    assert example.group(1) in groups


def test_unit_loads_the_serial_drivers_before_its_device_list_is_made() -> None:
    # DeviceAllow=char-ttyUSB/char-ttyACM are resolved from /proc/devices at start: the
    # drivers that register those majors are loaded by other units ordered before it
    s = settings(UNIT)
    wants = {u for line in s["Wants"] for u in line.split()}
    after = {u for line in s["After"] for u in line.split()}
    drivers = {"modprobe@usbserial.service", "modprobe@cdc_acm.service"}
    assert drivers <= wants and drivers <= after
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(s["DeviceAllow"])
    # an ExecStartPre= would come too late: the unit's device list is already fixed
    assert not any("modprobe" in line for line in s.get("ExecStartPre", []))
