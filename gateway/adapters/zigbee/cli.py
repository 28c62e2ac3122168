"""``gateway hardware`` (which Zigbee sticks are plugged in) and ``gateway zigbee backup``.

Exit codes as for the other daemon commands: 0 done, 1 refused or failed, 2 bad usage,
3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import DEFAULT_CONFIG, command


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


_hardware.arguments = _hardware_args  # type: ignore[attr-defined]
command("hardware", "list plugged-in Zigbee sticks and suggest their config")(_hardware)


def _zigbee(args: argparse.Namespace) -> int:
    from gateway.api.client import ApiError, DaemonUnreachable
    from gateway.api.commands import client_for

    if args.zigbee_command != "backup":
        print("usage: gateway zigbee backup [--adapter NAME]", file=sys.stderr)
        return 2
    path = "/api/zigbee/backup" + (f"?adapter={args.adapter}" if args.adapter else "")
    try:
        answer = client_for(args).call("POST", path)
    except DaemonUnreachable as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 3
    except ApiError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for name, b in (answer.get("backups") or {}).items():
        print(f"{name}: backup of PAN {b.get('pan_id')} on channel {b.get('channel')}"
              f" ({b.get('devices')} device(s)) written to {b.get('path')}")
        print(f"  latest copy: {b.get('latest')}")
    return 0


def _zigbee_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zigbee_command", metavar="ACTION")
    b = sub.add_parser("backup", help="export a coordinator backup (Open Coordinator Backup"
                                      " JSON) to the state directory now")
    b.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"config of the running gateway, to find its socket (default"
                        f" {DEFAULT_CONFIG})")
    b.add_argument("-s", "--socket", help="control socket path (overrides --config)")
    b.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for an answer")
    b.add_argument("--adapter", help="only this Zigbee adapter (default: every one)")
    b.add_argument("--json", action="store_true", help="print JSON for scripts")


_zigbee.arguments = _zigbee_args  # type: ignore[attr-defined]
command("zigbee", "Zigbee network tasks: backup")(_zigbee)
