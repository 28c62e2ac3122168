"""The format contract: what a payload format is given, and what it returns.

A format turns the bytes of one message (an MQTT payload, a CoAP body, a LoRaWAN frame)
into :class:`~gateway.reading.Reading` s. Formats are plugins: each registers under the
``gateway.decoders`` entry-point group (see :mod:`gateway.payloads.registry`) and a
subscription picks one with ``format:``. A format instance is built once per
subscription or resource, from its :class:`Options`, and then decodes every message
that arrives there, so it may cache what it learns (unit lookups, paths, device lists).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, field_validator

from gateway.config.types import Section
from gateway.payloads.units import check_optional
from gateway.reading import Reading

_METRIC = re.compile(r"^[a-z][a-z0-9_]*$")


def check_metric(v: str | None) -> str | None:
    """Config validator: a metric name written by hand must already be canonical."""
    if v is not None and not _METRIC.match(v):
        raise ValueError("expected a snake_case metric name such as temperature or co2_ppm")
    return v


class FieldSpec(Section):
    """How one field of an object becomes a reading: its metric name, unit and scaling."""

    metric: str | None = Field(default=None, description="defaults to the path's metric name")
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    _check_unit = field_validator("unit")(check_optional)
    _check_metric = field_validator("metric")(check_metric)


class Options(Section):
    """What a format may be told besides the payload; every key is optional.

    The MQTT adapter's subscriptions extend this model, so these keys are the ones a
    user writes beside ``format:``. A format reads the keys it understands and names
    those it does not in :meth:`Format.check`.
    """

    #: fixed metric for a bare value when the topic has no {metric}
    metric: str | None = None
    #: unit of a bare value
    unit: str | None = None
    #: unit per metric name, when the payload does not say
    units: dict[str, str] = Field(default_factory=dict)
    #: objects: dotted path → metric/unit/scale; only these fields unless include_unmapped
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    include_unmapped: bool | None = None
    #: dotted path of a device timestamp (UNIX seconds or milliseconds, or ISO 8601)
    timestamp: str | None = None
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    #: dotted path of the device id when the topic has no {device}
    device_field: str | None = None
    #: a bare value: what it may be
    value_type: Literal["auto", "number", "bool", "string"] = "auto"

    _check_unit = field_validator("unit")(check_optional)
    _check_metric = field_validator("metric")(check_metric)

    @field_validator("units")
    @classmethod
    def _check_units(cls, v: dict[str, str]) -> dict[str, str]:
        for metric, unit in v.items():
            check_metric(metric)
            check_optional(unit)
        return v


class Source(NamedTuple):
    """Where a payload came from: the adapter, and the device if the transport names it.

    ``prefix`` is the adapter instance's name; device ids are ``<prefix>:<native id>``.
    ``native`` is the device's native id when the topic or path carries it (``None``
    when the payload must name its devices). ``topic`` is the MQTT topic or CoAP path,
    ``slots`` its placeholder values (``{metric}``, ``{component}``...).
    """

    prefix: str
    native: str | None = None
    topic: str = ""
    slots: Mapping[str, str] = {}

    @property
    def device(self) -> str | None:
        """The gateway-wide id of the device the transport names, or None."""
        return None if self.native is None else f"{self.prefix}:{self.native}"


class Format:
    """Base of every payload format; subclasses set :attr:`name` and :meth:`decode`."""

    #: what ``format:`` says to pick this format (the entry point's name)
    name: ClassVar[str] = ""
    #: CoAP Content-Format numbers this format reads (RFC 7252 registry), if any
    content_formats: ClassVar[tuple[int, ...]] = ()
    #: whether a payload can name its own devices (SenML ``bn``, a ``device_field``...)
    names_devices: ClassVar[bool] = False

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else Options()

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        """Raise ValueError when ``options`` or the topic's placeholders cannot work.

        ``topic_names`` are the placeholders of the subscription's topic (``device``,
        ``metric``...); empty where the transport has no topic. The default wants a
        ``{device}`` unless the format names devices itself, and no ``fields:``.
        """
        if "device" not in topic_names and not cls.names_devices:
            raise ValueError(f"format: {cls.name} needs {{device}} in the topic")
        if options.fields:
            raise ValueError(f"fields: does not apply to format: {cls.name}")
        if "metric" in topic_names:
            raise ValueError("{metric} in the topic only works with format: value")

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        """The readings of one payload; raise DecodeError (and only that) when it has none.

        ``now`` is the receive time (UNIX seconds), for readings the device sends no
        time for.
        """
        raise NotImplementedError

    def companions(self, topic: str) -> Sequence[str]:
        """Topics (MQTT, no wildcards) this format also wants, for a subscription on ``topic``.

        Zigbee2MQTT's retained ``bridge/devices`` list, for instance: the adapter
        subscribes to them and hands their payloads to :meth:`learn`.
        """
        return ()

    def learn(self, topic: str, payload: bytes) -> int:
        """Read a companion topic's payload; the number of devices learned (DecodeError)."""
        return 0

    def described(self) -> Mapping[str, Mapping[str, str]]:
        """What the companion topics said of each device: native id → registry fields
        (``model``, ``manufacturer``, ``description``...), for the device registry."""
        return {}
