"""The whole config file, and how it is loaded and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo

from gateway.adapters.base import AdapterConfig
from gateway.adapters.registry import UnknownAdapterType, adapter_class
from gateway.api.config import ApiConfig
from gateway.config.secrets import ReferenceError_, resolve_references
from gateway.config.types import (
    MAX_DURATION,
    MAX_LONG_DURATION,
    MAX_SIZE,
    Section,
    format_seconds,
    parse_duration,
    parse_long_duration,
    parse_size,
)
from gateway.config.yamlmarks import Loc, Marks, YamlError, dotted, load_yaml
from gateway.core.config import DevicesSection, GatewaySection, ReadingsSection
from gateway.history.config import HistoryConfig
from gateway.homeassistant.config import (
    HomeAssistantConfig,
    resolve_broker,
    state_prefix_overlaps,
)
from gateway.rules.config import FilterSpec, HealthSection, RuleSpec, cross_check
from gateway.store.config import StoreConfig
from gateway.uplink.config import UplinkConfig


class ConfigError(Exception):
    """A config file is unusable. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        # one line each, even when a key or value of the file holds a line break
        problems = [" ".join(p.splitlines()) for p in problems]
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
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    health: HealthSection = Field(default_factory=HealthSection)
    history: HistoryConfig = Field(default_factory=HistoryConfig)


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
    health: HealthSection = Field(default_factory=HealthSection)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.gateway.state_dir)

    @property
    def outbox_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.state_dir / "outbox.db"

    @property
    def socket_path(self) -> Path:
        return Path(self.api.socket) if self.api.socket else self.state_dir / "gateway.sock"


_dotted = dotted


def _shown(value: Any) -> str:
    """``repr`` of a value the file gave, short; never fails (a 5,000-digit integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of {int(value.bit_length() * 0.30103) + 1} digits"
    shown = " ".join(repr(value).split())
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _unwrap(tp: Any, meta: list[Any]) -> Any:
    """Strip ``Annotated`` (collecting its metadata) and ``X | None`` from a type."""
    while True:
        if get_origin(tp) is Annotated:
            for extra in get_args(tp)[1:]:
                meta.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return tp
            tp = options[0]
        else:
            return tp


def _constraints(model: type[BaseModel], loc: Loc) -> tuple[Any, list[Any]] | None:
    """The type and metadata (bounds, validators) of the value at ``loc``, if known."""
    tp: Any = model
    meta: list[Any] = []
    for part in loc:
        tp = _unwrap(tp, meta)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = tp.model_fields
            field = fields.get(str(part)) or next(
                (f for f in fields.values() if f.alias == part), None)
            if field is None:
                return None
            tp, meta = field.annotation, list(field.metadata)
        elif get_origin(tp) is list and isinstance(part, int):
            tp, meta = get_args(tp)[0], []
        elif get_origin(tp) is dict and isinstance(part, str):
            tp, meta = get_args(tp)[1], []
        else:
            return None
    return _unwrap(tp, meta), meta


def _show_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show_duration(value: float) -> str:
    return format_seconds(value) if value else "0"


def _show_size(value: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size:.0f}{unit}"
    return _show_number(value)


def _range(tp: Any, meta: list[Any]) -> str | None:
    """``expected a duration from 0 to 10m``: what a bounded value may be, or None."""
    parsers = {getattr(m, "func", None) for m in meta if isinstance(m, BeforeValidator)}
    noun, show, top = "a number", _show_number, None
    if parsers & {parse_duration, parse_long_duration}:
        noun, show = "a duration", _show_duration
        top = MAX_LONG_DURATION if parse_long_duration in parsers else MAX_DURATION
    elif parse_size in parsers:
        noun, show, top = "a size", _show_size, MAX_SIZE
    elif tp is int:
        noun = "an integer"
    lo: tuple[str, float] | None = None
    hi: tuple[str, float] | None = None
    for m in meta:
        for attr in ("ge", "gt", "le", "lt"):
            value = getattr(m, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if attr in ("ge", "gt"):
                    lo = (attr, value)
                else:
                    hi = (attr, value)
    if tp is int or parse_size in parsers:  # whole numbers: "greater than 0" is "from 1"
        if lo is not None and lo[0] == "gt" and isinstance(lo[1], int):
            lo = ("ge", lo[1] + 1)
        if hi is not None and hi[0] == "lt" and isinstance(hi[1], int):
            hi = ("le", hi[1] - 1)
    if hi is None and top is not None:
        hi = ("le", top)
    if lo is None and top is not None:
        lo = ("ge", 0)
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None and lo[0] == "ge" and hi[0] == "le":
        return f"expected {noun} from {show(lo[1])} to {show(hi[1])}"
    parts = []
    if lo is not None:
        parts.append(f"at least {show(lo[1])}" if lo[0] == "ge" else
                     f"greater than {show(lo[1])}")
    if hi is not None:
        parts.append(f"at most {show(hi[1])}" if hi[0] == "le" else f"below {show(hi[1])}")
    return f"expected {noun} {' and '.join(parts)}"


#: pydantic error kinds (and our types' messages) that are about a value's range
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "int_parsing_size", "finite_number"}
_RANGE_MESSAGES = ("expected a duration from", "expected a size from")


def _numeric(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _about_range(kind: str, msg: str, value: Any) -> bool:
    return (kind in _RANGE_ERRORS or msg.startswith(_RANGE_MESSAGES)
            or (kind == "int_parsing" and isinstance(value, str) and _numeric(value)))


def _describe(err: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = err.get("input")
    if model is not None and _about_range(kind, msg, value):
        # say the whole range the option takes, in the units the file would use
        found = _constraints(model, tuple(err["loc"]))
        expected = _range(*found) if found is not None else None
        if expected:
            msg = expected
            if (kind in _RANGE_ERRORS and isinstance(value, (int, float))
                    and -1e15 < value < 1e15):
                if expected.startswith("expected a duration"):
                    return f"{msg} (got {_show_duration(value)})"
                if expected.startswith("expected a size"):
                    return f"{msg} (got {_show_size(value)})"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see configs/gateway.yaml for every option)"
    if kind == "missing":
        return "required value is missing"
    if "input" in err and kind not in ("missing",) and not isinstance(err["input"], (dict, list)):
        shown = _shown(err["input"])
        if "password" not in msg and "secret" not in msg:
            msg += f" (got {shown})"
    return msg


def _where(marks: Marks, loc: Loc) -> str:
    pos = marks.find(loc)
    return f"{marks.file}:{pos[0]}" if pos else marks.file


def _problems(exc: ValidationError, marks: Marks, prefix: Loc = (),
              model: type[BaseModel] | None = None) -> list[str]:
    out = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        secret = any(isinstance(p, str) and ("password" in p or "token" in p) for p in loc)
        detail = _describe(err, model) if not secret else str(err.get("msg", "invalid value"))
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
        problems.extend(_problems(exc, marks, model=_FileModel))
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
            problems.extend(_problems(exc, marks, loc, cls.Config))
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

    if top is not None and top.homeassistant.enabled:
        broker = resolve_broker(top.homeassistant, adapters)
        if isinstance(broker, str):
            problems.append(f"{_where(marks, ('homeassistant',))}: {broker}")
        else:  # the bridge's own topics must not come back in through an mqtt adapter
            ha_loc: Loc = ("homeassistant", "state_prefix") \
                if top.homeassistant.state_prefix else ("homeassistant",)
            for message in state_prefix_overlaps(top.homeassistant, top.gateway.id, broker,
                                                 adapters):
                problems.append(f"{_where(marks, ha_loc)}: homeassistant.state_prefix: "
                                f"{message}")
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
        health=top.health,
        homeassistant=top.homeassistant,
        history=top.history,
    )
