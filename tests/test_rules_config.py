"""``rules:`` and ``filters:`` sections: validation names file, line, key, rule and position."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.model import ConfigError, load_config

HEAD = """\
gateway:
  id: gw-test
  state_dir: {state}
uplink:
  enabled: false
api:
  enabled: false
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEAD.format(state=tmp_path / "state") + body)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def test_a_valid_rules_and_filters_section_loads_typed(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: freezer_warm
    device: "mqtt:freezer-*"
    when: temperature > -10
    for: 10m
    clear: temperature < -15
    cooldown: 30m
    actions:
      - alert: {severity: critical, message: "{device.name} at {value} {unit}"}
      - command: {device: "zigbee:plug-1", action: off}
filters:
  - metric: humidity
    deadband: 2%
    min_interval: 30s
  - metric: power
    aggregate: {window: 5m}
""")
    cfg = load_config(path)
    rule = cfg.rules[0]
    assert rule.for_ == 600.0 and rule.cooldown == 1800.0 and rule.device == ["mqtt:freezer-*"]
    cmd = rule.actions[1].command
    assert cmd is not None and cmd.action == "off"  # YAML's bare off is not a boolean here
    assert cfg.filters[0].deadband_value == (2.0, True)
    assert cfg.filters[1].aggregate is not None
    assert cfg.filters[1].aggregate.functions == ["avg", "min", "max"]


def test_a_syntax_error_names_file_line_rule_and_position(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: ok_rule
    when: temperature > 3
    actions: [{alert: {message: hi}}]
  - name: broken_rule
    when: temperature > (3 and humidity < 2
    actions: [{alert: {message: hi}}]
""")
    (line,) = problems(path)
    when_line = HEAD.count("\n") + 6
    assert line.startswith(f"{path}:{when_line}: rules[1].when: "), line
    assert "rule 'broken_rule'" in line
    assert "expected ')'" in line and "position 34" in line


def test_an_unknown_function_is_an_error_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: r
    when: median(temperature, 5m) > 3
    actions: [{alert: {message: hi}}]
""")
    (line,) = problems(path)
    assert "rules[0].when" in line and "unknown function median()" in line
    assert "position 1" in line


def test_a_bad_template_names_the_action_key(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: r
    when: temperature > 3
    actions:
      - alert:
          message: "too warm: {value"
""")
    (line,) = problems(path)
    assert f"{path}:{HEAD.count(chr(10)) + 6}: rules[0].actions[0].alert.message" in line
    assert "without a matching '}'" in line


def test_duplicate_rule_names_and_bad_actions_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: same
    when: temperature > 3
    actions: [{alert: {message: a}}]
  - name: same
    when: temperature > 4
    actions: [{alert: {message: b}, set: {metric: x, value: "1"}}]
""")
    out = problems(path)
    assert any("rules[1].actions[0]" in p and "exactly one of" in p for p in out), out


def test_duplicate_rule_names_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """\
rules:
  - name: same
    when: temperature > 3
    actions: [{alert: {message: a}}]
  - name: same
    when: temperature > 4
    actions: [{alert: {message: b}}]
""")
    (line,) = problems(path)
    assert "rules[1].name" in line and "already used by rules[0]" in line


@pytest.mark.parametrize("body,fragment", [
    ("  - metric: x\n    drop: true\n    deadband: 1\n", "drop: true sends nothing"),
    ("  - metric: x\n    deadband: 1\n    aggregate: {window: 1m}\n", "aggregate replaces"),
    ("  - metric: x\n    deadband: lots\n", "percentage"),
    ("  - metric: x\n    aggregate: {window: 1m, functions: [median]}\n", "functions[0]"),
    ("  - metric: x\n    sample: 0\n", "sample"),
    ("  - metric: x\n    dedup: true\n", "unknown key"),
])
def test_bad_filters_are_rejected(tmp_path: Path, body: str, fragment: str) -> None:
    (line,) = problems(write(tmp_path, "filters:\n" + body))
    assert fragment in line and f"{tmp_path / 'gateway.yaml'}:" in line


def test_the_annotated_example_config_passes_check(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "uplink-password").write_text("x")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "gateway", "check",
                          str(root / "configs" / "gateway.yaml")],
                         env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cfg = load_config(root / "configs" / "gateway.yaml",
                      env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.rules and cfg.filters  # the example documents both
    assert f"{len(cfg.rules)} rule(s), {len(cfg.filters)} filter(s)" in out.stdout


def test_the_examples_in_the_rules_readme_are_valid() -> None:
    import re

    import yaml

    from gateway.rules.config import FilterSpec, RuleSpec

    text = (Path(__file__).resolve().parent.parent / "gateway" / "rules" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    checked = 0
    for block in blocks:
        data = yaml.safe_load(block)
        rules = data.get("rules", []) if isinstance(data, dict) else data
        filters = data.get("filters", []) if isinstance(data, dict) else []
        for r in rules:
            RuleSpec.model_validate(r)
            checked += 1
        for f in filters:
            FilterSpec.model_validate(f)
            checked += 1
    assert checked >= 8
