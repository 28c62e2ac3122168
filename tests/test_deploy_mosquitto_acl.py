"""The installer's mosquitto configuration, run for real on loopback.

``deploy/install.sh --root`` writes the broker files, ``gateway-firstboot --root`` adds the
gateway's account, ``gateway-add-device --root`` adds two devices; mosquitto then runs
with exactly those files (only the listener moves to a free loopback port). The client is
a minimal MQTT 5 implementation written here, because the reason codes are the point:
gmqtt 0.8 does not surface PUBACK reason codes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import MOSQUITTO, Mosquitto
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86


# -- a minimal MQTT 5 client ------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


class Mqtt5:
    """Blocking MQTT 5 client: just enough to read CONNACK, PUBACK and SUBACK reason codes."""

    def __init__(self, port: int, client_id: str, username: str | None = None,
                 password: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._buf = b""
        self._packet_id = 0
        self.received: list[tuple[str, bytes]] = []
        flags = 0x02  # clean start
        payload = _utf8(client_id)
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
        variable = _utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", 30) + _varint(0)
        self._send(0x10, variable + payload)
        kind, body = self._read_packet(5.0)
        assert kind == 0x20, f"expected CONNACK, got packet type {kind:#x}"
        self.connack_reason = body[1]

    def _send(self, first: int, body: bytes) -> None:
        self.sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def _next_id(self) -> int:
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

    def _read_packet(self, timeout: float) -> tuple[int, bytes]:
        """One packet (first byte, body); TimeoutError if none within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self._buf) and i <= 4:
                    length |= (self._buf[i] & 0x7F) << shift
                    if not self._buf[i] & 0x80:
                        break
                    shift += 7
                    i += 1
                if i < len(self._buf) and len(self._buf) >= i + 1 + length:
                    first, body = self._buf[0], self._buf[i + 1:i + 1 + length]
                    self._buf = self._buf[i + 1 + length:]
                    return first, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError from None
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self._buf += chunk

    def _await(self, kind: int, timeout: float = 5.0) -> bytes:
        """Wait for a packet of ``kind``, keeping (and acknowledging) publishes on the way."""
        deadline = time.monotonic() + timeout
        while True:
            first, body = self._read_packet(max(0.0, deadline - time.monotonic()))
            if first >> 4 == 3:
                self._keep_publish(first, body)
                continue
            if first >> 4 == kind >> 4:
                return body

    def _keep_publish(self, first: int, body: bytes) -> None:
        (tlen,) = struct.unpack("!H", body[:2])
        topic = body[2:2 + tlen].decode()
        pos = 2 + tlen
        if (first >> 1) & 0x03:
            (pid,) = struct.unpack("!H", body[pos:pos + 2])
            pos += 2
            self._send(0x40, struct.pack("!H", pid))
        plen, shift = 0, 0
        while True:
            byte = body[pos]
            pos += 1
            plen |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        self.received.append((topic, body[pos + plen:]))

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; returns the PUBACK reason code."""
        pid = self._next_id()
        self._send(0x32, _utf8(topic) + struct.pack("!H", pid) + _varint(0) + payload)
        body = self._await(0x40)
        return body[2] if len(body) > 2 else 0x00

    def subscribe(self, topic_filter: str) -> int:
        """QoS 1 subscription; returns the SUBACK reason code."""
        pid = self._next_id()
        self._send(0x82, struct.pack("!H", pid) + _varint(0) + _utf8(topic_filter) + b"\x01")
        body = self._await(0x90)
        plen = body[2]  # property length: one byte is enough for mosquitto's SUBACK
        return body[3 + plen]

    def collect(self, seconds: float) -> list[tuple[str, bytes]]:
        """Publishes received within ``seconds`` (bounded wait)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                first, body = self._read_packet(left)
            except TimeoutError:
                break
            if first >> 4 == 3:
                self._keep_publish(first, body)
        return self.received

    def close(self) -> None:
        try:
            self._send(0xE0, b"\x00" + _varint(0))
        except OSError:
            pass
        self.sock.close()


def closed_after_connack(client: Mqtt5) -> bool:
    """True when the broker hangs up (as it must after a refusing CONNACK)."""
    try:
        client._read_packet(2.0)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return False


# -- the broker, configured by the installer ---------------------------------------------------

@dataclass
class Installed:
    root: Path
    broker: Mosquitto
    passwords: dict[str, str]


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})}, check=False)
    assert result.returncode == 0, f"{cmd} failed: {result.stdout}{result.stderr}"
    return result.stdout


class InstalledMosquitto(Mosquitto):
    """mosquitto with the installer's conf.d/gateway.conf, its files under ``root``."""

    def __init__(self, workdir: Path, root: Path, as_mosquitto_user: bool) -> None:
        super().__init__(workdir)
        self.root = root
        self.as_mosquitto_user = as_mosquitto_user

    def write_config(self) -> None:
        installed = (self.root / "etc/mosquitto/conf.d/gateway.conf").read_text()
        assert "listener 1883\n" in installed
        text = (installed.replace("listener 1883\n", f"listener {self.port} {self.host}\n")
                .replace("/etc/mosquitto/", f"{self.root}/etc/mosquitto/"))
        lines = [text, f"log_dest file {self.log}", "log_type error", "log_type warning",
                 "log_type notice"]
        if os.geteuid() == 0 and not self.as_mosquitto_user:
            lines.append("user root")  # no mosquitto user here: stay root
        self.conf.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if not os.access(MOSQUITTO, os.X_OK) or not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto (Debian package) is not installed: tests/run.sh installs it")
    # world-traversable, so that mosquitto can read its files after dropping root
    base = Path(tempfile.mkdtemp(prefix="gateway-acl-"))
    base.chmod(0o755)
    root = base / "root"
    root.mkdir()
    try:
        (root / "etc").mkdir()
        (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        plan = _run("sh", REPO / "deploy/install.sh", "--root", root)
        _run("sh", REPO / "deploy/firstboot.sh", "--root", root)
        passwords = {"gateway": (root / "etc/gateway/credentials/mqtt-password").read_text()}
        for name, password in (("alice", "alice-secret-1"), ("bob", "bob-secret-2")):
            _run("sh", REPO / "deploy/add-device.sh", "--root", root, name,
                 env={"DEVICE_PASSWORD": password})
            passwords[name] = password
        # run mosquitto as its own user on the installer's files, with the ownership the
        # installer gives them on a real system (its plan says so), where that user exists
        try:
            mosq = pwd.getpwnam("mosquitto")
        except KeyError:
            mosq = None
        as_user = os.geteuid() == 0 and mosq is not None
        if as_user:
            assert mosq is not None
            assert ("would run: chown mosquitto:mosquitto /etc/mosquitto/gateway.acl "
                    "/etc/mosquitto/gateway.passwd") in plan
            for name in ("gateway.acl", "gateway.passwd"):
                os.chown(root / "etc/mosquitto" / name, mosq.pw_uid, mosq.pw_gid)
        workdir = base / "broker"
        workdir.mkdir()
        if as_user:
            assert mosq is not None
            os.chown(workdir, mosq.pw_uid, mosq.pw_gid)
        broker = InstalledMosquitto(workdir, root, as_user).start()
        try:
            yield Installed(root, broker, passwords)
        finally:
            broker.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def connect(inst: Installed, name: str, password: str | None = None) -> Mqtt5:
    client = Mqtt5(inst.broker.port, f"{name}-{time.monotonic_ns()}", name,
                   inst.passwords[name] if password is None else password)
    assert client.connack_reason == 0, f"{name} refused: {client.connack_reason:#x}"
    return client


# -- behaviour ------------------------------------------------------------------------------

def test_broker_reads_the_installer_files_as_the_mosquitto_user(installed: Installed) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can start mosquitto so that it drops to its own user")
    assert installed.broker.proc is not None
    status = Path(f"/proc/{installed.broker.proc.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid == pwd.getpwnam("mosquitto").pw_uid
    assert (installed.root / "etc/mosquitto/gateway.passwd").stat().st_mode & 0o777 == 0o640
    alice = connect(installed, "alice")  # the hashes were readable: the login works
    alice.close()


def test_device_publishes_under_its_own_topics_and_the_gateway_receives_it(
        installed: Installed) -> None:
    gateway = connect(installed, "gateway")
    assert gateway.subscribe("devices/#") == 0x01
    alice = connect(installed, "alice")
    assert alice.publish("devices/alice/telemetry", b'{"temperature": 21.5}') < 0x80
    assert alice.publish("devices/alice", b"online") < 0x80
    got = gateway.collect(1.0)
    assert ("devices/alice/telemetry", b'{"temperature": 21.5}') in got
    assert ("devices/alice", b"online") in got
    alice.close()
    gateway.close()


@pytest.mark.parametrize("topic", ["devices/bob/telemetry", "devices/alice2/telemetry",
                                   "devices/telemetry", "alice/telemetry", "gateway/status"])
def test_device_publish_outside_its_topics_is_refused_with_0x87(
        installed: Installed, topic: str) -> None:
    gateway = connect(installed, "gateway")
    assert gateway.subscribe("#") == 0x01
    alice = connect(installed, "alice")
    assert alice.publish(topic, b"spoofed") == NOT_AUTHORIZED
    # the connection stays usable, and the refused message went nowhere
    assert alice.publish("devices/alice/telemetry", b"ok") < 0x80
    got = gateway.collect(1.0)
    assert ("devices/alice/telemetry", b"ok") in got
    assert all(payload != b"spoofed" for _, payload in got)
    alice.close()
    gateway.close()


@pytest.mark.parametrize("topic_filter", ["devices/bob/#", "devices/#", "#", "devices/+/telemetry"])
def test_subscription_to_another_devices_topics_delivers_nothing(
        installed: Installed, topic_filter: str) -> None:
    alice = connect(installed, "alice")
    alice.subscribe(topic_filter)  # granted or refused (0x87): either way nothing of bob's
    assert alice.subscribe("devices/alice/commands") == 0x01
    bob = connect(installed, "bob")
    assert bob.publish("devices/bob/telemetry", b"bob's reading") < 0x80
    gateway = connect(installed, "gateway")
    assert gateway.publish("devices/alice/commands", b"alice's command") < 0x80
    got = alice.collect(1.0)
    # alice's own subscription works, so the silence about bob's topics means something
    assert ("devices/alice/commands", b"alice's command") in got
    assert all(not topic.startswith("devices/bob/") for topic, _ in got)
    for client in (alice, bob, gateway):
        client.close()


def test_gateway_account_sends_commands_to_any_device(installed: Installed) -> None:
    bob = connect(installed, "bob")
    assert bob.subscribe("devices/bob/commands") == 0x01
    gateway = connect(installed, "gateway")
    assert gateway.publish("devices/bob/commands", b'{"action": "on"}') < 0x80
    assert ("devices/bob/commands", b'{"action": "on"}') in bob.collect(1.0)
    bob.close()
    gateway.close()


def test_anonymous_and_wrong_password_clients_are_refused(installed: Installed) -> None:
    anonymous = Mqtt5(installed.broker.port, "anon")
    assert anonymous.connack_reason in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    assert closed_after_connack(anonymous)
    anonymous.close()
    for name, password in (("alice", "wrong"), ("alice", installed.passwords["bob"]),
                           ("mallory", "anything"), ("gateway", "")):
        client = Mqtt5(installed.broker.port, f"{name}-x", name, password)
        assert client.connack_reason in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD), (name, password)
        assert closed_after_connack(client)
        client.close()


def _chown_like_installer(path: Path) -> None:
    """Give ``path`` to the mosquitto user, as the scripts do on a real system."""
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("mosquitto")
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _reload(inst: Installed) -> None:
    assert inst.broker.proc is not None
    inst.broker.proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` does


def _login(inst: Installed, name: str, password: str, want_ok: bool) -> bool:
    """Retry a login (bounded) until it gives the wanted outcome after a reload."""

    def outcome() -> bool:
        client = Mqtt5(inst.broker.port, f"{name}-{time.monotonic_ns()}", name, password)
        ok = client.connack_reason == 0
        client.close()
        return ok == want_ok

    return wait_until(outcome, 5, f"{name}'s login {'accepted' if want_ok else 'refused'}",
                      step=0.05)


def test_added_device_logs_in_and_deleted_device_no_longer_can(installed: Installed) -> None:
    passwd = installed.root / "etc/mosquitto/gateway.passwd"
    _run("sh", REPO / "deploy/add-device.sh", "--root", installed.root, "carol",
         env={"DEVICE_PASSWORD": "carol-secret-3"})
    _chown_like_installer(passwd)
    _reload(installed)
    assert _login(installed, "carol", "carol-secret-3", want_ok=True)
    _run("sh", REPO / "deploy/add-device.sh", "--root", installed.root, "--delete", "carol")
    _chown_like_installer(passwd)
    _reload(installed)
    assert _login(installed, "carol", "carol-secret-3", want_ok=False)
    connect(installed, "alice").close()  # the others are untouched
