"""``gateway hardware`` (which Zigbee sticks are plugged in) and ``gateway zigbee backup``,
``map`` (the network map) and ``scan`` (energy scan of channels).

The ``zigbee`` group of the ``gateway.commands`` entry points (see :mod:`gateway.cli` for
the contract): it gets the daemon options and the control-API client from the CLI it is
registered with, so this adapter package imports neither the CLI nor the API package.

Exit codes as for the other daemon commands: 0 done, 1 refused or failed, 2 bad usage,
3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import urlencode

from gateway.plugins import CommandHost as Cli


def register(cli: Cli) -> None:
    """Add ``gateway hardware`` and ``gateway zigbee``."""
    _hardware_args(cli.add("hardware", "list plugged-in Zigbee sticks and suggest their config",
                           _hardware))
    _zigbee_args(cli, cli.add("zigbee", "Zigbee network tasks: backup, map, scan",
                              lambda args: _zigbee(args, cli)))


def _hardware(args: argparse.Namespace) -> int:
    from gateway.adapters.zigbee.hardware import detect

    found = detect()
    if args.json:
        print(json.dumps([f.as_dict() for f in found], indent=2))
        return 0
    if not found:
        print("no known Zigbee stick found (plugged in? `ls /dev/serial/by-id/` lists serial"
              " devices; a network stick is configured as port: socket://HOST:PORT)")
        return 1
    for f in found:
        state = "supported" if f.supported else f"needs a radio library for {f.radio_type}"
        print(f"{f.name}  [{f.usb_id}]  {f.device}  ({state})")
        if f.note:
            print(f"  note: {f.note}")
        print("  config:")
        print(f.config_snippet())
    return 0


def _hardware_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _zigbee(args: argparse.Namespace, cli: Cli) -> int:
    """``gateway zigbee backup|map|scan``; the CLI maps an unreachable daemon to 3, a
    refusal to 1."""
    if args.zigbee_command == "map":
        return _map(args, cli)
    if args.zigbee_command == "scan":
        return _scan(args, cli)
    if args.zigbee_command != "backup":
        print("usage: gateway zigbee {backup,map,scan} [--adapter NAME]", file=sys.stderr)
        return 2
    path = "/api/zigbee/backup" + (f"?adapter={args.adapter}" if args.adapter else "")
    answer = cli.client(args).call("POST", path)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for name, b in (answer.get("backups") or {}).items():
        print(f"{name}: backup of PAN {b.get('pan_id')} on channel {b.get('channel')}"
              f" ({b.get('devices')} device(s)) written to {b.get('path')}")
        print(f"  latest copy: {b.get('latest')}")
    return 0


def _query(args: argparse.Namespace, **extra: str) -> str:
    params = {**({"adapter": args.adapter} if args.adapter else {}), **extra}
    return ("?" + urlencode(params)) if params else ""


def _map(args: argparse.Namespace, cli: Cli) -> int:
    answer = cli.client(args).call(
        "GET", "/api/zigbee/map" + _query(args, **({"refresh": "1"} if args.refresh else {})))
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    when = answer.get("scanned_at")
    stamp = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when
             else "never (gateway zigbee map --refresh scans the routers' tables)")
    complete = "" if answer.get("complete", True) else " (stopped before the end)"
    print(f"{answer.get('adapter')}: network map scanned {stamp}{complete}")
    names = {n["ieee"]: n for n in answer.get("nodes", [])}
    for n in answer.get("nodes", []):
        lqi = "-" if n.get("lqi") is None else n["lqi"]
        print(f"  {n['type']:<11} {n['nwk']}  {n['ieee']}  lqi {lqi:>3}"
              f"  {n.get('device') or ''} {n.get('model') or ''}".rstrip())
    links = answer.get("links", [])
    if links:
        print("links (as the first node hears the second):")
    for link in links:
        src, dst = names.get(link["from"], {}), names.get(link["to"], {})
        print(f"  {src.get('nwk', link['from'])} -> {dst.get('nwk', link['to'])}"
              f"  lqi {link['lqi']:>3}  {link['relationship']}, depth {link['depth']}")
    for r in answer.get("routes", []):
        print(f"  route {names.get(r['from'], {}).get('nwk', r['from'])} to {r['to_nwk']}"
              f" via {r['next_hop_nwk']} ({r['status']})")
    return 0


def _scan(args: argparse.Namespace, cli: Cli) -> int:
    from gateway.adapters.zigbee.health import parse_channels

    try:
        channels = parse_channels(args.channels)
    except ValueError as exc:
        print(f"gateway zigbee scan: {exc}", file=sys.stderr)
        return 2
    body = {"channels": channels, "duration": args.duration, "count": args.count}
    answer = cli.client(args).call("POST", "/api/zigbee/scan" + _query(args), body)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rec = answer.get("recommendation", {})
    print(f"{answer.get('adapter')}: energy per channel (0 quiet - 255 busy)")
    print("  channel  MHz   energy                  Wi-Fi channels overlapping")
    for row in answer.get("channels", []):
        bar = "#" * round(row["energy"] / 255 * 16)
        mark = "  <- current" if row["channel"] == rec.get("current") else ""
        wifi = ", ".join(map(str, row["wifi_overlap"])) or "none"
        print(f"  {row['channel']:>7}  {row['mhz']}  {row['energy']:>5.1f} {bar:<16}"
              f"  {wifi}{mark}")
    wifi = ", ".join(map(str, rec.get("wifi_overlap", []))) or "none"
    print(f"recommended: channel {rec.get('channel')} ({rec.get('reason')}); it overlaps"
          f" Wi-Fi channel(s) {wifi}")
    if rec.get("change"):
        print(f"  the network is on channel {rec.get('current')}: set channel: in the config"
              " for a network formed anew; the gateway does not move a running network")
    elif "current" in rec:
        print("  the network is on it already")
    return 0


def _zigbee_args(cli: Cli, p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zigbee_command", metavar="ACTION")
    b = sub.add_parser("backup", help="export a coordinator backup (Open Coordinator Backup"
                                      " JSON) to the state directory now")
    cli.daemon_options(b, timeout=90.0, json_flag=False)
    b.add_argument("--adapter", help="only this Zigbee adapter (default: every one)")
    b.add_argument("--json", action="store_true", help="print JSON for scripts")
    m = sub.add_parser("map", help="the network map: neighbour and routing tables of the"
                                   " coordinator and routers")
    cli.daemon_options(m, timeout=180.0, json_flag=False)
    m.add_argument("--adapter", help="the Zigbee adapter (needed when several run)")
    m.add_argument("--refresh", action="store_true",
                   help="scan the tables again first (a few seconds per router)")
    m.add_argument("--json", action="store_true", help="print JSON for scripts")
    s = sub.add_parser("scan", help="energy scan of channels, with the channel to use")
    cli.daemon_options(s, timeout=180.0, json_flag=False)
    s.add_argument("--adapter", help="the Zigbee adapter (needed when several run)")
    s.add_argument("--channels", default="11-26", help="channels to scan: 11-26 (default),"
                                                       " 15,20,25 or 11-14,20")
    s.add_argument("--duration", type=int, default=4,
                   help="listen (2^N + 1) x 15.36 ms per channel, N 0-8 (default 4: 0.26 s)")
    s.add_argument("--count", type=int, default=1, help="scan this many times (1-5)")
    s.add_argument("--json", action="store_true", help="print JSON for scripts")
