"""Commands for Zigbee devices: gateway actions → ZCL requests, ZCL answers → results.

Actions: ``on``, ``off``, ``toggle``, ``level`` (``{"level": percent, "transition": s}``),
``command`` (``{"cluster": id or name, "command": id or name, "args": {...}}``),
``write`` (``{"cluster": ..., "attribute": id or name, "value": ...}``) and ``read``
(``{"cluster": ..., "attributes": [...]}``); each may name an ``endpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.adapters.zigbee.clusters import LEVEL, ON_OFF
from gateway.reading import CommandResult

ACTIONS = ("on", "off", "toggle", "level", "command", "write", "read")


class CommandError(ValueError):
    """A command's parameters do not fit the device; becomes a ``refused`` result."""


class UnsupportedAction(CommandError):
    """The action is not one Zigbee devices understand; becomes ``unsupported``."""


def parse_int(value: Any, what: str) -> int:
    """An id given as a number or a string (``"0x0006"``, ``"6"``)."""
    if isinstance(value, bool):
        raise CommandError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise CommandError(f"{what}: expected a number, got {value!r}")


def find_cluster(device: Any, cluster: Any, endpoint: Any = None) -> Any:
    """The server cluster ``cluster`` (id or zigpy name) on ``endpoint`` (or the first)."""
    endpoints = [ep for ep_id, ep in sorted(device.endpoints.items()) if ep_id != 0]
    if endpoint is not None:
        ep_id = parse_int(endpoint, "endpoint")
        endpoints = [ep for ep in endpoints if ep.endpoint_id == ep_id]
        if not endpoints:
            raise CommandError(f"device has no endpoint {ep_id}")
    for ep in endpoints:
        for cid, c in ep.in_clusters.items():
            if isinstance(cluster, str) and not cluster.strip().lower().startswith("0x") \
                    and not cluster.strip().isdigit():
                if cluster in (c.ep_attribute, c.name):
                    return c
            elif cid == parse_int(cluster, "cluster"):
                return c
    raise CommandError(f"device has no cluster {cluster!r}"
                       + (f" on endpoint {endpoint}" if endpoint is not None else ""))


def _command_id(cluster: Any, name: Any) -> int:
    """A server command of ``cluster`` by zigpy name or number."""
    if isinstance(name, str) and not name.strip()[:1].isdigit():
        for cmd in cluster.server_commands.values():
            if cmd.name == name:
                return int(cmd.id)
        raise CommandError(f"cluster {cluster.name} has no command {name!r}")
    cmd_id = parse_int(name, "command")
    if cmd_id not in cluster.server_commands:
        raise CommandError(f"cluster {cluster.name} has no command {name!r}")
    return cmd_id


def _status_of(response: Any) -> Any:
    """The ZCL status inside a default response, or None when the answer has none."""
    status = getattr(response, "status", None)
    if status is None and isinstance(response, (list, tuple)) and len(response) >= 2:
        status = response[1]
    return status


def result_of(response: Any, what: str) -> CommandResult:
    """A ZCL answer → delivered, or refused with the device's status."""
    from zigpy.zcl import foundation

    status = _status_of(response)
    if status is None or status == foundation.Status.SUCCESS:
        return CommandResult.delivered(what)
    name = getattr(status, "name", str(status))
    return CommandResult.refused(f"{what}: device answered {name}")


async def run(device: Any, action: str, params: Mapping[str, Any]) -> CommandResult:
    """Carry out one action on ``device`` (a zigpy device); timeouts are the caller's."""
    from zigpy.zcl import foundation

    endpoint = params.get("endpoint")
    if action in ("on", "off", "toggle"):
        cluster = find_cluster(device, ON_OFF, endpoint)
        rsp = await cluster.command(_command_id(cluster, action))
        return result_of(rsp, action)
    if action == "level":
        cluster = find_cluster(device, LEVEL, endpoint)
        if "raw" in params:
            raw = parse_int(params["raw"], "raw")
        elif "level" in params:
            try:
                percent = float(params["level"])
            except (TypeError, ValueError):
                raise CommandError(f"level: expected a percentage, got {params['level']!r}")\
                    from None
            if not 0 <= percent <= 100:
                raise CommandError(f"level: expected 0 to 100 (percent), got {percent}")
            raw = round(percent * 254 / 100)
        else:
            raise CommandError("level needs params.level (percent 0-100) or params.raw (0-254)")
        if not 0 <= raw <= 254:
            raise CommandError(f"raw level: expected 0 to 254, got {raw}")
        transition = float(params.get("transition", 0))
        rsp = await cluster.command(_command_id(cluster, "move_to_level_with_on_off"), level=raw,
                                    transition_time=max(0, min(0xFFFE, round(transition * 10))))
        return result_of(rsp, f"level {raw}/254")
    if action == "command":
        if "cluster" not in params or "command" not in params:
            raise CommandError("command needs params.cluster and params.command")
        cluster = find_cluster(device, params["cluster"], endpoint)
        name = params["command"]
        cmd_id = _command_id(cluster, name)
        args = params.get("args") or {}
        if not isinstance(args, Mapping):
            raise CommandError("command: params.args must be a mapping of argument names")
        try:
            rsp = await cluster.command(cmd_id, **dict(args))
        except (TypeError, ValueError, KeyError) as exc:
            raise CommandError(f"command {name!r}: {exc}") from None
        return result_of(rsp, f"{cluster.name}.{name}")
    if action == "write":
        if "cluster" not in params or "attribute" not in params or "value" not in params:
            raise CommandError("write needs params.cluster, params.attribute and params.value")
        cluster = find_cluster(device, params["cluster"], endpoint)
        attr = params["attribute"]
        key: Any = attr if isinstance(attr, str) and not attr[:1].isdigit() \
            else parse_int(attr, "attribute")
        try:
            cluster.find_attribute(key)
        except KeyError:
            raise CommandError(f"cluster {cluster.name} has no attribute {attr!r}") from None
        try:
            records = await cluster.write_attributes({key: params["value"]})
        except (TypeError, ValueError) as exc:
            raise CommandError(f"write {attr!r}: {exc}") from None
        failed = [r for r in (records[0] if records else [])
                  if getattr(r, "status", foundation.Status.SUCCESS) != foundation.Status.SUCCESS]
        if failed:
            return CommandResult.refused(
                f"write {attr!r}: device answered " + ", ".join(r.status.name for r in failed))
        return CommandResult.delivered(f"wrote {cluster.name}.{attr}")
    if action == "read":
        if "cluster" not in params or "attributes" not in params:
            raise CommandError("read needs params.cluster and params.attributes")
        cluster = find_cluster(device, params["cluster"], endpoint)
        names = params["attributes"]
        if isinstance(names, (str, int)):
            names = [names]
        keys = [n if isinstance(n, str) and not n[:1].isdigit() else parse_int(n, "attribute")
                for n in names]
        ok, failed = await cluster.read_attributes(keys)
        shown = {str(k): str(v) for k, v in ok.items()}
        if failed:
            shown.update({str(k): f"error {getattr(v, 'name', v)}" for k, v in failed.items()})
        return CommandResult.delivered(", ".join(f"{k}={v}" for k, v in shown.items()))
    raise UnsupportedAction(f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
