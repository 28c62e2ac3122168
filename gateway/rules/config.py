"""The ``rules:`` and ``filters:`` sections, validated (and conditions compiled) at load.

A condition or template that does not parse is a validation error of its own key, so
``gateway check`` prints ``file:line: rules[2].when: rule 'freezer_warm': ... at
position 14 of '...'``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from gateway.config.types import Duration, Section
from gateway.rules.expr import ExprSyntaxError, compile_expr, compile_template

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _yaml_word(value: Any) -> Any:
    # YAML 1.1 reads a bare on/off/yes/no as a boolean; an action name means the word
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


def _patterns(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Patterns = Annotated[list[str], BeforeValidator(_patterns)]
"""One glob (``sim:*``) or a list of them."""


def _rule_label(info: ValidationInfo) -> str:
    name = info.data.get("name") if info.data else None
    return f"rule {name!r}: " if name else ""


def check_condition(text: str, info: ValidationInfo) -> str:
    try:
        compile_expr(text)
    except ExprSyntaxError as exc:
        raise ValueError(f"{_rule_label(info)}{exc.detail} at position {exc.pos + 1}") from None
    except RecursionError:
        raise ValueError(f"{_rule_label(info)}nested too deeply") from None
    except ValueError as exc:  # a duration literal out of range, e.g. rate(x, 99999d)
        raise ValueError(f"{_rule_label(info)}{exc}") from None
    return text


def check_template(text: str, info: ValidationInfo) -> str:
    try:
        compile_template(text)
    except ExprSyntaxError as exc:
        raise ValueError(f"{_rule_label(info)}template: {exc.detail} at position "
                         f"{exc.pos + 1}") from None
    except RecursionError:
        raise ValueError(f"{_rule_label(info)}template: nested too deeply") from None
    return text


class AlertAction(Section):
    """Queue an alert event (ahead of telemetry), log it and count it."""

    severity: Literal["info", "warning", "critical"] = "warning"
    message: str

    _check = field_validator("message")(check_template)


class CommandAction(Section):
    """Send a command to a device through the adapter that owns it."""

    device: str | None = Field(default=None, description="template; default: the device")
    action: Annotated[str, BeforeValidator(_yaml_word)]
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_template(v, info)


class PublishAction(Section):
    """Publish to a local MQTT topic through a running adapter that can publish."""

    topic: str
    payload: str | None = Field(default=None, description="template; default: JSON of the event")
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = False
    adapter: str | None = Field(default=None, description="adapter name; default: the first "
                                                          "running adapter that can publish")

    @field_validator("topic", "payload")
    @classmethod
    def _templates(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_template(v, info)


class SetAction(Section):
    """Derive a reading (e.g. dew point) and feed it through the pipeline."""

    metric: str
    value: str = Field(description="expression")
    unit: str | None = None
    device: str | None = Field(default=None, description="template; default: the device")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not _METRIC.match(v):
            raise ValueError("expected a snake_case metric name such as dew_point")
        return v

    _value = field_validator("value")(check_condition)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_template(v, info)


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


class WebhookAction(Section):
    """POST the event as JSON to an HTTP(S) endpoint, with bounded retries."""

    url: str = Field(description="http:// or https:// URL")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="extra request headers (secrets: ${ENV_VAR})")
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str | None = Field(default=None, description="template; default: what fired, "
                                                          "where, and the value")
    timeout: Duration = Field(default=5.0, gt=0, le=60, description="per attempt")
    retries: int = Field(default=3, ge=0, le=10, description="further attempts after a "
                                                           "failed one")
    backoff: Duration = Field(default=1.0, ge=0, le=60,
                              description="first delay between attempts; doubles, jittered")
    backoff_max: Duration = Field(default=10.0, ge=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError("expected an http:// or https:// URL without spaces")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"expected an http:// or https:// URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL (got scheme "
                             f"{parts.scheme or 'none'!r})")
        if not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host, e.g. "
                             "https://hooks.example.com/gateway")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: a value cannot hold a line break")
        return v

    @field_validator("message")
    @classmethod
    def _message(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_template(v, info)

    @property
    def bound(self) -> float:
        """The longest the action can take: every attempt timing out, every delay at most."""
        delays = sum(min(self.backoff_max, self.backoff * 2.0 ** i) for i in range(self.retries))
        return float(self.timeout * (self.retries + 1) + delays)


_KINDS = ("alert", "command", "publish", "set", "webhook")


class ActionSpec(Section):
    """One action: exactly one of ``alert``, ``command``, ``publish``, ``set``, ``webhook``."""

    alert: AlertAction | None = None
    command: CommandAction | None = None
    publish: PublishAction | None = None
    set: SetAction | None = None
    webhook: WebhookAction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionSpec:
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("each action is exactly one of alert, command, publish, set or "
                             "webhook" + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def kind(self) -> str:
        for k in _KINDS:
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated action without a kind")  # pragma: no cover


class RuleSpec(Section):
    """One rule: when ``when`` holds (for ``for``), run ``actions``; see rules/README.md."""

    name: str
    enabled: bool = True
    device: Patterns = Field(default_factory=lambda: ["*"])
    metric: Patterns | None = Field(
        default=None, description="metrics that trigger evaluation; default: those "
                                  "the condition names")
    when: str
    for_: Duration = Field(default=0.0, ge=0, alias="for")
    clear: str | None = None
    cooldown: Duration = Field(default=0.0, ge=0)
    mode: Literal["edge", "level"] = "edge"
    actions: list[ActionSpec] = Field(min_length=1)
    on_clear: list[ActionSpec] = Field(default_factory=list)

    model_config = {**Section.model_config, "populate_by_name": True}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("expected 1-64 letters, digits, '_', '.' or '-'")
        return v

    @field_validator("when", "clear")
    @classmethod
    def _condition(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_condition(v, info)

    @model_validator(mode="after")
    def _health(self) -> RuleSpec:
        conds = [compile_expr(self.when)] + ([compile_expr(self.clear)] if self.clear else [])
        if not any(p.gateway for p in conds):
            return self
        # a health rule: evaluated for the gateway itself, once a second
        where = f"rule {self.name!r}: "
        metrics = sorted({m for p in conds for m in p.metrics})
        if metrics:
            raise ValueError(f"{where}a condition on gateway.* facts is evaluated for the "
                             "gateway itself once a second, which has no device metrics "
                             f"({', '.join(metrics)}); write two rules")
        if self.metric is not None or self.device != ["*"]:
            raise ValueError(f"{where}a condition on gateway.* facts is evaluated for the "
                             "gateway itself: remove device: and metric:")
        return self


class HealthSection(Section):
    """Where the gateway's own health facts (``gateway.*`` in rules) are read from."""

    disk_path: str | None = Field(default=None, description="directory whose file system "
                                  "gateway.free_bytes/free_percent measure; default: "
                                  "gateway.state_dir")
    thermal_path: str = Field(default="/sys/class/thermal/thermal_zone0/temp",
                              description="millidegrees Celsius (gateway.cpu_temp)")
    throttled_path: str = Field(default="/sys/devices/platform/soc/soc:firmware/get_throttled",
                                description="the firmware's get_throttled flags, hex "
                                "(gateway.undervoltage, gateway.throttled...)")

    @field_validator("disk_path", "thermal_path", "throttled_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError("expected a file system path")
        return v


def _deadband(value: Any) -> Any:
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$", value)
        if not m:
            raise ValueError("expected an absolute deadband (0.5) or a percentage (\"2%\")")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an absolute deadband (0.5) or a percentage (\"2%\")")
    if value < 0:
        raise ValueError("a deadband cannot be negative")
    return str(value)


AggregateFn = Literal["avg", "min", "max", "count", "sum", "last"]


def _default_functions() -> list[AggregateFn]:
    return ["avg", "min", "max"]


class AggregateSpec(Section):
    """Send one value per function per window instead of raw values."""

    window: Duration = Field(gt=0)
    functions: list[AggregateFn] = Field(default_factory=_default_functions, min_length=1)


class FilterSpec(Section):
    """Decides what reaches the outbox for matching series; the first match applies."""

    name: str | None = None
    device: Patterns = Field(default_factory=lambda: ["*"])
    metric: Patterns = Field(default_factory=lambda: ["*"])
    drop: bool = False
    deadband: Annotated[str | None, BeforeValidator(_deadband)] = None
    min_interval: Duration = Field(default=0.0, ge=0)
    sample: int = Field(default=1, ge=1, le=1_000_000, description="keep one reading in N")
    heartbeat: Duration = Field(default=0.0, ge=0,
                                description="send anyway when nothing was sent for this long")
    aggregate: AggregateSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FilterSpec:
        reducers = self.deadband is not None or self.min_interval or self.sample > 1 \
            or self.heartbeat
        if self.drop and (reducers or self.aggregate):
            raise ValueError("drop: true sends nothing; remove the other options or drop")
        if self.aggregate and reducers:
            raise ValueError("aggregate replaces raw values: deadband, min_interval, sample "
                             "and heartbeat do not combine with it")
        return self

    @property
    def deadband_value(self) -> tuple[float, bool] | None:
        """``(amount, is_percent)`` or None."""
        if self.deadband is None:
            return None
        pct = self.deadband.endswith("%")
        return float(self.deadband.rstrip("%").strip()), pct


def cross_check(rules: list[RuleSpec], filters: list[FilterSpec]) -> list[tuple[tuple[str | int,
                                                                                       ...], str]]:
    """Problems spanning several entries (duplicate names); ``(key path, message)`` each."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            out.append((("rules", i, "name"), f"rule name {rule.name!r} already used by "
                        f"rules[{seen[rule.name]}]; rule state is kept by name"))
        else:
            seen[rule.name] = i
    names: dict[str, int] = {}
    for i, f in enumerate(filters):
        if f.name is None:
            continue
        if f.name in names:
            out.append((("filters", i, "name"), f"filter name {f.name!r} already used by "
                        f"filters[{names[f.name]}]"))
        else:
            names[f.name] = i
    return out
