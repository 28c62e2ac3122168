"""Plugins all the same way: CLI command groups and uplink formats are entry-point groups.

``gateway.commands`` entries are ``register(cli)`` functions; ``gateway.uplink_formats``
entries are format classes. A broken command group is named on stderr and the rest of the
CLI works; an unknown or broken uplink format is refused by the config with the installed
ones listed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config.model import ConfigError, load_config
from gateway.reading import Reading
from gateway.store.outbox import EventRow, TelemetryRow
from gateway.uplink import formats

BUILT_IN_COMMANDS = ["run", "check", "status", "devices", "outbox", "send", "pair", "rename",
                     "forget", "reload", "history", "hardware", "zigbee"]


def group(name: str, value: str, kind: str = cli.GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=kind)


_installed_groups = cli._groups


def installed_groups() -> list[EntryPoint]:
    return _installed_groups()


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def run_cli(monkeypatch: pytest.MonkeyPatch, extra: Sequence[EntryPoint],
            argv: list[str]) -> int:
    monkeypatch.setattr(cli, "_groups", lambda: [*installed_groups(), *extra])
    return cli.main(argv)


# -- a third-party command group, as a plugin would write it ------------------------------

def acme_register(c: Any) -> None:
    p = c.add("acme", "ask the daemon about acme", lambda args: acme(args, c))
    c.daemon_options(p, timeout=2.0)
    p.add_argument("--fail", choices=("refused", "crash"))


def acme(args: argparse.Namespace, c: Any) -> int:
    from gateway.api.client import ApiError

    if args.fail == "refused":
        raise ApiError(409, "acme is busy")
    if args.fail == "crash":
        raise RuntimeError("acme bug")
    print(json.dumps(c.client(args).call("GET", "/api/acme")))
    return 0


def broken_register(c: Any) -> None:
    c.add("half", "registered before the failure", lambda args: 0)
    raise RuntimeError("register exploded")


def clashing_register(c: Any) -> None:
    c.add("status", "a second status", lambda args: 0)


# -- command groups -----------------------------------------------------------------------

def test_the_built_in_groups_are_entry_points() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group=cli.GROUP)}
    assert eps == {"gateway": "gateway.cli:register", "api": "gateway.api.commands:register",
                   "history": "gateway.history.cli:register",
                   "zigbee": "gateway.adapters.zigbee.cli:register"}
    # built-ins first, then by name: the order of `gateway --help`
    assert [ep.name for ep in installed_groups()] == ["gateway", "api", "history", "zigbee"]


def test_every_existing_command_is_there_in_order() -> None:
    assert command_names(cli.build_parser()) == BUILT_IN_COMMANDS


def test_a_group_that_does_not_import_is_named_and_the_rest_works(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("gateway:\n  id: plug-1\n  state_dir: " + str(tmp_path) + "\n")
    code = run_cli(monkeypatch, [group("ghost", "acme_missing_package.cli:register")],
                   ["check", str(config)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.startswith(f"{config}: OK — gateway plug-1")
    assert err.splitlines() == [
        "gateway: command group 'ghost' (acme_missing_package.cli:register) unavailable: "
        "ModuleNotFoundError: No module named 'acme_missing_package'"]


def test_a_group_whose_register_fails_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser([*installed_groups(), group("broken", f"{__name__}:broken_register"),
                               group("clash", f"{__name__}:clashing_register")])
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"gateway: command group 'broken' ({__name__}:broken_register) unavailable: "
        "RuntimeError: register exploded",
        f"gateway: command group 'clash' ({__name__}:clashing_register) unavailable: "
        "ValueError: command 'status' is already registered",
    ]
    # what the broken group added before failing stays; the first `status` is kept
    assert command_names(parser) == [*BUILT_IN_COMMANDS, "half"]
    args = parser.parse_args(["status", "--json"])
    assert args.json is True and args.timeout == 10.0


def test_a_group_that_is_not_callable_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser([group("const", "gateway.cli:DEFAULT_CONFIG")])
    assert command_names(parser) == []
    assert capsys.readouterr().err == (
        "gateway: command group 'const' (gateway.cli:DEFAULT_CONFIG) unavailable: "
        "TypeError: 'str' object is not callable\n")


def test_a_plugin_command_gets_the_daemon_options_and_exit_codes(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    acme_ep = [group("acme", f"{__name__}:acme_register")]
    sock = tmp_path / "none.sock"
    # unreachable daemon: one line, exit 3
    assert run_cli(monkeypatch, acme_ep, ["acme", "-s", str(sock)]) == 3
    assert capsys.readouterr().err == (f"gateway: the gateway is not running: no control socket "
                                       f"at {sock} (start it with: systemctl start gateway)\n")
    # the daemon refused: its message, exit 1
    assert run_cli(monkeypatch, acme_ep, ["acme", "-s", str(sock), "--fail", "refused"]) == 1
    assert capsys.readouterr().err == "gateway: acme is busy\n"
    # anything else is a bug: not turned into an exit code
    with pytest.raises(RuntimeError, match="acme bug"):
        run_cli(monkeypatch, acme_ep, ["acme", "-s", str(sock), "--fail", "crash"])


def test_the_daemon_options_are_the_same_for_every_command() -> None:
    parser = cli.build_parser()
    for argv in (["status"], ["zigbee", "backup"], ["pair"]):
        args = parser.parse_args(argv)
        assert args.config == cli.DEFAULT_CONFIG and args.socket is None
    assert parser.parse_args(["zigbee", "backup"]).timeout == 90.0
    assert parser.parse_args(["send", "d", "on"]).timeout == 45.0


def test_the_client_follows_socket_then_config(tmp_path: Path) -> None:
    commands = cli.Commands(argparse.ArgumentParser().add_subparsers())
    ns = argparse.Namespace
    assert commands.client(ns(socket="/x.sock", config="ignored", timeout=3.0)).socket_path == (
        "/x.sock")
    config = tmp_path / "gw.yaml"
    config.write_text(f"gateway:\n  state_dir: {tmp_path}\n")
    client = commands.client(ns(socket=None, config=str(config), timeout=4.0))
    assert (client.socket_path, client.timeout) == (str(tmp_path / "gateway.sock"), 4.0)


def test_help_is_built_without_the_heavy_modules() -> None:
    code = ("import sys; from gateway.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('pydantic', 'prometheus_client', 'aiohttp', 'yaml', "
            "'http.client', 'gateway.api.client', 'gateway.config.model', 'zigpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out == "[]\n"


def test_gateway_help_lists_every_command() -> None:
    gateway = Path(sys.executable).with_name("gateway")
    result = subprocess.run([str(gateway), "--help"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0 and result.stderr == ""
    listed = [line.split()[0] for line in result.stdout.splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == BUILT_IN_COMMANDS


# -- uplink formats -----------------------------------------------------------------------

class AcmeFormat:
    """A third-party format: one message per reading."""

    name = "acme"

    def __init__(self, gateway_id: str, prefix: str) -> None:
        self.topic = f"{prefix}/{gateway_id}/acme"

    def telemetry(self, rows: Sequence[TelemetryRow], epoch: str) -> list[tuple[str, bytes]]:
        return [(self.topic, f"{r.device} {r.metric}={r.value}".encode())
                for row in rows for r in row.readings]

    def events(self, rows: Sequence[EventRow], epoch: str) -> list[tuple[str, bytes]]:
        return []

    def status(self, online: bool) -> tuple[str, bytes]:
        return (self.topic + "/status", b"1" if online else b"0")

    def command_topics(self) -> list[str]:
        return []

    def result_topic(self) -> str:
        return self.topic + "/result"


class NotAFormat:
    def telemetry(self) -> None: ...


@pytest.fixture
def plugin_formats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed formats plus acme, a broken one and a class that is not a format."""
    real = dict(formats.PLUGINS._entry_points())
    extra = {"acme": group("acme", f"{__name__}:AcmeFormat", formats.GROUP),
             "ghost": group("ghost", "acme_missing_package:Format", formats.GROUP),
             "wrong": group("wrong", f"{__name__}:NotAFormat", formats.GROUP)}
    formats.cache_clear()
    monkeypatch.setattr(formats.PLUGINS, "_entry_points", lambda: {**real, **extra})
    yield
    monkeypatch.undo()
    formats.cache_clear()


def test_the_built_in_formats_are_entry_points() -> None:
    assert formats.available_formats() == ["json", "senml", "thingsboard"]
    eps = {ep.name: ep.value for ep in entry_points(group=formats.GROUP)}
    assert eps == {"json": "gateway.uplink.formats:JsonBatchFormat",
                   "senml": "gateway.uplink.formats:SenmlFormat",
                   "thingsboard": "gateway.uplink.formats:ThingsBoardFormat"}
    for name, cls in (("json", formats.JsonBatchFormat), ("senml", formats.SenmlFormat),
                      ("thingsboard", formats.ThingsBoardFormat)):
        made = formats.make_format(name, "pi-1", "gw")
        assert type(made) is cls and made.name == name


def test_an_unknown_format_lists_the_installed_ones() -> None:
    with pytest.raises(formats.UnknownUplinkFormat) as err:
        formats.make_format("xml", "pi-1", "gw")
    assert str(err.value) == "unknown uplink format 'xml' (installed: json, senml, thingsboard)"


def test_a_third_party_format_is_used_like_a_built_in(plugin_formats: None) -> None:
    made = formats.make_format("acme", "pi-1", "gw")
    rows = [TelemetryRow(1, [Reading("mqtt:a", "temperature", 21.5, "Cel", 1.0)])]
    assert made.telemetry(rows, "e") == [("gw/pi-1/acme", b"mqtt:a temperature=21.5")]
    assert made.status(True) == ("gw/pi-1/acme/status", b"1")


def test_a_broken_or_wrong_format_plugin_names_itself(plugin_formats: None) -> None:
    with pytest.raises(formats.UnknownUplinkFormat) as err:
        formats.format_class("ghost")
    assert str(err.value) == ("uplink format 'ghost' (acme_missing_package:Format) does not "
                              "load: ModuleNotFoundError: No module named 'acme_missing_package'")
    with pytest.raises(formats.UnknownUplinkFormat) as err:
        formats.format_class("wrong")
    assert str(err.value) == (f"entry point 'wrong' ({__name__}:NotAFormat) is not an uplink "
                              "format (no events, status, command_topics, result_topic)")


def config_problems(tmp_path: Path, fmt: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(f"gateway:\n  id: pi-1\nuplink:\n  host: cloud\n  format: {fmt}\n")
    try:
        load_config(path, env={})
    except ConfigError as exc:
        return exc.problems
    return []


def test_the_config_accepts_each_installed_format(tmp_path: Path,
                                                  plugin_formats: None) -> None:
    for name in ("json", "senml", "thingsboard", "acme"):
        assert config_problems(tmp_path, name) == []
    cfg = load_config(tmp_path / "gw.yaml", env={})
    assert cfg.uplink.format == "acme"


def test_the_config_refuses_an_unknown_format_listing_the_installed_ones(
        tmp_path: Path) -> None:
    assert config_problems(tmp_path, "xml") == [
        f"{tmp_path}/gw.yaml:5: uplink.format: expected an installed uplink format: json, "
        "senml, thingsboard (got 'xml')"]


def test_the_config_names_a_format_plugin_that_does_not_load(tmp_path: Path,
                                                             plugin_formats: None) -> None:
    assert config_problems(tmp_path, "ghost") == [
        f"{tmp_path}/gw.yaml:5: uplink.format: uplink format 'ghost' "
        "(acme_missing_package:Format) does not load: ModuleNotFoundError: No module named "
        "'acme_missing_package' (got 'ghost')"]
