"""hardware/99-gateway-zigbee.rules: well-formed, specific, and documented.

Parsed here by a strict reader of udev's rule syntax: the rules cannot be exercised by
udev without the physical sticks (``udevadm test`` needs a real device in sysfs, and
``udevadm verify`` arrived after Debian 12's systemd 252).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "hardware/99-gateway-zigbee.rules"
TABLE = REPO / "hardware/README.md"
# KEY{attr}OP"value" with udev's operators; match keys may only compare, others assign
_PAIR = re.compile(r'\s*([A-Z_]+)(\{[^}]+\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')
GENERIC_BRIDGES = {("10c4", "ea60"), ("1a86", "55d4"), ("0403", "6015")}


def parse(line: str) -> list[tuple[str, str, str]]:
    """(key with attribute, operator, value) for each pair; AssertionError if malformed."""
    pairs, pos = [], 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m, f"malformed udev rule at column {pos}: {line}"
        pairs.append((m.group(1) + (m.group(2) or ""), m.group(3), m.group(4)))
        pos = m.end()
    return pairs


def stick_rules() -> list[dict[str, str]]:
    rules = []
    for line in RULES.read_text().splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("LABEL="):
            continue
        pairs = parse(line)
        if any(k == "GOTO" for k, _, _ in pairs):
            continue
        rule = {k: v for k, _, v in pairs}
        for key, op, _ in pairs:
            base = key.split("{")[0]
            if base in ("ACTION", "SUBSYSTEM", "KERNEL", "ATTRS"):
                assert op in ("==", "!="), f"{key} must be compared: {line}"
            elif base == "SYMLINK":
                assert op == "+=", f"SYMLINK must be added to, not replaced: {line}"
            else:
                assert base == "ENV" and op == "=", f"unexpected {key}{op}: {line}"
        rules.append(rule)
    return rules


def test_rules_parse_and_only_touch_tty_devices() -> None:
    text = RULES.read_text()
    assert 'SUBSYSTEM!="tty", GOTO="gateway_zigbee_end"' in text
    assert text.rstrip().endswith('LABEL="gateway_zigbee_end"')
    assert len(stick_rules()) >= 6


def test_every_stick_gets_zigbee_and_a_radio_specific_name() -> None:
    for rule in stick_rules():
        radio = rule["ENV{GATEWAY_ZIGBEE_RADIO}"]
        assert radio in ("ezsp", "znp", "deconz")
        assert rule["SYMLINK"] == f"zigbee zigbee-{radio}"
        assert rule["ENV{ID_MM_DEVICE_IGNORE}"] == "1"  # ModemManager must not probe it


def test_generic_usb_serial_ids_are_matched_only_with_a_product_or_vendor_string() -> None:
    for rule in stick_rules():
        ids = (rule["ATTRS{idVendor}"], rule["ATTRS{idProduct}"])
        if ids in GENERIC_BRIDGES:
            assert "ATTRS{product}" in rule or "ATTRS{manufacturer}" in rule, rule


def test_zbdongle_p_and_zbdongle_e_on_the_same_bridge_are_told_apart() -> None:
    products = {r.get("ATTRS{product}"): r["ENV{GATEWAY_ZIGBEE_RADIO}"] for r in stick_rules()
                if (r["ATTRS{idVendor}"], r["ATTRS{idProduct}"]) == ("10c4", "ea60")}
    # udev globs: the V2 (EFR32, EZSP) pattern must not catch the P (CC2652, ZNP) product
    assert products["Sonoff Zigbee 3.0 USB Dongle Plus"] == "znp"
    v2 = next(p for p in products if p and p.endswith("V2"))
    assert products[v2] == "ezsp"
    assert not re.fullmatch(v2.replace("*", ".*"), "Sonoff Zigbee 3.0 USB Dongle Plus")
    assert re.fullmatch(v2.replace("*", ".*"), "SONOFF Zigbee 3.0 USB Dongle Plus V2")


def test_supported_hardware_table_lists_every_usb_id_in_the_rules() -> None:
    table = TABLE.read_text()
    for rule in stick_rules():
        usb_id = f"`{rule['ATTRS{idVendor}']}:{rule['ATTRS{idProduct}']}`"
        assert usb_id in table, usb_id
