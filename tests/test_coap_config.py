"""The ``type: coap`` section: validated at load, errors name file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.model import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_has_a_valid_coap_section(tmp_path: Path) -> None:
    (tmp_path / "uplink-password").write_text("x")
    cfg = load_config(ROOT / "configs" / "gateway.yaml",
                      env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    (coap,) = [a for a in cfg.adapters if a.type == "coap"]
    assert coap.port == 5683  # type: ignore[attr-defined]
    assert coap.devices[0].block_size == 256  # type: ignore[attr-defined]


def test_bad_coap_keys_are_named_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {state_dir: /tmp/x}\n"
        "uplink: {enabled: false}\n"
        "adapters:\n"
        "  - type: coap\n"
        "    block_size: 100\n"
        "    devices:\n"
        "      - id: n1\n"
        "        address: http://x\n"
        "        resources:\n"
        "          - path: /s\n"
        "            quiet_aftr: 5s\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = "\n".join(err.value.problems)
    assert f"{path}:5: adapters[0].block_size: expected a CoAP block size" in text
    assert f"{path}:8: adapters[0].devices[0].address: expected a base URI" in text
    assert f"{path}:11: adapters[0].devices[0].resources[0].quiet_aftr: unknown key" in text
