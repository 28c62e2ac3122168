"""The uplink over TLS to a real mosquitto: CA file, client certificates, hostname checks,
password authentication, and secrets that never reach the log."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.brokers import Mosquitto, free_port
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess

SECRET = "correct-horse-battery-staple"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path, server_names: list[str]) -> dict[str, Path]:
    """A throw-away CA, a server certificate for ``server_names`` and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(d / "ca", ca_key, ca)

    def leaf(name: str, sans: list[x509.GeneralName], usage: Any) -> None:
        key = _key()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(d / name, key, cert)

    sans: list[x509.GeneralName] = []
    for n in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    leaf("server", sans, ExtendedKeyUsageOID.SERVER_AUTH)
    leaf("client", [x509.DNSName("gw-test")], ExtendedKeyUsageOID.CLIENT_AUTH)
    return {"ca": d / "ca.pem", "server_cert": d / "server.pem", "server_key": d / "server.key",
            "client_cert": d / "client.pem", "client_key": d / "client.key"}


def tls_broker(factory: Callable[..., Mosquitto], tmp: Path, pki: dict[str, Path],
               require_cert: bool) -> tuple[Mosquitto, int]:
    """A broker with a plain loopback listener (for the test's subscriber) and a TLS one."""
    tls_port = free_port()
    passwd = tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw-test", SECRET],
                   check=True, capture_output=True)
    extra = "\n".join([
        f"listener {tls_port} 127.0.0.1",
        f"cafile {pki['ca']}", f"certfile {pki['server_cert']}", f"keyfile {pki['server_key']}",
        f"require_certificate {'true' if require_cert else 'false'}",
        "allow_anonymous false", f"password_file {passwd}",
    ])
    # per-listener settings: the plain listener stays anonymous for the test's subscriber
    broker = factory(name="tls", extra=extra, prelude="per_listener_settings true")
    return broker, tls_port


def tls_config(state: Path, port: int, pki: dict[str, Path], host: str = "127.0.0.1",
               client_cert: bool = True, verify_hostname: bool = True) -> dict[str, Any]:
    secret_file = state.parent / "uplink-password"
    secret_file.write_text(SECRET + "\n")
    tls: dict[str, Any] = {"ca_file": str(pki["ca"]), "verify_hostname": verify_hostname}
    if client_cert:
        tls |= {"cert_file": str(pki["client_cert"]), "key_file": str(pki["client_key"])}
    return {
        "gateway": {"id": "gw-test", "state_dir": str(state), "log_level": "debug"},
        "store": {"commit_interval": "10ms"},
        "uplink": {"host": host, "port": port, "username": "gw-test",
                   "password": f"${{file:{secret_file}}}", "tls": tls,
                   "backoff_initial": 0.2, "backoff_max": 1.0},
        "api": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 2, "interval": 0.05,
                      "metrics": ["seq"], "count": 10}],
    }


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d, ["127.0.0.1", "localhost"])


def test_readings_arrive_over_tls_with_a_client_certificate_and_password(
        tmp_path: Path, pki: dict[str, Path], mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    broker, tls_port = tls_broker(mosquitto_factory, tmp_path, pki, require_cert=True)
    sink = cloud_sink_factory(broker.port)
    gw = gateway_factory(tls_config(tmp_path / "state", tls_port, pki)).start()
    sink.wait_for(lambda: len(sink.readings()) >= 20, timeout=20)
    gw.stop()
    # debug logging on, and still: the password never appears
    assert SECRET not in gw.log_text()
    assert "uplink connected" in gw.log_text()


def test_a_certificate_for_another_host_is_refused_unless_hostname_checks_are_off(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    pki = make_pki(d, ["broker.example.com"])  # not the address the gateway dials
    broker, tls_port = tls_broker(mosquitto_factory, tmp_path, pki, require_cert=False)
    sink = cloud_sink_factory(broker.port)
    gw = gateway_factory(tls_config(tmp_path / "state", tls_port, pki, client_cert=False),
                         name="strict").start()
    gw.wait_for_log("certificate verify failed", timeout=20)
    assert sink.readings() == []
    gw.stop()
    gw2 = gateway_factory(tls_config(tmp_path / "state", tls_port, pki, client_cert=False,
                                     verify_hostname=False), name="lenient").start()
    # the chain is still checked against the CA; only the name check is off
    sink.wait_for(lambda: len(sink.readings()) >= 20, timeout=20)
    gw2.stop()


def test_a_wrong_password_is_reported_and_retried_without_showing_it(
        tmp_path: Path, pki: dict[str, Path], mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    broker, tls_port = tls_broker(mosquitto_factory, tmp_path, pki, require_cert=False)
    cfg = tls_config(tmp_path / "state", tls_port, pki, client_cert=False)
    (tmp_path / "uplink-password").write_text("wrong-" + SECRET)
    cfg["uplink"]["password"] = f"${{file:{tmp_path / 'uplink-password'}}}"
    gw = gateway_factory(cfg).start()
    gw.wait_for_log("reconnecting in", timeout=20)
    gw.stop()
    assert SECRET not in gw.log_text()
    assert "uplink connected" not in gw.log_text()
