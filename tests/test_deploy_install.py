"""deploy/install.sh, gateway-firstboot and gateway-add-device, run into empty folders.

``--root DIR`` writes every file under DIR and only prints system changes; these tests
check exactly what is written, that nothing else is run (stand-ins for useradd, apt-get,
systemctl... record any call), that a second run changes nothing, and that an edited
config survives an upgrade.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_TOOLS = ("useradd", "usermod", "groupadd", "apt-get", "dpkg-query", "systemctl",
                "udevadm", "chown", "pip", "pip3")

EXPECTED_FILES = {
    # path: mode
    "etc/gateway": 0o750,
    "etc/gateway/gateway.yaml": 0o640,
    "etc/gateway/credentials": 0o700,
    "etc/mosquitto/conf.d/gateway.conf": 0o644,
    "etc/mosquitto/gateway.acl": 0o640,
    "etc/mosquitto/gateway.passwd": 0o640,
    "etc/systemd/system/gateway.service": 0o644,
    "etc/systemd/system/gateway-firstboot.service": 0o644,
    "etc/udev/rules.d/99-gateway-zigbee.rules": 0o644,
    "opt/gateway/bin/gateway-firstboot": 0o755,
    "opt/gateway/bin/gateway-add-device": 0o755,
    "opt/gateway/share/README.md": 0o644,
    "opt/gateway/share/gateway.yaml.example": 0o644,
    "opt/gateway/share/requirements.txt": 0o644,
}
SAME_AS_SOURCE = {
    "etc/gateway/gateway.yaml": "configs/gateway.yaml",
    "etc/mosquitto/conf.d/gateway.conf": "deploy/mosquitto/gateway.conf",
    "etc/mosquitto/gateway.acl": "deploy/mosquitto/gateway.acl",
    "etc/systemd/system/gateway.service": "systemd/gateway.service",
    "etc/systemd/system/gateway-firstboot.service": "systemd/gateway-firstboot.service",
    "etc/udev/rules.d/99-gateway-zigbee.rules": "hardware/99-gateway-zigbee.rules",
    "opt/gateway/bin/gateway-firstboot": "deploy/firstboot.sh",
    "opt/gateway/bin/gateway-add-device": "deploy/add-device.sh",
}


def run(*cmd: str | Path, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})}, check=False)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture
def spy(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with stand-ins for system tools that record every call instead of acting."""
    bindir = tmp_path / "spy-bin"
    bindir.mkdir()
    log = tmp_path / "spy.log"
    for tool in SYSTEM_TOOLS:
        script = bindir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit 0\n')
        script.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, log


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root: (mode, content for files)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(root))] = (st.st_mode, content)
    return out


def install(root: Path, env: dict[str, str] | None = None,
            src: Path = REPO) -> subprocess.CompletedProcess[str]:
    return run("sh", src / "deploy/install.sh", "--root", root, env=env)


def test_install_into_empty_root_writes_exactly_the_expected_files(
        tmp_path: Path, spy: tuple[dict[str, str], Path]) -> None:
    env, log = spy
    root = tmp_path / "root"
    root.mkdir()
    out = install(root, env).stdout
    files = {p: mode for p, (mode, _) in tree(root).items()
             if stat.S_ISREG(mode) or p in EXPECTED_FILES}
    assert {p: stat.S_IMODE(m) for p, m in files.items()} == EXPECTED_FILES
    for installed, source in SAME_AS_SOURCE.items():
        assert (root / installed).read_bytes() == (REPO / source).read_bytes(), installed
    assert (root / "etc/mosquitto/gateway.passwd").read_text() == ""
    link = root / "usr/local/sbin/gateway-add-device"
    assert os.readlink(link) == "/opt/gateway/bin/gateway-add-device"
    # the pins that pip installs are pyproject's, all of them
    with (REPO / "pyproject.toml").open("rb") as f:
        pins = tomllib.load(f)["project"]["dependencies"]
    lines = (root / "opt/gateway/share/requirements.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == pins
    # nothing of the system was touched: every system change is only printed
    assert not log.exists(), f"system tools were run in --root mode: {log.read_text()}"
    for planned in ("would run: useradd --system --user-group", "--shell /usr/sbin/nologin",
                    "would run: usermod -a -G dialout gateway",
                    "would run: apt-get install --no-install-recommends python3 python3-venv"
                    " mosquitto",
                    "would run: python3 -m venv /opt/gateway/venv",
                    "pip install --only-binary=:all: --no-binary=chirpstack-api -r "
                    "/opt/gateway/share/requirements.txt",
                    "would run: chown root:gateway /etc/gateway",
                    "would run: chown mosquitto:mosquitto /etc/mosquitto/gateway.acl",
                    "enable gateway-firstboot.service gateway.service"):
        assert planned in out, planned
    assert not (root / "opt/gateway/venv").exists()


def test_second_install_changes_nothing(tmp_path: Path, spy: tuple[dict[str, str], Path]) -> None:
    env, log = spy
    root = tmp_path / "root"
    root.mkdir()
    install(root, env)
    before = tree(root)
    out = install(root, env).stdout
    assert tree(root) == before
    assert "installed " not in out and "updated " not in out
    assert not log.exists()


def _source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for part in ("deploy", "systemd", "hardware", "configs"):
        shutil.copytree(REPO / part, src / part)
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    return src


def test_upgrade_replaces_an_unedited_config_and_keeps_an_edited_one(tmp_path: Path) -> None:
    src = _source_copy(tmp_path)
    unedited, edited = tmp_path / "unedited", tmp_path / "edited"
    for root in (unedited, edited):
        root.mkdir()
        install(root, src=src)
    conf = "etc/gateway/gateway.yaml"
    with (edited / conf).open("a") as f:
        f.write("# the owner's change\n")
    mine = (edited / conf).read_text()
    # a newer release ships a different example
    example = src / "configs/gateway.yaml"
    example.write_text(example.read_text() + "# new option in the next release\n")
    out_unedited = install(unedited, src=src).stdout
    out_edited = install(edited, src=src).stdout
    assert (unedited / conf).read_text() == example.read_text()
    assert "updated /etc/gateway/gateway.yaml" in out_unedited
    assert (edited / conf).read_text() == mine
    assert (edited / f"{conf}.new").read_text() == example.read_text()
    assert "kept edited /etc/gateway/gateway.yaml" in out_edited


def test_installer_refuses_32_bit_arm(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "uname").write_text("#!/bin/sh\necho armv7l\n")
    (bindir / "uname").chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    result = run("sh", REPO / "deploy/install.sh", "--root", root,
                 env={"PATH": f"{bindir}:{os.environ['PATH']}"}, check=False)
    assert result.returncode == 1
    assert "32-bit ARM" in result.stderr and "grpcio" in result.stderr
    assert list(root.iterdir()) == []


def _firstboot_root(tmp_path: Path, machine_id: str, name: str = "root") -> Path:
    root = tmp_path / name
    root.mkdir()
    install(root)
    (root / "etc/machine-id").write_text(machine_id + "\n")
    return root


def test_first_boot_derives_a_stable_gateway_id_and_private_credentials(tmp_path: Path) -> None:
    machine_id = "4f1c2e3d4b5a69788796a5b4c3d2e1f0"
    root = _firstboot_root(tmp_path, machine_id)
    run("sh", REPO / "deploy/firstboot.sh", "--root", root)
    expected = "gw-" + hashlib.sha256(f"gateway:{machine_id}".encode()).hexdigest()[:12]
    env = (root / "etc/gateway/gateway.env").read_text()
    assert f"GATEWAY_ID={expected}\n" in env
    assert machine_id not in env  # the machine id itself is not published
    creds = root / "etc/gateway/credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    secrets = {}
    for name in ("uplink-password", "mqtt-password"):
        path = creds / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secrets[name] = path.read_text()
        assert len(secrets[name]) == 32 and secrets[name].isalnum()
    assert secrets["uplink-password"] != secrets["mqtt-password"]
    passwd = (root / "etc/mosquitto/gateway.passwd").read_text()
    assert passwd.startswith("gateway:$7$")  # PBKDF2-SHA512 hash, not the password
    assert secrets["mqtt-password"] not in passwd
    # every boot after the first changes nothing
    before = tree(root)
    out = run("sh", REPO / "deploy/firstboot.sh", "--root", root).stdout
    assert tree(root) == before and out == ""
    # another machine, another id and other secrets
    other = _firstboot_root(tmp_path, "0" * 31 + "1", "other")
    run("sh", REPO / "deploy/firstboot.sh", "--root", other)
    assert f"GATEWAY_ID={expected}" not in (other / "etc/gateway/gateway.env").read_text()
    assert (other / "etc/gateway/credentials/mqtt-password").read_text() != secrets[
        "mqtt-password"]


def test_first_boot_refuses_to_guess_an_id_without_a_machine_id(tmp_path: Path) -> None:
    root = _firstboot_root(tmp_path, "uninitialized")
    result = run("sh", REPO / "deploy/firstboot.sh", "--root", root, check=False)
    assert result.returncode == 1
    assert "machine-id" in result.stderr
    assert not (root / "etc/gateway/gateway.env").exists()


def test_installed_config_passes_gateway_check_with_first_boot_identity(tmp_path: Path) -> None:
    root = _firstboot_root(tmp_path, "aa" * 16)
    run("sh", REPO / "deploy/firstboot.sh", "--root", root)
    gateway_id = (root / "etc/gateway/gateway.env").read_text().split("GATEWAY_ID=")[1].strip()
    # what systemd gives the service: EnvironmentFile= and LoadCredential=
    result = run(sys.executable, "-m", "gateway", "check", root / "etc/gateway/gateway.yaml",
                 env={"GATEWAY_ID": gateway_id,
                      "CREDENTIALS_DIRECTORY": str(root / "etc/gateway/credentials")})
    assert f"OK — gateway {gateway_id}," in result.stdout


@pytest.mark.parametrize("name", ["a/b", "+", "#", "dev+1", "gateway", "", "-x", "a b",
                                  "x" * 65])
def test_add_device_refuses_names_that_would_escape_their_topics(tmp_path: Path,
                                                                 name: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install(root)
    passwd = root / "etc/mosquitto/gateway.passwd"
    result = run("sh", REPO / "deploy/add-device.sh", "--root", root, name, check=False)
    assert result.returncode == 2
    assert passwd.read_text() == ""


def test_add_device_prints_a_fresh_password_and_stores_only_its_hash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install(root)
    out = run("sh", REPO / "deploy/add-device.sh", "--root", root, "kitchen-1").stdout
    password = out.split("password ")[1].split()[0]
    assert len(password) == 24 and password.isalnum()
    assert "devices/kitchen-1/#" in out
    passwd = (root / "etc/mosquitto/gateway.passwd").read_text()
    assert passwd.startswith("kitchen-1:$7$") and password not in passwd
    assert stat.S_IMODE((root / "etc/mosquitto/gateway.passwd").stat().st_mode) == 0o640


def test_shell_scripts_parse_and_pi_gen_stage_runs_the_installer() -> None:
    stage = REPO / "deploy/pi-gen/stage-gateway"
    scripts = [REPO / "deploy/install.sh", REPO / "deploy/firstboot.sh",
               REPO / "deploy/add-device.sh", *sorted(stage.rglob("*.sh"))]
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        run("sh" if script.read_text().startswith("#!/bin/sh") else "bash", "-n", script)
    assert "copy_previous" in (stage / "prerun.sh").read_text()
    install_step = (stage / "00-gateway/01-run.sh").read_text()
    assert "on_chroot" in install_step and "install.sh --no-start" in install_step
    assert (stage / "EXPORT_IMAGE").exists()


def test_rotated_mqtt_credential_replaces_the_gateway_account_hash(tmp_path: Path) -> None:
    root = _firstboot_root(tmp_path, "bb" * 16)
    run("sh", REPO / "deploy/firstboot.sh", "--root", root)
    passwd = root / "etc/mosquitto/gateway.passwd"
    credential = root / "etc/gateway/credentials/mqtt-password"
    old_secret, old_hash = credential.read_text(), passwd.read_text()
    credential.unlink()
    out = run("sh", REPO / "deploy/firstboot.sh", "--root", root).stdout
    assert "generated credential mqtt-password" in out
    assert credential.read_text() != old_secret
    lines = passwd.read_text().splitlines()
    assert len([line for line in lines if line.startswith("gateway:")]) == 1
    assert passwd.read_text() != old_hash
