"""The ``type: zigbee`` section: validated at load, errors name file, line and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.adapters.zigbee.config import ZigbeeConfig
from gateway.adapters.zigbee.radios import UnknownRadioType, controller_class
from gateway.config.model import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def _load(tmp_path: Path, section: str) -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text("uplink:\n  enabled: false\nadapters:\n  - type: zigbee\n" + section)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def test_bad_zigbee_options_are_reported_with_file_line_and_key(tmp_path: Path) -> None:
    problems = _load(tmp_path, "    port: /dev/ttyUSB0\n    flow_control: rts\n"
                               "    channel: 27\n    baudrat: 115200\n")
    text = "\n".join(problems)
    assert f"{tmp_path}/gateway.yaml:6: adapters[0].flow_control" in text
    assert f"{tmp_path}/gateway.yaml:7: adapters[0].channel" in text
    assert f"{tmp_path}/gateway.yaml:8: adapters[0].baudrat: unknown key" in text


def test_missing_port_and_unknown_radio_type_are_errors(tmp_path: Path) -> None:
    text = "\n".join(_load(tmp_path, "    radio_type: zstack\n"))
    assert "adapters[0].port: required value is missing" in text
    assert "adapters[0].radio_type: unknown radio type" in text


def test_network_key_must_be_16_bytes(tmp_path: Path) -> None:
    text = "\n".join(_load(tmp_path, "    port: /dev/ttyUSB0\n    network_key: 01:02:03\n"))
    assert "adapters[0].network_key: expected the network key as 16 hex bytes" in text


def test_zigpy_config_carries_serial_and_network_settings() -> None:
    cfg = ZigbeeConfig(type="zigbee", port="socket://127.0.0.1:9999", flow_control="none",
                       channel=20, pan_id=0x1A62, network_key="00" * 16)
    z = cfg.zigpy_config("/tmp/zigbee.db")
    assert z["device"] == {"path": "socket://127.0.0.1:9999", "baudrate": 115200,
                           "flow_control": None}
    assert z["network"]["channel"] == 20 and z["network"]["pan_id"] == 0x1A62  # type: ignore
    assert z["network"]["key"] == [0] * 16  # type: ignore[index]
    assert z["ota"] == {"enabled": False}  # an appliance never fetches OTA indexes itself
    # zigpy accepts it as is
    from bellows.zigbee.application import ControllerApplication

    ControllerApplication.SCHEMA(z)


def test_radio_type_ezsp_is_bellows_and_unknown_names_explain_themselves() -> None:
    assert controller_class("ezsp").__module__ == "bellows.zigbee.application"
    with pytest.raises(UnknownRadioType, match="known: ezsp"):
        controller_class("zstack")
    with pytest.raises(UnknownRadioType, match="not a zigpy ControllerApplication"):
        controller_class("gateway.adapters.zigbee.adapter:ZigbeeAdapter")


def test_example_config_has_a_valid_zigbee_section(tmp_path: Path) -> None:
    (tmp_path / "uplink-password").write_text("x")
    cfg = load_config(ROOT / "configs" / "gateway.yaml",
                      env={**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    zigbee = [a for a in cfg.adapters if a.type == "zigbee"]
    assert len(zigbee) == 1 and isinstance(zigbee[0], ZigbeeConfig)
    assert zigbee[0].port.startswith("/dev/serial/by-id/")
