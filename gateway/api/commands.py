"""CLI subcommands that talk to a running daemon through its control API.

``gateway status | devices | outbox | send | pair | rename | forget | reload``: the ``api`` group of
the ``gateway.commands`` entry points (see :mod:`gateway.cli` for the contract). Tables for
people, ``--json`` for scripts. Exit codes: 0 done, 1 the daemon answered but refused or is
unhealthy, 2 bad usage, 3 the daemon cannot be reached (``gateway.cli.main`` turns the
client's ``DaemonUnreachable`` and ``ApiError`` into 3 and 1).

The client module is imported when a command runs, not when the parser is built: it pulls
in ``http.client`` and the YAML reader, which ``gateway --help`` need not pay for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from gateway.plugins import CommandHost

if TYPE_CHECKING:
    from gateway.api.client import ApiClient

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

class Cli(CommandHost, Protocol):
    """The command host, its client typed as the control API's."""

    def client(self, args: argparse.Namespace) -> ApiClient: ...


# -- shared plumbing ----------------------------------------------------------------------

def _print_json(data: Any, out: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, default=str), file=out or sys.stdout)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def duration(seconds: float) -> str:
    """``42s``, ``5m 3s``, ``2h 10m``, ``3d 4h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def ago(ts: float | None, now: float | None = None) -> str:
    """``3s ago``, or ``never``."""
    if not ts:
        return "never"
    return duration((now or time.time()) - ts) + " ago"


def size(n: float) -> str:
    """``512 B``, ``20.0 KiB``, ``256.0 MiB``: binary units, as the config's sizes usually are."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _values(values: Any, limit: int = 60) -> str:
    if not isinstance(values, dict) or not values:
        return "-"
    parts = []
    for metric, v in values.items():
        unit = v.get("unit") if isinstance(v, dict) else None
        value = v.get("value") if isinstance(v, dict) else v
        parts.append(f"{metric}={value}" + (f" {unit}" if unit else ""))
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- gateway status -----------------------------------------------------------------------

def status(args: argparse.Namespace, cli: Cli) -> int:
    """Health of the running daemon; exit 1 unless it is ready and nothing is wrong."""
    from gateway.api.client import ApiError

    code, data = cli.client(args).request("GET", "/healthz")
    if not isinstance(data, dict) or "status" not in data:
        raise ApiError(code, f"unexpected answer from /healthz (HTTP {code})")
    if args.json:
        _print_json(data)
    else:
        print(format_status(data))
    return 0 if data["status"] == "ok" else EXIT_FAILED


def format_status(data: dict[str, Any]) -> str:
    """The human-readable ``gateway status`` report."""
    now = time.time()
    lines = [f"gateway {data.get('gateway')} {data.get('version')}: {data['status']}, "
             f"up {duration(data.get('uptime', 0))}"]
    uplink = data.get("uplink") or {}
    link = ("disabled" if not uplink.get("enabled")
            else "connected" if uplink.get("connected") else "NOT CONNECTED")
    if uplink.get("connected") and uplink.get("connected_since"):
        link += f" for {duration(now - uplink['connected_since'])}"
    ob = data.get("outbox") or {}
    dev = data.get("devices") or {}
    lines += [
        f"uplink   {link}",
        f"outbox   {ob.get('depth', 0)} reading(s), {ob.get('events', 0)} event(s), "
        f"{size(ob.get('bytes', 0))}, oldest {duration(ob.get('oldest_age', 0))}, "
        f"{ob.get('dropped', 0)} dropped",
        f"devices  {dev.get('known', 0)} known, {dev.get('online', 0)} online",
        "",
    ]
    rows = [(name, a.get("type"), a.get("state"), a.get("restarts"), ago(a.get("since"), now),
             a.get("last_error")) for name, a in (data.get("adapters") or {}).items()]
    if rows:
        lines.append(table(rows, ("ADAPTER", "TYPE", "STATE", "RESTARTS", "SINCE",
                                  "LAST ERROR")))
    else:
        lines.append("no adapters configured")
    problems = data.get("problems") or []
    if problems:
        lines += ["", "problems:"] + [f"  - {p}" for p in problems]
    return "\n".join(lines)


# -- gateway devices ----------------------------------------------------------------------

def devices(args: argparse.Namespace, cli: Cli) -> int:
    """List known devices, or show one."""
    from gateway.api.client import device_path

    client = cli.client(args)
    if args.device:
        one = client.call("GET", device_path(args.device))
        if args.json:
            _print_json(one)
        else:
            print(format_device(one))
        return 0
    query = []
    if args.adapter:
        query.append(f"adapter={args.adapter}")
    if args.online is not None:
        query.append(f"online={'true' if args.online else 'false'}")
    listed = client.call("GET", "/api/devices" + ("?" + "&".join(query) if query else ""))
    if args.json:
        _print_json(listed)
        return 0
    if not listed:
        print("no devices known yet")
        return 0
    now = time.time()
    rows = [(d.get("id"), d.get("name"), d.get("type"), d.get("online"),
             ago(d.get("last_seen"), now), _values(d.get("values"))) for d in listed]
    print(table(rows, ("ID", "NAME", "TYPE", "ONLINE", "LAST SEEN", "VALUES")))
    online = sum(1 for d in listed if d.get("online"))
    print(f"\n{len(listed)} device(s), {online} online")
    return 0


def format_device(d: dict[str, Any]) -> str:
    """Every field of one device, one per line, values last."""
    now = time.time()
    lines = []
    for key, value in d.items():
        if key == "values":
            continue
        if key in ("first_seen", "last_seen"):
            value = ago(value, now)
        lines.append(f"{key:<13}{_cell(value)}")
    values = d.get("values") or {}
    if values:
        lines.append("values")
        for metric, v in values.items():
            unit = f" {v.get('unit')}" if v.get("unit") else ""
            lines.append(f"  {metric:<16}{v.get('value')}{unit}  ({ago(v.get('ts'), now)})")
    return "\n".join(lines)


def _devices_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", nargs="?", help="show this device only (e.g. sim:sim-1)")
    p.add_argument("--adapter", help="only devices of this adapter")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--online", dest="online", action="store_true", default=None,
                       help="only devices online")
    state.add_argument("--offline", dest="online", action="store_false",
                       help="only devices offline")


# -- gateway outbox -----------------------------------------------------------------------

def outbox(args: argparse.Namespace, cli: Cli) -> int:
    """Depth, size, age and drops of the outbox."""
    if args.dead_letters:
        letters = cli.client(args).call("GET", f"/api/outbox/dead-letters?limit={args.limit}")
        if args.json:
            _print_json(letters)
        else:
            print(format_dead_letters(letters))
        return 0
    data = cli.client(args).call("GET", "/api/outbox")
    if args.json:
        _print_json(data)
        return 0
    print(format_outbox(data))
    return 0


def format_outbox(d: dict[str, Any]) -> str:
    """The human-readable ``gateway outbox`` report."""
    link = ("disabled" if d.get("uplink_enabled") is False
            else "connected" if d.get("uplink_connected") else "not connected")
    return "\n".join([
        f"waiting   {d.get('depth', 0)} reading(s) in {d.get('rows', 0)} batch(es), "
        f"{d.get('events', 0)} event(s)",
        f"oldest    {duration(d.get('oldest_age', 0))} (dropped beyond "
        f"{duration(d.get('max_age', 0))})",
        f"size      {size(d.get('bytes', 0))} of {size(d.get('max_bytes', 0))}",
        f"dropped   {d.get('dropped', 0)} reading(s), {d.get('dropped_events', 0)} event(s)",
        f"pending   {d.get('pending', 0)} reading(s) waiting for a commit",
        f"set aside {d.get('dead_letters', 0)} reading(s) that cannot be stored"
        + (f", {d['dead_letters_deleted']} older deleted" if d.get("dead_letters_deleted")
           else "") + " (gateway outbox --dead-letters)",
        f"uplink    {link}",
        f"file      {d.get('path')} (epoch {d.get('epoch')}, last id {d.get('last_id')})",
    ])


def format_dead_letters(d: dict[str, Any]) -> str:
    """``gateway outbox --dead-letters``: newest first, one line each."""
    rows = d.get("dead_letters") or []
    deleted = f", {d['deleted']} older deleted" if d.get("deleted") else ""
    lines = [f"{d.get('count', 0)} reading(s) set aside as unstorable (at most "
             f"{d.get('max', 0)} kept{deleted})"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("ts") or 0)))
        lines.append(f"{when}  {r.get('device')}  {r.get('reason')}")
        lines.append(f"    {r.get('reading')}")
    if len(rows) < d.get("count", 0):
        lines.append(f"(the latest {len(rows)}; --limit N shows more)")
    return "\n".join(lines)


def _outbox_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dead-letters", action="store_true",
                   help="list readings set aside because they could not be stored")
    p.add_argument("--limit", type=int, default=20,
                   help="with --dead-letters: how many of the latest (default 20)")


# -- gateway send -------------------------------------------------------------------------

def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["level=50", "on=true", "name=hall"]`` → ``{"level": 50, "on": True, "name": "hall"}``.

    Values that parse as JSON (numbers, true/false/null, lists, objects) are taken as such;
    anything else is a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _answer(code: int, result: Any, key: str) -> dict[str, Any]:
    """An answer that carries ``key`` (an outcome, even a failed one, with its HTTP status
    beside it); anything else is the API's error, raised."""
    from gateway.api.client import ApiError

    if not isinstance(result, dict) or key not in result:
        message = result.get("error") if isinstance(result, dict) else result
        raise ApiError(code, str(message or f"HTTP {code}"))
    return result


def send(args: argparse.Namespace, cli: Cli) -> int:
    """Send a command to a device; exit 1 unless it was sent or delivered."""
    from gateway.api.client import device_path

    try:
        params = parse_params(args.params)
    except ValueError as exc:
        print(f"gateway send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = _answer(*cli.client(args).request(
        "POST", device_path(args.device, "/commands"), {"action": args.action, "params": params}),
        "status")
    if args.json:
        _print_json(result)
    else:
        detail = f": {result['detail']}" if result.get("detail") else ""
        print(f"{result['status']}{detail}", file=sys.stdout if result.get("ok") else sys.stderr)
    return 0 if result.get("ok") else EXIT_FAILED


def _send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device id, e.g. zigbee:00:12:4b:00:01:02:03:04")
    p.add_argument("action", help="what to do, e.g. on, off, toggle, set")
    p.add_argument("params", nargs="*", metavar="key=value",
                   help="parameters; JSON values (50, true, [1,2]) keep their type")


# -- gateway pair -------------------------------------------------------------------------

#: fields worth showing as a joining device is interviewed
_PAIR_FIELDS = ("model", "manufacturer", "interview", "interview_state")
#: what pair asks for on each poll: the device list without values stays small
_PAIR_QUERY = "/api/devices?fields=" + ",".join(_PAIR_FIELDS)


def _pair_view(d: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(d.get(k) for k in _PAIR_FIELDS)


def _joined(seen: dict[str, Any], before: dict[str, Any]) -> int:
    return sum(1 for d in seen if d not in before)


def _pair_line(d: dict[str, Any], known: bool) -> str:
    interview = d.get("interview", d.get("interview_state"))
    parts = [f"model {_cell(d.get('model'))}", f"manufacturer {_cell(d.get('manufacturer'))}"]
    if interview is not None:
        parts.append(f"interview {interview}")
    return f"{'~' if known else '+'} {d.get('id')}: " + ", ".join(parts)


def pair(args: argparse.Namespace, cli: Cli) -> int:
    """Open joining, count down, and show each device as it joins and is interviewed."""
    from gateway.api.client import ApiError, DaemonUnreachable, device_path

    client = cli.client(args)
    body: dict[str, Any] = {"seconds": 0 if args.close else args.seconds}
    if args.adapter:
        body["adapter"] = args.adapter
    if args.close:
        closed = client.call("POST", "/api/permit-join", body)
        names = [n for n, r in (closed.get("adapters") or {}).items() if r.get("ok")]
        print(f"joining closed on {', '.join(names)}")
        return 0
    before = {d["id"]: d for d in client.call("GET", _PAIR_QUERY)}
    opened = client.call("POST", "/api/permit-join", body)
    names = [n for n, r in (opened.get("adapters") or {}).items() if r.get("ok")]
    failed = {n: r.get("error") for n, r in (opened.get("adapters") or {}).items()
              if not r.get("ok")}
    for name, error in failed.items():
        print(f"gateway pair: {name}: {error}", file=sys.stderr)
    out = sys.stdout
    tty = out.isatty() and not args.json
    if not args.json:
        print(f"joining open on {', '.join(names)} for {args.seconds} s: put devices in pairing "
              "mode now (Ctrl-C closes joining)", flush=True)
    seen: dict[str, tuple[Any, ...]] = {}
    deadline = time.monotonic() + args.seconds
    next_note = time.monotonic() + 10.0
    try:
        while True:
            remaining = deadline - time.monotonic()
            for d in client.call("GET", _PAIR_QUERY):
                dev_id = d.get("id")
                if dev_id in before and _pair_view(before[dev_id]) == _pair_view(d):
                    continue
                view = _pair_view(d)
                if seen.get(dev_id) == view:
                    continue
                if args.json:
                    try:
                        full = client.call("GET", device_path(dev_id))
                    except ApiError:  # removed in between: what the list said will do
                        full = d
                    print(json.dumps(full, default=str), flush=True)
                else:
                    if tty:
                        out.write("\r\033[K")
                    print(_pair_line(d, dev_id in seen or dev_id in before), flush=True)
                seen[dev_id] = view
            if remaining <= 0:
                break
            if tty:
                out.write(f"\r\033[K{int(remaining + 0.999)} s left, "
                          f"{_joined(seen, before)} new device(s)")
                out.flush()
            elif not args.json and time.monotonic() >= next_note:
                print(f"{int(remaining + 0.999)} s left, {_joined(seen, before)} new device(s)",
                      flush=True)
                next_note += 10.0
            time.sleep(min(max(0.05, args.interval), max(0.0, remaining)))
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        try:
            client.call("POST", "/api/permit-join", {**body, "seconds": 0})
            print("joining closed", file=sys.stderr)
        except (DaemonUnreachable, ApiError) as exc:
            print(f"gateway pair: could not close joining: {exc}", file=sys.stderr)
        return 130
    if tty:
        out.write("\r\033[K")
    if not args.json:
        print(f"joining closed: {_joined(seen, before)} new device(s)")
    return 0


def _pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=_seconds, default=60,
                   help="how long joining stays open, 1 to 254 (default 60)")
    p.add_argument("--adapter", help="open joining on this adapter only")
    p.add_argument("--close", action="store_true", help="close joining now and exit")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}"
                                         ) from None
    if not 1 <= value <= 254:
        raise argparse.ArgumentTypeError("expected 1 to 254 seconds (Zigbee's limit)")
    return value


# -- gateway rename / gateway forget ------------------------------------------------------

def rename(args: argparse.Namespace, cli: Cli) -> int:
    """Give a device a display name."""
    from gateway.api.client import device_path

    device = cli.client(args).call("PATCH", device_path(args.device), {"name": args.name})
    if args.json:
        _print_json(device)
    else:
        print(f"{device.get('id')} is now named {device.get('name')!r}")
    return 0


def _rename_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device id, e.g. mqtt:kitchen")
    p.add_argument("name", help="display name, e.g. 'Kitchen sensor'")


def forget(args: argparse.Namespace, cli: Cli) -> int:
    """Remove a device (Zigbee: asked to leave the network first)."""
    from gateway.api.client import device_path

    answer = cli.client(args).call("DELETE", device_path(args.device))
    if args.json:
        _print_json(answer)
    else:
        adapter = answer.get("adapter") or {}
        if adapter:
            print(f"{args.device} removed: {adapter.get('status')}"
                  + (f" ({adapter['detail']})" if adapter.get("detail") else ""))
        else:
            print(f"{args.device} forgotten (it registers again if it sends again)")
    return 0


def _forget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device id, e.g. mqtt:old-sensor")


# -- gateway reload -----------------------------------------------------------------------

def reload(args: argparse.Namespace, cli: Cli) -> int:
    """Make the daemon read its config file again; exit 1 if the file is refused."""
    result = _answer(*cli.client(args).request("POST", "/api/reload"), "summary")
    if args.json:
        _print_json(result)
    else:
        for line in result.get("problems") or []:
            print(f"config: {line}", file=sys.stderr)
        print(result["summary"], file=sys.stdout if result.get("ok") else sys.stderr)
    return 0 if result.get("ok") else EXIT_FAILED


# -- the group ----------------------------------------------------------------------------

def register(cli: Cli) -> None:
    """The ``api`` command group (entry point ``gateway.commands``: ``api``)."""

    def add(name: str, help: str, handler: Callable[[argparse.Namespace, Cli], int],
            timeout: float = 10.0) -> argparse.ArgumentParser:
        p = cli.add(name, help, lambda args: handler(args, cli))
        cli.daemon_options(p, timeout=timeout)
        return p

    add("status", "health of the running gateway: adapters, uplink, outbox", status)
    _devices_args(add("devices", "list known devices, their state and latest values", devices))
    _outbox_args(add("outbox", "what waits in the outbox for the cloud", outbox))
    # longer than the daemon's own api.command_timeout (30 s): its answer says what happened
    _send_args(add("send", "send a command to a device", send, timeout=45.0))
    _pair_args(add("pair", "allow new Zigbee devices to join and watch them arrive", pair,
                   timeout=45.0))
    _rename_args(add("rename", "give a device a display name", rename))
    # a Zigbee device is asked to leave first
    _forget_args(add("forget", "remove a device from the registry", forget, timeout=45.0))
    # adapters that restart drain first (up to the supervisor's stop timeout)
    add("reload", "read the config file again and apply what changed, without a restart",
        reload, timeout=60.0)
