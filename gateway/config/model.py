"""The whole config file, and how it is loaded and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from gateway.adapters.base import AdapterConfig
from gateway.adapters.registry import UnknownAdapterType, adapter_class
from gateway.api.config import ApiConfig
from gateway.config.secrets import ReferenceError_, resolve_references
from gateway.config.types import Section
from gateway.config.yamlmarks import Loc, Marks, YamlError, load_yaml
from gateway.core.config import DevicesSection, GatewaySection, ReadingsSection
from gateway.rules.config import FilterSpec, RuleSpec, cross_check
from gateway.store.config import StoreConfig
from gateway.uplink.config import UplinkConfig


class ConfigError(Exception):
    """A config file is unusable. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _FileModel(Section):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    store: StoreConfig = Field(default_factory=StoreConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    devices: DevicesSection = Field(default_factory=DevicesSection)
    readings: ReadingsSection = Field(default_factory=ReadingsSection)
    adapters: list[dict[str, Any]] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)
    filters: list[FilterSpec] = Field(default_factory=list)


class GatewayConfig(BaseModel):
    """The validated config: each section typed, each adapter with its own model."""

    source: str
    gateway: GatewaySection
    store: StoreConfig
    uplink: UplinkConfig
    api: ApiConfig
    devices: DevicesSection
    readings: ReadingsSection
    adapters: list[AdapterConfig]
    rules: list[RuleSpec]
    filters: list[FilterSpec]

    @property
    def state_dir(self) -> Path:
        return Path(self.gateway.state_dir)

    @property
    def outbox_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.state_dir / "outbox.db"

    @property
    def socket_path(self) -> Path:
        return Path(self.api.socket) if self.api.socket else self.state_dir / "gateway.sock"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see configs/gateway.yaml for every option)"
    if kind == "missing":
        return "required value is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("missing",) and not isinstance(err["input"], (dict, list)):
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if "password" not in msg and "secret" not in msg:
            msg += f" (got {shown})"
    return msg


def _where(marks: Marks, loc: Loc) -> str:
    pos = marks.find(loc)
    return f"{marks.file}:{pos[0]}" if pos else marks.file


def _problems(exc: ValidationError, marks: Marks, prefix: Loc = ()) -> list[str]:
    out = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        secret = any(isinstance(p, str) and ("password" in p or "token" in p) for p in loc)
        detail = _describe(err) if not secret else str(err.get("msg", "invalid value"))
        out.append(f"{_where(marks, loc)}: {_dotted(loc)}: {detail}")
    return out


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, resolve ``${...}`` references in, and validate one config file.

    Raises :class:`ConfigError` and nothing else, whatever the file holds.
    """
    try:
        return _load_config(path, env)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file must never crash the check
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError([f"{path}: cannot check this file ({type(exc).__name__}: "
                           f"{detail}); this is a gateway bug, please report it "
                           "with the file"]) from None


def _load_config(path: str | Path, env: Mapping[str, str] | None) -> GatewayConfig:
    try:
        raw, marks = load_yaml(path)
    except YamlError as exc:
        raise ConfigError([str(exc)]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}:1: (top level): expected a mapping of sections"])
    try:
        raw = resolve_references(raw, os.environ if env is None else env)
    except ReferenceError_ as exc:
        raise ConfigError([f"{_where(marks, exc.loc)}: {_dotted(exc.loc)}: {exc}"]) from None

    problems: list[str] = []
    try:
        top = _FileModel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problems(exc, marks))
        top = None
    if top is not None:
        for loc_, message in cross_check(top.rules, top.filters):
            problems.append(f"{_where(marks, loc_)}: {_dotted(loc_)}: {message}")

    adapters: list[AdapterConfig] = []
    names: dict[str, int] = {}
    sections = raw.get("adapters")
    for i, section in enumerate(sections if isinstance(sections, list) else []):
        loc: Loc = ("adapters", i)
        if not isinstance(section, dict):
            continue  # reported by the top-level model
        type_name = section.get("type")
        if not isinstance(type_name, str):
            problems.append(f"{_where(marks, loc)}: {_dotted((*loc, 'type'))}: "
                            "required value is missing (the adapter type, e.g. mqtt)")
            continue
        try:
            cls = adapter_class(type_name)
        except UnknownAdapterType as exc:
            problems.append(f"{_where(marks, (*loc, 'type'))}: {_dotted((*loc, 'type'))}: {exc}")
            continue
        try:
            cfg = cls.Config.model_validate(section)
        except ValidationError as exc:
            problems.extend(_problems(exc, marks, loc))
            continue
        if not cfg.name:
            cfg = cfg.model_copy(update={"name": type_name})
        if cfg.name in names:
            problems.append(f"{_where(marks, (*loc, 'name'))}: {_dotted((*loc, 'name'))}: "
                            f"adapter name {cfg.name!r} already used by adapters[{names[cfg.name]}]"
                            "; give each instance its own name")
            continue
        names[cfg.name] = i
        adapters.append(cfg)

    if problems or top is None:
        raise ConfigError(problems)
    return GatewayConfig(
        source=str(path),
        gateway=top.gateway,
        store=top.store,
        uplink=top.uplink,
        api=top.api,
        devices=top.devices,
        readings=top.readings,
        adapters=adapters,
        rules=top.rules,
        filters=top.filters,
    )
