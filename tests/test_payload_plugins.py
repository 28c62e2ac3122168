"""Payload formats are plugins: a third party adds one by installing a package.

The plugin here is a real distribution on disk (a module and its ``.dist-info`` with an
``entry_points.txt``), put on the path of a fresh interpreter, as ``pip install`` would
leave it: nothing in the gateway is told about it. The built-in formats register the
same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.adapters.mqtt.config import SubscriptionConfig
from gateway.payloads import Format, available, format_class

PLUGIN = '''
from gateway.payloads import DecodeError, Format, Source
from gateway.payloads.values import Units, load_json


class AcmeFormat(Format):
    name = "acme"

    def __init__(self, options=None):
        super().__init__(options)
        self._units = Units()

    def decode(self, payload, source, now):
        doc = load_json(payload)
        if not isinstance(doc, dict) or "t" not in doc:
            raise DecodeError("bad_shape", 'expected {"t": <tenths of a degree F>}')
        r = self._units.reading(source.device, "temperature", doc["t"] / 10, "°F", now)
        if r is None:
            raise DecodeError("bad_value", "t must be a finite number")
        return [r]
'''

CHECK = '''
import json, sys
from gateway.adapters.mqtt.config import SubscriptionConfig
from gateway.payloads import Source, available, format_class
sub = SubscriptionConfig.model_validate({"topic": "acme/{device}", "format": "acme"})
fmt = format_class("acme")(sub)
(r,) = fmt.decode(b'{"t": 770}', Source("mqtt", "oven-1", "acme/oven-1"), 1.8e9)
print(json.dumps({"available": available(), "reading": list(r)}))
'''


def _install(site: Path) -> None:
    (site / "acme_gateway.py").write_text(PLUGIN)
    info = site / "acme_gateway-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-gateway\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gateway.decoders]\nacme = acme_gateway:AcmeFormat\n")
    (info / "RECORD").write_text("")


def _run(site: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_an_installed_format_is_found_and_decodes(tmp_path: Path) -> None:
    _install(tmp_path)
    done = _run(tmp_path, CHECK)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "acme" in out["available"] and "json" in out["available"]
    device, metric, value, unit, ts = out["reading"]
    assert (device, metric, unit, ts) == ("mqtt:oven-1", "temperature", "Cel", 1.8e9)
    assert value == pytest.approx(25.0)  # 77.0 °F through the shared unit table


def test_gateway_check_takes_a_plugin_format_and_refuses_an_unknown_one(
        tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    config = tmp_path / "g.yaml"
    config.write_text("gateway:\n  state_dir: " + str(tmp_path / "state") + "\n"
                      "uplink:\n  enabled: false\n"
                      "adapters:\n  - type: mqtt\n    subscriptions:\n"
                      "      - topic: acme/{device}\n        format: acme\n"
                      "      - topic: other/{device}\n        format: acne\n")
    done = _run(site, "", "-m", "gateway", "check", str(config))
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "subscriptions[1].format" in text and "unknown payload format 'acne'" in text
    assert "acme" in text.split("installed:")[1]  # the plugin is listed as installed
    assert "subscriptions[0]" not in text


def test_the_built_in_formats_register_as_entry_points_too() -> None:
    built_in = {"json", "cbor", "value", "senml", "senml+cbor", "zigbee2mqtt", "tasmota",
                "shelly", "shelly_rpc", "esphome", "cayenne_lpp", "chirpstack"}
    assert built_in <= set(available())
    for name in built_in:
        cls = format_class(name)
        assert issubclass(cls, Format) and cls.name == name


def test_a_format_refuses_a_topic_it_cannot_work_with_at_config_load() -> None:
    with pytest.raises(ValidationError, match="needs {device}"):
        SubscriptionConfig.model_validate({"topic": "z2m/all", "format": "zigbee2mqtt"})
