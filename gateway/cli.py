"""The ``gateway`` command: run the daemon, check a config, talk to a running daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from gateway.adapters.base import Advice
    from gateway.config.model import GatewayConfig

DEFAULT_CONFIG = "/etc/gateway/gateway.yaml"

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable[[Handler], Handler]:
    """Register ``gateway NAME``; the decorated function's ``args`` hook adds its options."""

    def wrap(fn: Handler) -> Handler:
        setup = getattr(fn, "arguments", lambda p: None)
        _COMMANDS[name] = (fn, setup, help)
        return fn

    return wrap


def _config_arg(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                       help=f"config file (default {DEFAULT_CONFIG})")
    else:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                       help=f"config file (default {DEFAULT_CONFIG})")


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon import run

    return run(args.config)


_run.arguments = _config_arg  # type: ignore[attr-defined]
command("run", "run the gateway daemon")(_run)


def _say(text: str, stream: TextIO) -> None:
    # a name in the file may hold characters the terminal cannot show: escape, never fail
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")


def _advice(cfg: GatewayConfig) -> list[Advice]:
    """What each adapter section says about the machine; a check that fails is a note."""
    from gateway.adapters.base import Advice

    out: list[Advice] = []
    for section in cfg.adapters:
        try:
            out.extend(section.advice())
        except Exception as exc:  # noqa: BLE001 - a warning check never stops the check
            detail = " ".join(str(exc).split())[:200]
            out.append(Advice("note", f"adapter {section.name!r}: not checked further "
                              f"({type(exc).__name__}: {detail})"))
    return out


def _check(args: argparse.Namespace) -> int:
    """Exit status 2 when the file has problems; 0 when it would start, warnings or not."""
    from gateway.config.model import ConfigError, load_config

    try:
        cfg = load_config(args.config)
        names = ", ".join(f"{a.name} ({a.type})" for a in cfg.adapters) or "none"
        summary = (f"{args.config}: OK — gateway {cfg.gateway.id}, adapters: {names}, "
                   f"{len(cfg.rules)} rule(s), {len(cfg.filters)} filter(s)")
    except ConfigError as exc:
        for line in exc.problems:
            _say(f"error: {line}", sys.stderr)
        _say(f"{args.config}: {len(exc.problems)} problem(s); the gateway would not start",
             sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: one clear line, not a traceback
        detail = " ".join(str(exc).split())[:200]
        _say(f"error: {args.config}: cannot check this file ({type(exc).__name__}: {detail})",
             sys.stderr)
        return 2
    advice = _advice(cfg)
    for item in advice:
        _say(f"{item.level}: {item.text}", sys.stderr)
    warnings = sum(item.level == "warning" for item in advice)
    _say(summary + (f"; {warnings} warning(s)" if warnings else ""), sys.stdout)
    return 0


_check.arguments = lambda p: _config_arg(p, positional=True)  # type: ignore[attr-defined]
command("check", "validate a config file without starting anything "
                 "(exit status 2 on errors, 0 with warnings only)")(_check)


def _load_plugins() -> None:
    # subcommands that talk to a running daemon register themselves on import
    for module in ("gateway.api.commands", "gateway.adapters.zigbee.cli"):
        try:
            __import__(module)
        except ImportError:
            pass


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    from gateway import __version__

    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, setup, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(handler=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
