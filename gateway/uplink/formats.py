"""Cloud payload formats: the gateway's own JSON batch, SenML, ThingsBoard's gateway API.

A format turns outbox rows into MQTT messages ``(topic, payload)``. One batch of rows
becomes one message where the format allows it, so one PUBACK settles the batch.
The JSON batch format is documented in README.md ("Cloud payload format"); SenML is
RFC 8428 (https://www.rfc-editor.org/rfc/rfc8428); ThingsBoard's is its gateway MQTT API
(https://thingsboard.io/docs/reference/gateway-mqtt-api/).

Formats are looked up by the ``uplink.format:`` users write, through the
``gateway.uplink_formats`` entry points; the built-in ones register the same way. A
third-party format is a class taking ``(gateway_id, topic_prefix)`` whose instances
satisfy :class:`Format`, registered in its own package's metadata::

    [project.entry-points."gateway.uplink_formats"]
    acme = "acme_gateway.cloud:AcmeFormat"
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gateway.plugins import PluginGroup
from gateway.reading import Reading, Value

if TYPE_CHECKING:
    from gateway.store.outbox import EventRow, TelemetryRow

GROUP = "gateway.uplink_formats"
#: what a format's instances must have besides ``name`` (see :class:`Format`)
_METHODS = ("telemetry", "events", "status", "command_topics", "result_topic")

Message = tuple[str, bytes]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _json_value(v: Value) -> Value | None:
    # JSON has no NaN or infinity: a non-finite float is sent as null
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Format(Protocol):
    """Turns outbox rows into cloud messages."""

    name: str

    def telemetry(self, rows: Sequence[TelemetryRow], epoch: str) -> list[Message]: ...

    def events(self, rows: Sequence[EventRow], epoch: str) -> list[Message]: ...

    def status(self, online: bool) -> Message: ...

    def command_topics(self) -> list[str]: ...

    def result_topic(self) -> str: ...


class JsonBatchFormat:
    """The gateway's own compact batch (version 1).

    Readings are grouped per device; readings of a device taken at the same time share
    one slot of the timestamp column ``_t`` (milliseconds after ``t0``), and each metric
    is a column aligned with it (``null`` where a metric has no value in that slot).
    """

    name = "json"

    def __init__(self, gateway_id: str, prefix: str) -> None:
        self.gateway_id = gateway_id
        base = f"{prefix}/{gateway_id}" if prefix else gateway_id
        self.t_telemetry = f"{base}/telemetry"
        self.t_events = f"{base}/events"
        self.t_status = f"{base}/status"
        self.t_commands = f"{base}/commands"
        self.t_results = f"{base}/commands/result"

    def telemetry(self, rows: Sequence[TelemetryRow], epoch: str) -> list[Message]:
        if not rows:
            return []
        t0 = min(round(r.readings[0].ts * 1000) for r in rows if r.readings)
        units: dict[str, str | None] = {}
        devices: dict[str, dict[str, Any]] = {}
        inf = math.inf
        # hot path (one pass per reading): readings of one device at one time, which
        # arrive together, open one slot of the device's time column
        for row in rows:
            dev: dict[str, Any] = {}
            times: list[int] = []
            cur_dev = None
            cur_ts = -1.0
            slot = 0
            for device, metric, value, unit, ts in row.readings:
                if device != cur_dev or ts != cur_ts:
                    cur_dev, cur_ts = device, ts
                    dev = devices.get(device)  # type: ignore[assignment]
                    if dev is None:
                        dev = devices[device] = {"_t": []}
                    times = dev["_t"]
                    slot = len(times)
                    times.append(round(ts * 1000) - t0)
                column = dev.get(metric)
                if column is None:
                    column = dev[metric] = [None] * slot
                else:
                    filled = len(column)
                    if filled > slot:  # same metric twice at one time: a slot of its own
                        slot = len(times)
                        times.append(times[-1])
                        filled = len(column)
                    if filled < slot:
                        column.extend([None] * (slot - filled))
                if value.__class__ is float and (value != value or value in (inf, -inf)):
                    column.append(None)  # JSON has no NaN or infinity
                else:
                    column.append(value)
                known = units.get(metric, units)
                if known is units:
                    units[metric] = unit
                elif known != unit:
                    dev.setdefault("_u", {})[metric] = unit
        for dev in devices.values():
            n = len(dev["_t"])
            for key, column in dev.items():
                if key[0] != "_" and len(column) < n:
                    column.extend([None] * (n - len(column)))
        body = {
            "v": 1, "gw": self.gateway_id, "epoch": epoch,
            "seq": [rows[0].id, rows[-1].id], "n": sum(len(r.readings) for r in rows),
            "t0": t0, "units": units, "devices": devices,
        }
        return [(self.t_telemetry, _dumps(body).encode())]

    def events(self, rows: Sequence[EventRow], epoch: str) -> list[Message]:
        if not rows:
            return []
        body = {
            "v": 1, "gw": self.gateway_id, "epoch": epoch, "seq": [rows[0].id, rows[-1].id],
            "events": [{"seq": e.id, "kind": e.kind, "ts": round(e.ts, 3), **e.body}
                       for e in rows],
        }
        return [(self.t_events, _dumps(body).encode())]

    def status(self, online: bool) -> Message:
        return (self.t_status, _dumps({"v": 1, "gw": self.gateway_id, "online": online,
                                       "ts": round(time.time(), 3)}).encode())

    def command_topics(self) -> list[str]:
        return [self.t_commands]

    def result_topic(self) -> str:
        return self.t_results


class SenmlFormat(JsonBatchFormat):
    """RFC 8428 SenML JSON: one pack per batch, a base name per device."""

    name = "senml"

    def __init__(self, gateway_id: str, prefix: str) -> None:
        super().__init__(gateway_id, prefix)
        self.t_telemetry = f"{prefix}/{gateway_id}/senml" if prefix else f"{gateway_id}/senml"

    @staticmethod
    def record(r: Reading, first_of_device: bool) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        if first_of_device:
            rec["bn"] = r.device + ":"
        rec["n"] = r.metric
        if r.unit:
            rec["u"] = r.unit
        v = r.value
        if isinstance(v, bool):
            rec["vb"] = v
        elif isinstance(v, str):
            rec["vs"] = v
        else:
            jv = _json_value(v)
            if jv is None:
                rec["vs"] = str(v)
            else:
                rec["v"] = jv
        rec["t"] = round(r.ts, 3)
        return rec

    def telemetry(self, rows: Sequence[TelemetryRow], epoch: str) -> list[Message]:
        pack: list[dict[str, Any]] = []
        last_device = None
        for row in rows:
            for r in row.readings:
                pack.append(self.record(r, r.device != last_device))
                last_device = r.device
        return [(self.t_telemetry, _dumps(pack).encode())] if pack else []


class ThingsBoardFormat:
    """ThingsBoard's gateway MQTT API (``v1/gateway/...``); device names are gateway ids."""

    name = "thingsboard"

    def __init__(self, gateway_id: str, prefix: str) -> None:
        self.gateway_id = gateway_id

    def telemetry(self, rows: Sequence[TelemetryRow], epoch: str) -> list[Message]:
        out: dict[str, list[dict[str, Any]]] = {}
        last: dict[str, dict[str, Any]] = {}
        for row in rows:
            for r in row.readings:
                ts = round(r.ts * 1000)
                entry = last.get(r.device)
                if entry is None or entry["ts"] != ts or r.metric in entry["values"]:
                    entry = {"ts": ts, "values": {}}
                    out.setdefault(r.device, []).append(entry)
                    last[r.device] = entry
                entry["values"][r.metric] = _json_value(r.value)
        return [("v1/gateway/telemetry", _dumps(out).encode())] if out else []

    def events(self, rows: Sequence[EventRow], epoch: str) -> list[Message]:
        msgs: list[Message] = []
        telemetry: dict[str, list[dict[str, Any]]] = {}
        for e in rows:
            device = e.body.get("device") or self.gateway_id
            if e.kind == "status":
                topic = "v1/gateway/connect" if e.body.get("online") else "v1/gateway/disconnect"
                msgs.append((topic, _dumps({"device": device}).encode()))
            else:
                values = {f"{e.kind}_{e.body.get('rule', 'event')}": e.body.get("message", ""),
                          f"{e.kind}_severity": e.body.get("severity", "")}
                telemetry.setdefault(device, []).append({"ts": round(e.ts * 1000),
                                                         "values": values})
        if telemetry:
            msgs.append(("v1/gateway/telemetry", _dumps(telemetry).encode()))
        return msgs

    def status(self, online: bool) -> Message:
        # ThingsBoard shows the gateway's own activity; a retained attribute carries state
        return ("v1/devices/me/attributes", _dumps({"online": online}).encode())

    def command_topics(self) -> list[str]:
        return ["v1/gateway/rpc"]

    def result_topic(self) -> str:
        return "v1/gateway/rpc"


FormatFactory = Callable[[str, str], Format]


class UnknownUplinkFormat(LookupError):
    """An ``uplink.format`` no installed package provides, or one that does not load."""


def _wrong(obj: object) -> str | None:
    missing = [m for m in _METHODS if not callable(getattr(obj, m, None))]
    if isinstance(obj, type) and not missing:
        return None
    return "an uplink format" + (f" (no {', '.join(missing)})" if missing else "")


PLUGINS: PluginGroup[FormatFactory] = PluginGroup(GROUP, "uplink format",
                                                  UnknownUplinkFormat, _wrong)


def available_formats() -> list[str]:
    """Names of every installed uplink format."""
    return PLUGINS.names()


def format_class(name: str) -> FormatFactory:
    """The format class registered as ``name``; UnknownUplinkFormat names the installed ones."""
    return PLUGINS.load(name)


def make_format(name: str, gateway_id: str, prefix: str) -> Format:
    """An instance of the format registered as ``name`` (``json``, ``senml``, ...)."""
    return format_class(name)(gateway_id, prefix)


def cache_clear() -> None:
    """Forget the entry points (after installing a plugin in a running interpreter)."""
    PLUGINS.cache_clear()


def decode_json_batch(payload: bytes | str) -> list[Reading]:
    """Readings of one ``json`` telemetry batch, in order: what a cloud consumer does."""
    body = json.loads(payload)
    if body.get("v") != 1:
        raise ValueError(f"unknown batch version {body.get('v')!r}")
    t0 = body["t0"]
    units = body.get("units", {})
    out = []
    for device, dev in body["devices"].items():
        overrides = dev.get("_u", {})
        times = dev["_t"]
        for metric, column in dev.items():
            if metric.startswith("_"):
                continue
            unit = overrides.get(metric, units.get(metric))
            for t, v in zip(times, column, strict=True):
                if v is not None:
                    out.append(Reading(device, metric, v, unit, (t0 + t) / 1000))
    return out
