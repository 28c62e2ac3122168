"""Stick detection. No USB stick can be plugged in here, so pyserial's port records are
built by hand (pyserial's own ``ListPortInfo``) with the ids real sticks report; the
``/dev/serial/by-id`` links are real symlinks in a temporary directory."""

from __future__ import annotations

from pathlib import Path

from serial.tools.list_ports_common import ListPortInfo

from gateway.adapters.zigbee.hardware import by_id_links, detect, identify


def _port(device: str, vid: int, pid: int, product: str | None = None,
          description: str = "n/a", serial: str = "1234") -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.product, info.serial_number = vid, pid, product, serial
    info.description = description
    return info


def test_sonoff_zbdongle_e_is_ezsp_with_software_flow_control(tmp_path: Path) -> None:
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_V2_20231120-if00-port0"
    link.symlink_to(tty)

    found = detect([_port(str(tty), 0x1A86, 0x55D4, "Sonoff Zigbee 3.0 USB Dongle Plus V2")],
                   links=by_id_links(by_id))
    assert len(found) == 1
    stick = found[0]
    assert stick.radio_type == "ezsp" and stick.supported
    assert stick.flow_control == "software" and stick.baudrate == 115200
    assert stick.port == str(link)  # the stable path, not ttyUSB0
    assert f"port: {link}" in stick.config_snippet()
    assert stick.usb_id == "1a86:55d4"


def test_shared_usb_bridge_is_told_apart_by_product_string() -> None:
    sky = identify(0x10C4, 0xEA60, "SkyConnect v1.0")
    plus_p = identify(0x10C4, 0xEA60, "Sonoff Zigbee 3.0 USB Dongle Plus")
    unknown = identify(0x10C4, 0xEA60, "CP2102N USB to UART Bridge Controller")
    assert sky is not None and sky.radio_type == "ezsp" and sky.flow_control == "hardware"
    assert plus_p is not None and plus_p.radio_type == "znp"
    assert unknown is not None and "could be ZNP or EZSP" in unknown.note


def test_deconz_sticks_are_supported_and_other_serial_ports_ignored() -> None:
    found = detect([_port("/dev/ttyACM0", 0x1CF1, 0x0030, "ConBee II"),
                    _port("/dev/ttyAMA0", None, None),  # type: ignore[arg-type]
                    _port("/dev/ttyUSB1", 0x0403, 0x6001, "FT232R USB UART"),
                    _port("/dev/ttyUSB2", 0x0403, 0x6015, "FT230X Basic UART")], links={})
    assert [(f.name, f.radio_type, f.supported) for f in found] == [
        ("dresden elektronik ConBee II", "deconz", True)]
    assert found[0].port == "/dev/ttyACM0"
    conbee3 = identify(0x0403, 0x6015, "ConBee III")
    assert conbee3 is not None and conbee3.radio_type == "deconz"


def test_ti_sticks_are_znp_with_no_flow_control() -> None:
    found = detect([_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "Sonoff Zigbee 3.0 USB Dongle Plus"),
                    _port("/dev/ttyUSB1", 0x1A86, 0x55D4, "SLZB-06P7"),
                    _port("/dev/ttyACM0", 0x0451, 0xBEF3, "XDS110 (03.00.00.13) Embed")],
                   links={})
    assert [(f.radio_type, f.flow_control, f.supported) for f in found] == [
        ("znp", "none", True)] * 3
    snippet = found[0].config_snippet()
    assert "radio_type: znp" in snippet and "flow_control: none" in snippet


def test_shared_bridge_ids_say_the_family_is_unknown() -> None:
    for vid, pid in ((0x10C4, 0xEA60), (0x1A86, 0x55D4)):
        stick = identify(vid, pid, "USB Single Serial")
        assert stick is not None and "could be ZNP or EZSP" in stick.note
    efr = identify(0x1A86, 0x55D4, "SLZB-06M")
    e = identify(0x1A86, 0x55D4, "SONOFF Zigbee 3.0 USB Dongle Plus V2")
    assert efr is not None and efr.radio_type == "ezsp"
    assert e is not None and e.radio_type == "ezsp" and e.flow_control == "software"
