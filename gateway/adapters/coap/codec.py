"""CoAP bodies ↔ the payload formats: which Content-Format is which format, and commands.

Content formats (CoAP Content-Format numbers) and the payload format that reads each
(gateway/payloads/README.md has the details):

- 0 ``text/plain``: format ``value``, one bare number or ``true``/``false`` (only where
  the resource's metric is configured).
- 50 ``application/json`` and 60 ``application/cbor``: formats ``json`` and ``cbor``, an
  object of metric → value or a list of them; ``ts`` is the device time.
- 110 ``application/senml+json`` and 112 ``application/senml+cbor``: SenML packs
  (RFC 8428); posted to the bare path, their base names name the devices.

A body that cannot be decoded raises :class:`~gateway.payloads.DecodeError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import cbor2

from gateway.adapters.coap.config import NATIVE_ID
from gateway.payloads import DecodeError, Format, Options, Source
from gateway.payloads.registry import by_content_format
from gateway.reading import Reading

TEXT, JSON, CBOR, SENML_JSON, SENML_CBOR = 0, 50, 60, 110, 112
#: content formats devices may post readings in
READING_FORMATS = (JSON, CBOR, SENML_JSON, SENML_CBOR)
#: formats whose records can name their devices (base name)
SENML_FORMATS = (SENML_JSON, SENML_CBOR)
FORMAT_NUMBERS = {"text": TEXT, "json": JSON, "cbor": CBOR, "senml+json": SENML_JSON,
                  "senml+cbor": SENML_CBOR}
#: the object formats read the device's time from this key
TIME_KEY = "ts"

_formats: dict[tuple[int, str | None, str | None], Format] = {}


def _format(content_format: int, metric: str | None = None, unit: str | None = None) -> Format:
    key = (content_format, metric, unit)
    fmt = _formats.get(key)
    if fmt is None:
        # the format that declares the content format (Format.content_formats)
        cls = by_content_format(content_format)
        if cls is None:
            raise DecodeError("bad_format", f"content format {content_format} is not supported")
        options = (Options(metric=metric, unit=unit) if content_format == TEXT
                   else Options(timestamp=TIME_KEY))
        fmt = cls(options)
        if len(_formats) < 1024:  # resources are configured: a handful of keys
            _formats[key] = fmt
    return fmt


def decode(content_format: int, payload: bytes, device: str, now: float,
           metric: str | None = None, unit: str | None = None) -> list[Reading]:
    """Readings of ``device`` in ``payload``; ``metric``/``unit`` name a text/plain value."""
    if content_format == TEXT and metric is None:
        raise DecodeError("no_metric", "a text/plain value needs the resource's metric "
                          "configured")
    prefix, native = device.split(":", 1)
    return _format(content_format, metric, unit).decode(
        payload, Source(prefix, native, "", {"metric": metric} if metric else {}), now)


def decode_pack(content_format: int, payload: bytes, prefix: str, now: float) -> list[Reading]:
    """Readings of a SenML pack whose base names name the devices (``<prefix>:<bn>``)."""
    if content_format not in SENML_FORMATS:
        raise DecodeError("bad_format", "only SenML packs name their devices")
    readings = _format(content_format).decode(payload, Source(prefix), now)
    checked: set[str] = set()
    for r in readings:
        if r.device not in checked:
            if not NATIVE_ID.match(r.device.split(":", 1)[1]):
                raise DecodeError("no_device", "the base name (bn) must name the device "
                                  "(letters, digits, '_', '.', ':' or '-'), or post to "
                                  "/<path>/<device id>")
            checked.add(r.device)
    return readings


def encode(fmt: str, params: Mapping[str, Any]) -> tuple[int, bytes]:
    """A command's params as a request body: (content format, payload)."""
    if fmt == "cbor":
        return CBOR, cbor2.dumps(dict(params))
    if fmt == "json":
        return JSON, json.dumps(dict(params), separators=(",", ":")).encode()
    if fmt == "text":
        if len(params) != 1:
            raise ValueError("a text command takes exactly one param (its value)")
        (value,) = params.values()
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return TEXT, text.encode()
    raise ValueError(f"commands cannot be sent as {fmt}; use json, cbor or text")
