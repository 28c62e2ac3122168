"""The one error every payload format raises, and the bounded set of reasons it carries."""

from __future__ import annotations

#: every reason a :class:`DecodeError` may carry: each is a metric label, so the set is
#: closed; a plugin format uses these too (``bad_shape`` for "not what the format expects")
REASONS = frozenset({
    "bad_json",     # not valid JSON (or a NaN/Infinity constant)
    "bad_cbor",     # not valid CBOR
    "bad_senml",    # a SenML pack that breaks RFC 8428
    "bad_shape",    # valid JSON/CBOR, but not the structure the format reads
    "bad_name",     # a field or record name that gives no usable metric name
    "bad_value",    # a value of the wrong type, out of range, or an invalid marker
    "bad_unit",     # a unit that is neither a SenML name nor a known alias
    "bad_time",     # a timestamp that is not a time
    "bad_text",     # a text payload that is not UTF-8 or not the expected value
    "bad_frame",    # a binary frame (Cayenne LPP, ...) that is truncated or too long
    "bad_format",   # a content format or format name the gateway does not decode
    "no_values",    # nothing in the payload becomes a reading
    "no_metric",    # a bare value with no metric name configured
    "no_device",    # no usable device id in the topic, path or payload
})


class DecodeError(ValueError):
    """A payload that cannot be turned into readings.

    ``reason`` is one of :data:`REASONS` (a metric label); the message is for the
    device's owner: what was wrong, short enough for one log line.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            message = f"{message} [{reason}]"
            reason = "bad_shape"
        super().__init__(message)
        self.reason = reason
