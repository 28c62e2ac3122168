"""Payloads: every format the gateway reads, metric naming and the unit table, in one place.

Adapters move bytes; this package turns them into readings, the same way whatever
adapter carries them. See README.md in this folder for the formats and the table of
canonical metric names.
"""

from gateway.payloads.base import FieldSpec, Format, Options, Source
from gateway.payloads.errors import REASONS, DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.registry import UnknownFormat, available, format_class

__all__ = ["REASONS", "DecodeError", "FieldSpec", "Format", "Options", "Source",
           "UnknownFormat", "available", "format_class", "metric_name"]
