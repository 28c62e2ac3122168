"""The LoRaWAN example in configs/gateway.yaml is valid and passes `gateway check`."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config.model import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def lorawan_example() -> str:
    """The commented ``- type: lorawan`` block of the annotated example, uncommented."""
    lines = (ROOT / "configs" / "gateway.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line == "  # - type: lorawan")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # ") or (block and not line.startswith("  #   ")):
            break
        block.append("  " + line[4:])
    return "\n".join(block) + "\n"


def test_example_block_passes_gateway_check(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "chirpstack-api-token").write_text("example-token\n")
    text = "gateway:\n  state_dir: " + str(tmp_path) + "\nuplink:\n  enabled: false\n" \
        "adapters:\n" + lorawan_example()
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(text)
    cfg = load_config(config_file, env={"CREDENTIALS_DIRECTORY": str(creds)})
    (lora,) = cfg.adapters
    assert lora.type == "lorawan" and lora.name == "lora"
    assert lora.api_token.get_secret_value() == "example-token"  # type: ignore[attr-defined]
    # every option the README documents is present in the example
    keys = set(yaml.safe_load(lorawan_example())[0])
    assert {"server", "api_token", "tenant_id", "source", "mqtt", "profiles",
            "default_profile", "downlink_wait", "stream"} <= keys


def test_bad_lorawan_section_names_file_line_and_key(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        "uplink:\n  enabled: false\nadapters:\n  - type: lorawan\n    api_token: t\n"
        "    tenant_id: x\n    profiles:\n      P:\n        decoder: cayene\n")
    try:
        load_config(config_file, env={})
    except ConfigError as exc:
        problems = "\n".join(exc.problems)
    else:
        raise AssertionError("a misspelled decoder was accepted")
    assert re.search(r"gateway\.yaml:9: adapters\[0\]\.profiles\.P\.decoder", problems), problems


def test_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    from gateway.adapters.lorawan.config import LorawanConfig
    from gateway.config.secrets import resolve_references

    readme = (ROOT / "gateway" / "adapters" / "lorawan" / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "chirpstack-api-token").write_text("t")
    (section,) = resolve_references(yaml.safe_load(block),
                                    {"CREDENTIALS_DIRECTORY": str(tmp_path)})["adapters"]
    cfg = LorawanConfig.model_validate(section)
    assert set(cfg.profiles) == {"Dragino LHT65", "Cayenne sensors", "Water meter"}
