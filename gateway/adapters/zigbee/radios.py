"""Radio types: which zigpy ``ControllerApplication`` drives which kind of stick.

The one place that maps the ``radio_type`` users write to a radio library. ``ezsp``
(bellows, Silicon Labs sticks), ``znp`` (zigpy-znp, Texas Instruments Z-Stack sticks) and
``deconz`` (zigpy-deconz, dresden elektronik ConBee/RaspBee) ship with the gateway; radio
libraries that advertise themselves in zigpy's ``zigpy.radio`` entry-point group are found
too, and
``module:Class`` names any other ``ControllerApplication`` subclass.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

#: radio type → "module:attribute" of its ControllerApplication
BUILTIN: dict[str, str] = {
    "ezsp": "bellows.zigbee.application:ControllerApplication",
    "znp": "zigpy_znp.zigbee.application:ControllerApplication",
    "deconz": "zigpy_deconz.zigbee.application:ControllerApplication",
}

#: what each built-in radio type is for (shown by ``gateway hardware``)
DESCRIPTIONS: dict[str, str] = {
    "ezsp": "Silicon Labs EmberZNet (EZSP) sticks: Sonoff ZBDongle-E, SkyConnect/ZBT-1...",
    "znp": "Texas Instruments Z-Stack 3.x (ZNP) sticks: Sonoff ZBDongle-P, SLZB-06, CC2652...",
    "deconz": "dresden elektronik deCONZ sticks: ConBee II/III, RaspBee II",
}

#: serial flow control each radio type's sticks use when the config does not say:
#: Z-Stack and deCONZ frames are binary with no XON/XOFF escaping, so software flow
#: control would eat their 0x11/0x13 bytes
DEFAULT_FLOW_CONTROL: dict[str, str] = {"ezsp": "software", "znp": "none", "deconz": "none"}

ENTRY_POINT_GROUP = "zigpy.radio"


class UnknownRadioType(LookupError):
    """No radio library is installed for a radio type."""


def known_radio_types() -> list[str]:
    """Built-in radio types (the default first) and those advertised by radio libraries."""
    advertised = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTIN))
    return [*BUILTIN, *advertised]


def _target(radio_type: str) -> str:
    if radio_type in BUILTIN:
        return BUILTIN[radio_type]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == radio_type:
            return str(ep.value)
    if ":" in radio_type:
        return radio_type
    raise UnknownRadioType(
        f"unknown radio type {radio_type!r} (known: {', '.join(known_radio_types())}; "
        "or module:Class of a zigpy ControllerApplication)")


def controller_class(radio_type: str) -> type[Any]:
    """The zigpy ``ControllerApplication`` subclass for ``radio_type``."""
    import zigpy.application

    module_name, _, attr = _target(radio_type).partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownRadioType(f"radio type {radio_type!r}: cannot load {module_name}:{attr}"
                               f" ({exc})") from None
    if not (isinstance(cls, type)
            and issubclass(cls, zigpy.application.ControllerApplication)):
        raise UnknownRadioType(f"radio type {radio_type!r}: {module_name}:{attr} is not a zigpy"
                               " ControllerApplication")
    return cls
