"""Zigbee stick detection: USB vendor/product ids (and product names) → radio type and settings.

pyserial lists the serial ports; each known stick gets a suggested ``radio_type``,
``baudrate`` and ``flow_control``, and the stable ``/dev/serial/by-id/...`` path when
udev made one (``/dev/ttyUSB0`` changes with plug order; the by-id link does not).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.zigbee.radios import known_radio_types


@dataclass(frozen=True)
class Stick:
    """A known USB Zigbee stick model."""

    name: str
    vid: int
    pid: int
    radio_type: str
    baudrate: int
    flow_control: str
    #: substring of the USB product/description string that singles the model out
    product: str | None = None
    note: str = ""


#: more specific entries (with ``product``) first: several sticks share a USB bridge chip
STICKS: tuple[Stick, ...] = (
    Stick("Home Assistant SkyConnect / Connect ZBT-1", 0x10C4, 0xEA60, "ezsp", 115200,
          "hardware", product="SkyConnect"),
    Stick("Home Assistant Connect ZBT-1", 0x10C4, 0xEA60, "ezsp", 115200, "hardware",
          product="ZBT-1"),
    Stick("SMLIGHT SLZB-07", 0x10C4, 0xEA60, "ezsp", 115200, "hardware", product="SLZB-07"),
    Stick("Sonoff ZBDongle-E (EFR32MG21)", 0x10C4, 0xEA60, "ezsp", 115200, "software",
          product="Dongle Plus V2", note="supports software flow control only"),
    Stick("Sonoff ZBDongle-P (CC2652P)", 0x10C4, 0xEA60, "znp", 115200, "none",
          product="Sonoff Zigbee 3.0 USB Dongle Plus",
          note="Texas Instruments Z-Stack firmware"),
    Stick("Sonoff ZBDongle-E (EFR32MG21)", 0x1A86, 0x55D4, "ezsp", 115200, "software",
          product="Dongle Plus V2", note="supports software flow control only"),
    Stick("SMLIGHT SLZB-06M/-07 (EFR32MG21, USB)", 0x1A86, 0x55D4, "ezsp", 115200,
          "none", product="SLZB-06M"),
    Stick("SMLIGHT SLZB-06/-06P7 (CC2652P, USB)", 0x1A86, 0x55D4, "znp", 115200, "none",
          product="SLZB-06", note="Texas Instruments Z-Stack firmware"),
    Stick("Nortek HUSBZB-1 (Zigbee part)", 0x10C4, 0x8A2A, "ezsp", 57600, "software",
          note="two ports: the Zigbee radio is usually the second one (interface 01)"),
    Stick("dresden elektronik ConBee II", 0x1CF1, 0x0030, "deconz", 38400, "none"),
    Stick("dresden elektronik ConBee III", 0x0403, 0x6015, "deconz", 115200, "none",
          product="ConBee III"),
    Stick("Texas Instruments LAUNCHXL-CC26X2R1/CC1352P (XDS110)", 0x0451, 0xBEF3, "znp",
          115200, "none", note="two ports: the Z-Stack one is the first (interface 00)"),
    Stick("Texas Instruments CC2531", 0x0451, 0x16A8, "znp", 115200, "none",
          note="Z-Stack Home 1.2 / 3.0 firmware: works, but a CC2531 is slow and small;"
               " a CC2652 stick is the better choice"),
    Stick("Silicon Labs CP210x bridge (unknown stick)", 0x10C4, 0xEA60, "ezsp", 115200,
          "software", note="could be ZNP or EZSP: this USB id is shared by TI (znp) and"
                           " Silicon Labs (ezsp) sticks; check the stick's label"),
    Stick("WCH CH9102/CH343 bridge (unknown stick)", 0x1A86, 0x55D4, "znp", 115200, "none",
          note="could be ZNP or EZSP: this USB id is shared by TI (znp) and Silicon Labs"
               " (ezsp) sticks; check the stick's label"),
)


@dataclass(frozen=True)
class Found:
    """A plugged-in port that looks like a Zigbee stick."""

    port: str
    device: str
    name: str
    radio_type: str
    baudrate: int
    flow_control: str
    supported: bool
    note: str
    usb_id: str
    product: str | None
    serial_number: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    def config_snippet(self) -> str:
        """The ``adapters:`` entry to paste into gateway.yaml."""
        return "\n".join([
            "  - type: zigbee",
            f"    radio_type: {self.radio_type}",
            f"    port: {self.port}",
            f"    baudrate: {self.baudrate}",
            f"    flow_control: {self.flow_control}",
        ])


def by_id_links(directory: Path = Path("/dev/serial/by-id")) -> dict[str, str]:
    """Real device path → its stable ``/dev/serial/by-id`` link."""
    links: dict[str, str] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return links
    for link in entries:
        try:
            links[os.path.realpath(link)] = str(link)
        except OSError:
            continue
    return links


def stable_path(port: str) -> str | None:
    """The ``/dev/serial/by-id`` link of ``port``, when udev made one."""
    return by_id_links().get(os.path.realpath(port))


def identify(vid: int | None, pid: int | None, product: str | None) -> Stick | None:
    """The known stick with this USB id (and product string, where ids are shared)."""
    if vid is None or pid is None:
        return None
    text = (product or "").lower()
    for stick in STICKS:
        if (stick.vid, stick.pid) != (vid, pid):
            continue
        if stick.product is None or stick.product.lower() in text:
            return stick
    return None


def detect(ports: Iterable[Any] | None = None,
           links: dict[str, str] | None = None) -> list[Found]:
    """Zigbee sticks among ``ports`` (pyserial ``ListPortInfo``; default: the system's)."""
    if ports is None:
        from serial.tools import list_ports

        ports = list_ports.comports()
    links = by_id_links() if links is None else links
    found = []
    radios = set(known_radio_types())
    for info in ports:
        product = " ".join(str(x) for x in (info.product, info.description) if x)
        stick = identify(info.vid, info.pid, product)
        if stick is None:
            continue
        device = str(info.device)
        found.append(Found(
            port=links.get(os.path.realpath(device), links.get(device, device)),
            device=device, name=stick.name, radio_type=stick.radio_type,
            baudrate=stick.baudrate, flow_control=stick.flow_control,
            supported=stick.radio_type in radios, note=stick.note,
            usb_id=f"{info.vid:04x}:{info.pid:04x}", product=info.product or info.description,
            serial_number=info.serial_number))
    return found
