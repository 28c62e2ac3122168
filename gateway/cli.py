"""The ``gateway`` command: run the daemon, check a config, talk to a running daemon.

Every subcommand comes from a command group registered under the ``gateway.commands``
entry points, the built-in ones (``run``, ``check``) included; a group is a function
``register(cli)`` receiving a :class:`Commands`::

    [project.entry-points."gateway.commands"]
    acme = "acme_gateway.cli:register"

    def register(cli):
        p = cli.add("acme", "what acme does", lambda args: run(args, cli))
        cli.daemon_options(p)          # -c/--config, -s/--socket, --timeout, --json

    def run(args, cli):
        print(cli.client(args).call("GET", "/api/acme"))
        return 0

A handler takes the parsed ``argparse.Namespace`` and returns the exit status. Daemon
commands share their exit codes: 0 done, 1 the daemon refused or is unhealthy, 2 bad usage,
3 the daemon cannot be reached; ``main`` turns an unreachable daemon
(``gateway.api.client.DaemonUnreachable``) into one line and 3, and an error answer
(``ApiError``) into one line and 1, for every command. A group needs no import from
this module (nothing in ``gateway`` may import it: it sits on top of every package).

Groups are registered built-ins first, then by entry point name. A group that does not
load, or whose ``register`` fails, is named in one line on stderr; the other commands work.
Startup stays light: groups import what their handlers need when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gateway.api.client import ApiClient
    from gateway.config.model import GatewayConfig

GROUP = "gateway.commands"
DEFAULT_CONFIG = "/etc/gateway/gateway.yaml"
DESCRIPTION = "The ``gateway`` command: run the daemon, check a config, talk to a running daemon."

Handler = Callable[[argparse.Namespace], int]


class Commands:
    """What each command group's ``register`` receives: a way to add subcommands.

    ``add`` makes ``gateway NAME``; ``config_option`` and ``daemon_options`` add the
    options every command spells the same way; ``client`` is the control-API client
    for the parsed ``--socket``/``--config``/``--timeout``.
    """

    default_config = DEFAULT_CONFIG

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers

    def add(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        """Add ``gateway NAME``, run by ``handler``; the returned parser takes its options.

        ValueError if another group already added ``name``.
        """
        if name in self._subparsers.choices:
            raise ValueError(f"command {name!r} is already registered")
        p = self._subparsers.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def config_option(self, p: argparse.ArgumentParser, positional: bool = False) -> None:
        """``-c/--config FILE`` (or a positional ``config``), default the installed file."""
        text = f"config file (default {self.default_config})"
        if positional:
            p.add_argument("config", nargs="?", default=self.default_config, help=text)
        else:
            p.add_argument("-c", "--config", default=self.default_config, help=text)

    def daemon_options(self, p: argparse.ArgumentParser, *, timeout: float = 10.0,
                       json_flag: bool = True) -> None:
        """The options of a command talking to the daemon: which one, how long, ``--json``."""
        p.add_argument("-c", "--config", default=self.default_config,
                       help=f"config of the running gateway, to find its socket (default "
                            f"{self.default_config})")
        p.add_argument("-s", "--socket", help="control socket path (overrides --config)")
        p.add_argument("--timeout", type=float, default=timeout,
                       help=f"seconds to wait for an answer (default {timeout:g})")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")

    def client(self, args: argparse.Namespace) -> ApiClient:
        """The client for ``--socket``, or for the socket named by ``--config``.

        The default config may be absent (a development machine): then the default socket.
        """
        from pathlib import Path

        from gateway.api.client import ApiClient, default_socket, socket_from_config

        if args.socket:
            return ApiClient(args.socket, args.timeout)
        if args.config == self.default_config and not Path(self.default_config).exists():
            return ApiClient(default_socket(), args.timeout)
        return ApiClient(socket_from_config(args.config), args.timeout)


# -- built-in commands: gateway run, gateway check ----------------------------------------

def register(cli: Commands) -> None:
    """The built-in group: ``run`` and ``check``."""
    cli.config_option(cli.add("run", "run the gateway daemon", _run))
    cli.config_option(cli.add("check", "validate a config file without starting anything "
                                       "(exit status 2 on errors, 0 with warnings only)",
                              _check), positional=True)


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon import run

    return run(args.config)


def _say(text: str, stream: TextIO) -> None:
    # a name in the file may hold characters the terminal cannot show: escape, never fail
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")


def _advice(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """``(level, text)`` of what each adapter section says; a check that fails is a note."""
    out: list[tuple[str, str]] = []
    for section in cfg.adapters:
        try:
            out.extend((item.level, item.text) for item in section.advice())
        except Exception as exc:  # noqa: BLE001 - a warning check never stops the check
            detail = " ".join(str(exc).split())[:200]
            out.append(("note", f"adapter {section.name!r}: not checked further "
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
    for level, text in advice:
        _say(f"{level}: {text}", sys.stderr)
    warnings = sum(level == "warning" for level, _ in advice)
    _say(summary + (f"; {warnings} warning(s)" if warnings else ""), sys.stdout)
    return 0


# -- loading the groups -------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _groups() -> list[Any]:
    """The ``gateway.commands`` entry points: built-ins first, then by name."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=GROUP), key=lambda ep: (ep.module != __name__, ep.name))


def register_groups(cli: Commands, groups: Sequence[Any], stderr: TextIO | None = None) -> None:
    """Call each group's ``register(cli)``; one that fails is named on stderr and skipped."""
    for ep in groups:
        try:
            ep.load()(cli)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            _say(f"gateway: command group {ep.name!r} ({ep.value}) unavailable: "
                 f"{_one_line(exc)}", stderr or sys.stderr)


def build_parser(groups: Sequence[Any] | None = None) -> argparse.ArgumentParser:
    """The whole ``gateway`` parser (every installed group unless ``groups`` is given)."""
    from gateway import __version__

    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_groups(Commands(sub), _groups() if groups is None else groups)
    return parser


def _daemon_failure(exc: Exception) -> int | None:
    """The exit status for the control API's two failures, None for anything else."""
    if "gateway.api.client" not in sys.modules:  # not loaded: it cannot have raised
        return None
    from gateway.api.client import ApiError, DaemonUnreachable

    if isinstance(exc, DaemonUnreachable):
        print(f"gateway: {exc}", file=sys.stderr)
        return 3
    if isinstance(exc, ApiError):
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    return None


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
    except Exception as exc:
        code = _daemon_failure(exc)
        if code is None:
            raise
        return code
