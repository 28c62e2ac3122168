"""The local mosquitto's queue for the gateway's session, read as mosquitto reads it.

``gateway check`` warns when ``max_queued_messages`` / ``max_queued_bytes`` hold less
than an mqtt adapter's ``outage`` at its ``expected_rate`` (README, "Local MQTT
devices"). The reader is checked against a real mosquitto: the number of messages it
queues for an offline persistent client is the number the reader finds in its config.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.mqtt.broker_limits import (
    DEFAULT_BROKER_CONFIG,
    QueueNeed,
    is_local,
    parse_broker_config,
    queue_advice,
    read_broker_config,
)
from gateway.adapters.mqtt.config import MqttConfig
from tests.brokers import Mosquitto

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "deploy" / "mosquitto" / "gateway.conf"
needs_clients = pytest.mark.skipif(not shutil.which("mosquitto_sub"),
                                   reason="needs mosquitto-clients")


def broker_dir(tmp_path: Path, main: str, included: dict[str, str]) -> Path:
    """A main mosquitto.conf (``{conf_d}`` stands for its include dir) and conf.d files."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    for name, text in included.items():
        (conf_d / name).write_text(text)
    path = tmp_path / "mosquitto.conf"
    path.write_text(main.replace("{conf_d}", str(conf_d)))
    return path


def debian_like(tmp_path: Path, included: dict[str, str]) -> Path:
    """Debian's /etc/mosquitto/mosquitto.conf: persistence on, then conf.d."""
    return broker_dir(tmp_path, "# Place your local configuration in conf.d\n\n"
                      "persistence true\npersistence_location /var/lib/mosquitto/\n\n"
                      "include_dir {conf_d}\n", included)


def gateway_check(tmp_path: Path, **mqtt: Any) -> subprocess.CompletedProcess[str]:
    """``gateway check`` on a config file with one mqtt adapter, as a separate process."""
    config = {
        "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
        "uplink": {"enabled": False},
        "adapters": [{"type": "mqtt", "name": "mqtt",
                      "subscriptions": [{"topic": "devices/{device}/telemetry"}], **mqtt}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def mqtt_config(**fields: Any) -> MqttConfig:
    return MqttConfig.model_validate({"type": "mqtt", "name": "mqtt",
                                      "subscriptions": [{"topic": "a/{device}"}], **fields})


# -- reading the broker's config ---------------------------------------------------------


def test_include_dir_files_load_in_mosquittos_order_and_the_last_value_wins(
        tmp_path: Path) -> None:
    path = broker_dir(tmp_path, "max_queued_messages 5\ninclude_dir {conf_d}\n"
                      "max_queued_bytes 4096\n", {
                          "b.conf": "max_queued_messages 40\n",
                          "a.conf": "max_queued_messages 10\nmax_queued_bytes 1\n",
                          "B.conf": "max_queued_messages 30\n",
                          "00.conf": "max_queued_messages 1\npersistence true\n",
                          "z.conf.dpkg-old": "max_queued_messages 99\n",  # not *.conf
                          ".conf": "max_queued_messages 98\n",  # too short a name
                          "README": "max_queued_messages 97\n"})
    cfg = read_broker_config(path)
    conf_d = tmp_path / "conf.d"
    # 00, a, B, b: case-insensitive letter by letter, upper case first
    assert cfg.files == (str(path), *(f"{conf_d}/{n}" for n in
                                      ("00.conf", "a.conf", "B.conf", "b.conf")))
    assert cfg.max_queued_messages.value == 40
    assert (cfg.max_queued_messages.file, cfg.max_queued_messages.line) == (
        f"{conf_d}/b.conf", 1)
    # the main file's line after include_dir comes after the included files
    assert cfg.max_queued_bytes.value == 4096
    assert (cfg.max_queued_bytes.file, cfg.max_queued_bytes.line) == (str(path), 3)
    assert cfg.persistence.value is True
    assert cfg.include_dirs == (str(conf_d),) and cfg.problems == () and cfg.readable


def test_include_dir_counts_only_in_the_main_file(tmp_path: Path) -> None:
    other = tmp_path / "other.d"
    other.mkdir()
    (other / "x.conf").write_text("max_queued_messages 7\n")
    path = broker_dir(tmp_path, "include_dir {conf_d}\n",
                      {"a.conf": f"include_dir {other}\nmax_queued_messages 3\n"})
    cfg = read_broker_config(path)
    assert cfg.max_queued_messages.value == 3
    assert str(other / "x.conf") not in cfg.files


def test_mosquittos_defaults_when_nothing_is_set() -> None:
    cfg = parse_broker_config("# only comments\n\n   \nlistener 1883\n")
    assert cfg.max_queued_messages.value == 1000 and cfg.max_queued_messages.file is None
    assert cfg.max_queued_bytes.value == 0 and cfg.max_queued_bytes.file is None
    assert cfg.persistence.value is False and cfg.persistence.file is None


def test_comments_and_words_are_what_mosquitto_takes_them_for() -> None:
    cfg = parse_broker_config(
        "#max_queued_messages 1\r\n"           # a comment: '#' is the first character
        "max_queued_messages 2 # trailing\r\n"  # words are split at spaces
        "max_queued_messages\t3\n"              # a tab is no separator: another key
        "   max_queued_bytes   32MiB\n"         # leading spaces are fine; atoi reads 32
        "retained_persistence 1\n", "f.conf")
    assert cfg.max_queued_messages.value == 2 and cfg.max_queued_messages.line == 2
    assert cfg.max_queued_bytes.value == 32 and cfg.max_queued_bytes.written == "32MiB"
    assert cfg.persistence.value is True


def test_zero_and_negative_values_mean_no_limit() -> None:
    cfg = parse_broker_config("max_queued_messages 0\nmax_queued_bytes -5\n")
    assert cfg.max_queued_messages.value == 0 and cfg.max_queued_bytes.value == 0
    need = QueueNeed(rate=10_000, outage=86400)
    assert need.holds(cfg) == float("inf")


def test_lines_mosquitto_refuses_are_reported_not_raised(tmp_path: Path) -> None:
    cfg = read_broker_config(broker_dir(tmp_path, "persistence yes\nmax_queued_bytes\n"
                                        f"include_dir {tmp_path}/missing\n", {}))
    assert len(cfg.problems) == 3 and cfg.readable
    assert "persistence takes true or false, not 'yes'" in cfg.problems[0]
    assert "max_queued_bytes without a value" in cfg.problems[1]
    assert "cannot be opened" in cfg.problems[2]


def test_a_missing_main_file_is_unreadable_with_a_reason(tmp_path: Path) -> None:
    cfg = read_broker_config(tmp_path / "nope.conf")
    assert not cfg.readable and "No such file" in cfg.problems[0]
    assert cfg.max_queued_messages.value == 1000


def test_need_is_rate_times_outage_messages_of_the_typical_payload() -> None:
    need = QueueNeed(rate=50, outage=600)
    assert (need.messages, need.bytes) == (30_000, 30_000 * 300)
    cfg = parse_broker_config("max_queued_messages 1000\nmax_queued_bytes 3000000\n")
    assert need.holds(cfg) == 20.0  # the message limit binds first


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True),
                                         ("::1", True), ("0.0.0.0", True),
                                         ("mqtt.example.com", False), ("10.0.0.5", False)])
def test_a_local_broker_is_one_on_this_machine(host: str, local: bool) -> None:
    assert is_local(host) is local


# -- what gateway check says ---------------------------------------------------------------


def test_the_shipped_broker_config_holds_the_default_outage(tmp_path: Path) -> None:
    path = debian_like(tmp_path, {"gateway.conf": SHIPPED.read_text()})
    result = gateway_check(tmp_path, broker_config=str(path))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout + result.stderr
    assert "note" not in result.stderr
    assert ": OK — gateway gw-test" in result.stdout


def test_mosquittos_default_queue_is_a_warning_from_gateway_check(tmp_path: Path) -> None:
    path = debian_like(tmp_path, {})
    result = gateway_check(tmp_path, broker_config=str(path))
    assert result.returncode == 0, result.stderr  # a warning: the gateway would start
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: adapter 'mqtt': mosquitto's max_queued_messages is 1000 "
                           f"(mosquitto's default, not set in {path} or its include_dir files)")
    assert "at 50 messages/s (expected_rate) that holds an outage of 20s" in line
    assert "outage: 10m needs 30000" in line
    assert f"Add 'max_queued_messages 30000' (or more; 0 is no limit) to a .conf file in " \
           f"{tmp_path / 'conf.d'}" in line
    assert "systemctl restart mosquitto" in line
    assert result.stdout.rstrip().endswith("; 1 warning(s)")


def test_a_byte_limit_too_small_names_its_file_and_line(tmp_path: Path) -> None:
    path = debian_like(tmp_path, {"local.conf": "max_queued_messages 0\n"
                                                "max_queued_bytes 1048576\n"})
    result = gateway_check(tmp_path, broker_config=str(path), expected_rate=100,
                           outage="1h", expected_payload="1KiB")
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"max_queued_bytes is 1048576 ({tmp_path / 'conf.d' / 'local.conf'}:2)" in line
    assert "at 100 messages/s of 1024 B (expected_rate) that holds an outage of 10s" in line
    assert "outage: 1h needs 368640000" in line
    assert f"Set max_queued_bytes 368640000 (or more; 0 is no limit) in " \
           f"{tmp_path / 'conf.d' / 'local.conf'}" in line


def test_both_limits_short_are_two_warnings_with_their_combined_hold(tmp_path: Path) -> None:
    path = debian_like(tmp_path, {"q.conf": "max_queued_messages 6000\n"
                                            "max_queued_bytes 300000\n"})
    result = gateway_check(tmp_path, broker_config=str(path))
    lines = result.stderr.splitlines()
    assert [ln.split(" is ")[0] for ln in lines] == [
        "warning: adapter 'mqtt': mosquitto's max_queued_messages",
        "warning: adapter 'mqtt': mosquitto's max_queued_bytes"]
    # 6000 messages hold 2m at 50/s, but 300000 B of 300 B messages hold 20s
    assert "holds an outage of 2m (20s with both limits)" in lines[0]
    assert "; 2 warning(s)" in result.stdout


def test_persistence_off_is_a_note(tmp_path: Path) -> None:
    path = broker_dir(tmp_path, "max_queued_messages 100000\n", {})
    result = gateway_check(tmp_path, broker_config=str(path))
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith("note: adapter 'mqtt': mosquitto keeps its queue in memory only")
    assert f"add 'persistence true' to {path}" in line
    assert "warning(s)" not in result.stdout


def test_an_unreadable_broker_config_is_a_note_not_an_error(tmp_path: Path) -> None:
    result = gateway_check(tmp_path, broker_config=str(tmp_path / "absent.conf"))
    assert result.returncode == 0
    (line,) = result.stderr.splitlines()
    assert line.startswith("note: adapter 'mqtt': the local broker's queue limits are not "
                           f"checked: cannot read {tmp_path / 'absent.conf'}")
    assert ": OK — " in result.stdout


def test_a_session_expiring_before_the_outage_ends_is_a_warning(tmp_path: Path) -> None:
    path = debian_like(tmp_path, {"gateway.conf": SHIPPED.read_text()})
    advice = queue_advice(mqtt_config(broker_config=str(path), session_expiry="5m"))
    assert [(a.level, a.text.split(";")[0]) for a in advice] == [
        ("warning", "adapter 'mqtt': session_expiry 5m lets the broker discard the gateway's "
                    "session, and what it queued, 5m after the gateway went away")]
    (zero,) = queue_advice(mqtt_config(broker_config=str(path), session_expiry=0))
    assert "queues nothing" in zero.text


def test_a_remote_broker_or_a_disabled_adapter_is_not_checked(tmp_path: Path) -> None:
    assert queue_advice(mqtt_config(host="mqtt.example.com")) == []
    assert queue_advice(mqtt_config(enabled=False)) == []
    assert queue_advice(mqtt_config(broker_config=None)) == []
    # naming the file checks even a broker that is not on loopback
    named = queue_advice(mqtt_config(host="10.0.0.5",
                                     broker_config=str(debian_like(tmp_path, {}))))
    assert [a.level for a in named] == ["warning"]


def test_the_new_fields_have_their_documented_defaults() -> None:
    cfg = mqtt_config()
    assert (cfg.expected_rate, cfg.outage, cfg.expected_payload, cfg.broker_config) == (
        50.0, 600.0, 300, DEFAULT_BROKER_CONFIG)


@pytest.mark.parametrize("field, value", [("expected_rate", 0), ("outage", 0),
                                          ("expected_payload", 0), ("broker_config", "")])
def test_out_of_range_fields_are_config_errors(tmp_path: Path, field: str,
                                               value: object) -> None:
    result = gateway_check(tmp_path, **{field: value})
    assert result.returncode == 2 and f"adapters[0].{field}:" in result.stderr


# -- the installer ------------------------------------------------------------------------


def test_the_installer_plans_the_check_in_root_mode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = subprocess.run(["sh", str(REPO / "deploy/install.sh"), "--root", str(root)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "would run: /opt/gateway/venv/bin/gateway check /etc/gateway/gateway.yaml" in out
    assert out.index("gateway check") < out.index("done")


def test_the_installers_check_prints_the_warning_in_the_services_environment(
        tmp_path: Path) -> None:
    # install.sh's own check_config function, run alone against a stand-in install: the
    # real one runs as root on the Pi, after first boot
    etc, venv = tmp_path / "etc", tmp_path / "venv"
    (etc / "credentials").mkdir(parents=True)
    (venv / "bin").mkdir(parents=True)
    (etc / "credentials" / "uplink-password").write_text("secret\n")
    (etc / "gateway.env").write_text("# first boot\nGATEWAY_ID=gw-0123456789ab\n")
    config = yaml.safe_load((REPO / "configs/gateway.yaml").read_text())
    mqtt = next(a for a in config["adapters"] if a["type"] == "mqtt")
    mqtt["broker_config"] = str(debian_like(tmp_path / "mosquitto", {}))
    config["gateway"]["state_dir"] = str(tmp_path / "state")
    (etc / "gateway.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    (venv / "bin" / "gateway").write_text(f"#!/bin/sh\nexec {sys.executable} -m gateway \"$@\"\n")
    (venv / "bin" / "gateway").chmod(0o755)
    script = (REPO / "deploy/install.sh").read_text()
    function = script[script.index("check_config() {"):]
    function = function[:function.index("\n}\n") + 3]
    prelude = (f"set -eu\nsay() {{ printf '%s\\n' \"$*\"; }}\nROOT=\nVENV={venv}\nETC={etc}\n"
               "SHARE=/opt/gateway/share\n")
    result = subprocess.run(["sh", "-c", prelude + function + "check_config\necho finished\n"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "CREDENTIALS_DIRECTORY": "", "GATEWAY_ID": ""})
    assert result.returncode == 0, result.stderr
    assert "OK — gateway gw-0123456789ab" in result.stdout
    assert "warning: adapter 'mqtt': mosquitto's max_queued_messages is 1000" in result.stderr
    assert result.stdout.rstrip().endswith("finished")
    # a config with problems is said, and the install goes on
    (etc / "credentials" / "uplink-password").unlink()
    result = subprocess.run(["sh", "-c", prelude + function + "check_config\necho finished\n"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("finished")
    assert "install.sh: warning:" in result.stderr and "uplink.password" in result.stderr


# -- against the real broker ---------------------------------------------------------------


def queued_for_an_offline_client(broker: Mosquitto, client_id: str, sent: int = 20) -> int:
    """Messages mosquitto keeps for a persistent subscriber that is away while ``sent`` arrive."""
    sub = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv311",
           "-c", "-i", client_id, "-q", "1", "-t", "probe/t"]
    subprocess.run([*sub, "-E"], check=True, timeout=10)  # subscribe, leave the session
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", "probe/t", "-l"], input=b"".join(b"%d\n" % i for i in range(sent)),
                   check=True, timeout=10)
    got = subprocess.run([*sub, "-W", "2"], capture_output=True, timeout=10, check=False)
    assert got.stdout.split() == [b"%d" % i for i in range(len(got.stdout.split()))]
    return len(got.stdout.split())


@needs_clients
def test_mosquitto_queues_exactly_what_the_reader_finds(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    conf_d = tmp_path / "broker.d"
    conf_d.mkdir()
    # mosquitto's order is a, B (a plain sort would load B first and end at 7)
    (conf_d / "B.conf").write_text("max_queued_messages 3\n")
    (conf_d / "a.conf").write_text("max_queued_messages 7\n")
    (conf_d / "c.conf.off").write_text("max_queued_messages 50\n")
    broker = mosquitto_factory(extra=f"include_dir {conf_d}\n")
    expected = read_broker_config(broker.conf).max_queued_messages
    assert (expected.value, expected.file) == (3, f"{conf_d}/B.conf")
    assert queued_for_an_offline_client(broker, "probe-1") == 3


@needs_clients
def test_a_raised_limit_takes_effect_at_a_restart_not_a_reload(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    # why the warning says "systemctl restart mosquitto"
    conf_d = tmp_path / "broker.d"
    conf_d.mkdir()
    (conf_d / "q.conf").write_text("max_queued_messages 3\n")
    broker = mosquitto_factory(extra=f"include_dir {conf_d}\n")
    (conf_d / "q.conf").write_text("max_queued_messages 5\n")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert queued_for_an_offline_client(broker, "probe-reload") == 3
    broker.stop()
    broker.start()
    assert queued_for_an_offline_client(broker, "probe-restart") == 5


# -- hostile input ---------------------------------------------------------------------------

KEYS = ["max_queued_messages", "max_queued_bytes", "persistence", "retained_persistence",
        "include_dir", "#", "listener", ""]


#: a line of garbage, or a known key followed by garbage (random text alone almost never
#: spells a key, and would leave every setting at its default)
garbage_line = st.one_of(
    st.text(max_size=80),
    st.tuples(st.sampled_from(KEYS), st.sampled_from([" ", "\t", ""]),
              st.one_of(st.integers(-2**70, 2**70).map(str), st.text(max_size=30)))
    .map("".join))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.lists(garbage_line, max_size=40).map("\n".join)))
def test_the_parser_never_raises_on_arbitrary_text(data: bytes | str) -> None:
    cfg = parse_broker_config(data)
    for setting, default in ((cfg.max_queued_messages, 1000), (cfg.max_queued_bytes, 0)):
        # what mosquitto makes of any word: a C int, negatives read as 0
        assert type(setting.value) is int and 0 <= setting.value <= 2**31 - 1, setting
        if setting.file is None:  # not set by the text: mosquitto's default
            assert setting.value == default, setting
    assert type(cfg.persistence.value) is bool


line = st.tuples(st.sampled_from(KEYS), st.sampled_from([" ", "  ", "\t", ""]),
                 st.one_of(st.integers(-2**70, 2**70).map(str),
                           st.sampled_from(["true", "0", "DIR", "DIR/", "", "1e5", "32MiB"]),
                           st.text(max_size=20)))


@settings(max_examples=200, deadline=None)
@given(st.lists(line, max_size=30), st.lists(st.lists(line, max_size=10), max_size=4))
def test_the_reader_never_raises_on_files_it_includes(
        main: list[tuple[str, str, str]], included: list[list[tuple[str, str, str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conf_d = Path(tmp) / "d"
        conf_d.mkdir()

        def text(lines: list[tuple[str, str, str]]) -> bytes:
            out = "\n".join(f"{k}{sep}{v.replace('DIR', str(conf_d))}" for k, sep, v in lines)
            return out.encode("utf-8", "surrogateescape")

        for i, lines in enumerate(included):
            (conf_d / f"{i}.conf").write_bytes(text(lines))
        (Path(tmp) / "main.conf").write_bytes(text(main))
        cfg = read_broker_config(Path(tmp) / "main.conf")
        assert cfg.readable
        assert 0 <= cfg.max_queued_messages.value <= 2**31 - 1
        assert 0 <= cfg.max_queued_bytes.value <= 2**31 - 1
        # a config whose lines are all simple settings: the last one wins
        simple = [v for k, sep, v in main if k == "max_queued_messages" and sep == " "
                  and v.lstrip("-").isdigit() and -2**31 <= int(v) < 2**31]
        if simple and all(k != "include_dir" for k, _, _ in main) and len(simple) == len(main):
            assert cfg.max_queued_messages.value == max(0, int(simple[-1]))
