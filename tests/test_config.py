"""Config loading and `gateway check`: good files pass, bad ones name file, line and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.model import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=60)


def problems(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env or {})
    return err.value.problems


def test_the_demo_config_checks_clean() -> None:
    result = check(REPO / "configs" / "demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_the_annotated_example_checks_clean_with_its_credentials(tmp_path: Path) -> None:
    (tmp_path / "uplink-password").write_text("s3cret\n")
    (tmp_path / "chirpstack-api-token").write_text("token\n")
    result = check(REPO / "configs" / "gateway.yaml", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_an_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    found = problems("gateway:\n  id: a\nuplink:\n  hots: example.com\n", tmp_path)
    assert found == [f"{tmp_path}/gw.yaml:4: uplink.hots: unknown key (check the spelling; "
                     "see configs/gateway.yaml for every option)"]


def test_a_wrong_type_says_what_was_expected_and_what_it_got(tmp_path: Path) -> None:
    (line,) = problems("uplink:\n  port: eighty\n", tmp_path)
    assert line.startswith(f"{tmp_path}/gw.yaml:2: uplink.port: ")
    assert "valid integer" in line and "'eighty'" in line


def test_a_bad_duration_and_size_are_explained(tmp_path: Path) -> None:
    found = problems("store:\n  max_age: soon\n  max_bytes: lots\n", tmp_path)
    assert any(":2: store.max_age: expected a duration" in p for p in found)
    assert any(":3: store.max_bytes: expected a size" in p for p in found)


def test_an_adapter_section_is_checked_by_its_own_model(tmp_path: Path) -> None:
    found = problems("adapters:\n  - type: simulator\n    devices: -3\n  - type: nosuch\n",
                     tmp_path)
    assert any(":3: adapters[0].devices: " in p and "expected an integer from 1 to 100000" in p
               for p in found)
    assert any(":4: adapters[1].type: unknown adapter type 'nosuch'" in p for p in found)


def test_a_missing_adapter_type_is_a_missing_required_value(tmp_path: Path) -> None:
    (line,) = problems("adapters:\n  - name: x\n", tmp_path)
    assert ":2: adapters[0].type: required value is missing" in line


def test_two_adapters_with_one_name_are_refused(tmp_path: Path) -> None:
    (line,) = problems("adapters:\n  - type: simulator\n  - type: simulator\n", tmp_path)
    assert "adapters[1].name: adapter name 'simulator' already used" in line


def test_unreadable_yaml_names_the_line(tmp_path: Path) -> None:
    (line,) = problems("gateway:\n  id: [unclosed\nstore: {}\n", tmp_path)
    assert line.startswith(f"{tmp_path}/gw.yaml:3:") and "invalid YAML" in line


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = check(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr


def test_check_exits_non_zero_and_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway:\n  id: 'bad id!'\nuplink:\n  port: 0\n  extra: 1\n")
    result = check(path)
    assert result.returncode == 2
    assert f"{path}:2: gateway.id: expected 1-64 letters" in result.stderr
    assert f"{path}:4: uplink.port:" in result.stderr
    assert f"{path}:5: uplink.extra: unknown key" in result.stderr
    assert "3 problem(s)" in result.stderr


def test_environment_references_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("uplink:\n  host: ${CLOUD_HOST}\n  username: ${USER_NAME:-gw}\n")
    cfg = load_config(path, env={"CLOUD_HOST": "broker.example"})
    assert cfg.uplink.host == "broker.example" and cfg.uplink.username == "gw"


def test_an_unset_environment_variable_names_the_key(tmp_path: Path) -> None:
    (line,) = problems("uplink:\n  host: ${CLOUD_HOST}\n", tmp_path)
    assert line == f"{tmp_path}/gw.yaml:2: uplink.host: environment variable CLOUD_HOST is not set"


def test_secrets_come_from_files_and_credentials_and_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "uplink-password").write_text("from-systemd")
    path = tmp_path / "gw.yaml"
    path.write_text(f"uplink:\n  password: ${{file:{secret}}}\n")
    cfg = load_config(path, env={})
    assert cfg.uplink.password is not None
    assert cfg.uplink.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.uplink)
    path.write_text("uplink:\n  password: ${credential:uplink-password}\n")
    cfg = load_config(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.uplink.password is not None
    assert cfg.uplink.password.get_secret_value() == "from-systemd"


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    (line,) = problems("uplink:\n  password: ${file:/nonexistent/pw}\n", tmp_path)
    assert ":2: uplink.password: cannot read secret file /nonexistent/pw" in line


def test_tls_client_cert_without_key_is_refused(tmp_path: Path) -> None:
    (line,) = problems("uplink:\n  tls:\n    cert_file: /c.pem\n", tmp_path)
    assert ":3: uplink.tls: cert_file and key_file go together" in line


def test_defaults_fill_every_section(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("{}\n")
    cfg = load_config(path, env={})
    assert cfg.store.synchronous == "full" and cfg.uplink.qos == 1
    assert cfg.outbox_path == Path("/var/lib/gateway/outbox.db")
