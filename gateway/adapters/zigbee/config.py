"""The ``type: zigbee`` config section."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.adapters.base import AdapterConfig
from gateway.adapters.zigbee.radios import BUILTIN, DEFAULT_FLOW_CONTROL, ENTRY_POINT_GROUP
from gateway.config.types import Duration


def _hex_bytes(value: str, size: int, what: str) -> str:
    digits = value.replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9A-Fa-f]*", digits) or len(digits) != 2 * size:
        raise ValueError(f"expected {what} as {size} hex bytes, e.g. "
                         + ":".join(["00"] * size))
    return ":".join(digits[i:i + 2].lower() for i in range(0, len(digits), 2))


class ZigbeeConfig(AdapterConfig):
    """A Zigbee coordinator stick driven by zigpy."""

    radio_type: str = Field(default="ezsp",
                            description="ezsp (bellows), znp (zigpy-znp), deconz (zigpy-deconz)"
                            " or module:Class")
    port: str = Field(description="serial path (/dev/serial/by-id/...) or socket://host:port")
    baudrate: int = Field(default=115200, gt=0, le=4_000_000)
    #: default: the radio type's (software for ezsp, none for znp and deconz)
    flow_control: Literal["software", "hardware", "none"] = "software"
    channel: int | None = Field(default=None, ge=11, le=26,
                                description="None: pick the quietest of `channels`")
    channels: list[int] = Field(default_factory=lambda: [11, 15, 20, 25])
    pan_id: int | None = Field(default=None, ge=0x0001, le=0xFFFE)
    extended_pan_id: str | None = None
    network_key: str | None = Field(default=None, description="16 hex bytes; None: random")
    tx_power: int | None = Field(default=None, ge=-10, le=20)
    #: a command without an answer within this long is reported as timed out
    command_timeout: Duration = Field(default=10.0, gt=0, le=600)
    #: reporting max interval asked of mains-powered and of battery devices
    report_max_interval_mains: Duration = Field(default=240.0, gt=0, le=65000)
    report_max_interval_battery: Duration = Field(default=3600.0, gt=0, le=65000)
    #: the coordinator backup is exported this often (and on demand)
    backup_interval: Duration = Field(default=21600.0, gt=0, le=30 * 86400)
    backups_kept: int = Field(default=7, ge=1, le=1000)
    #: least spacing of binding/reporting retries for a device that did not answer
    configure_retry: Duration = Field(default=60.0, gt=0, le=86400)
    #: readings the pipeline refuses are retried this long before being dropped (counted)
    retry_for: Duration = Field(default=30.0, ge=0, le=86400)
    #: LQI/RSSI go to the device registry at most this often per device
    link_update_interval: Duration = Field(default=300.0, gt=0, le=86400)
    #: emit each device's LQI and RSSI as readings (``linkquality``, ``rssi``)
    link_readings: bool = True
    #: at most one LQI/RSSI pair per device this often; an unchanged pair waits ten times
    #: as long
    link_interval: Duration = Field(default=60.0, gt=0, le=86400)
    #: a network map scan (every router's neighbour and routing table) stops after this long
    map_scan_timeout: Duration = Field(default=120.0, gt=0, le=3600)
    #: readings waiting for the pipeline, at most (beyond: dropped, counted)
    max_pending: int = Field(default=10000, ge=1, le=1_000_000)

    @field_validator("radio_type")
    @classmethod
    def _known_radio(cls, v: str) -> str:
        if v in BUILTIN or ":" in v:
            return v
        from importlib.metadata import entry_points

        if any(ep.name == v for ep in entry_points(group=ENTRY_POINT_GROUP)):
            return v
        raise ValueError(f"unknown radio type (expected one of {', '.join(sorted(BUILTIN))},"
                         " a zigpy radio library's name, or module:Class)")

    @model_validator(mode="after")
    def _radio_flow_control(self) -> ZigbeeConfig:
        if "flow_control" not in self.model_fields_set:
            default = DEFAULT_FLOW_CONTROL.get(self.radio_type, "software")
            object.__setattr__(self, "flow_control", default)
        return self

    @field_validator("channels")
    @classmethod
    def _valid_channels(cls, v: list[int]) -> list[int]:
        if not v or any(c < 11 or c > 26 for c in v):
            raise ValueError("expected a non-empty list of channels between 11 and 26")
        return v

    @field_validator("extended_pan_id")
    @classmethod
    def _valid_epid(cls, v: str | None) -> str | None:
        return None if v is None else _hex_bytes(v, 8, "the extended PAN id")

    @field_validator("network_key")
    @classmethod
    def _valid_key(cls, v: str | None) -> str | None:
        return None if v is None else _hex_bytes(v, 16, "the network key")

    def zigpy_config(self, database: str) -> dict[str, object]:
        """The config dict zigpy's ``ControllerApplication`` takes."""
        network: dict[str, object] = {"channels": list(self.channels)}
        if self.channel is not None:
            network["channel"] = self.channel
        if self.pan_id is not None:
            network["pan_id"] = self.pan_id
        if self.extended_pan_id is not None:
            network["extended_pan_id"] = self.extended_pan_id
        if self.network_key is not None:
            network["key"] = [int(b, 16) for b in self.network_key.split(":")]
        if self.tx_power is not None:
            network["tx_power"] = self.tx_power
        return {
            "device": {
                "path": self.port,
                "baudrate": self.baudrate,
                "flow_control": None if self.flow_control == "none" else self.flow_control,
            },
            "database_path": database,
            "network": network,
            # the gateway exports its own backups (backup.py); zigpy's go to its database
            "backup_enabled": True,
            # appliances run offline: no OTA index downloads from the internet
            "ota": {"enabled": False},
            "topology_scan_enabled": False,
        }
