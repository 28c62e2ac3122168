"""Garbage that devices send: MQTT payloads and CoAP datagrams, reproducible from a seed.

One :class:`Garbage` generator per run (``random.Random(seed)`` inside, nothing else
random), so a failing run can be replayed exactly. It makes what broken firmware, a
confused integrator or a hostile host on the device network would send:

- MQTT (for a daemon subscribed with :data:`TOPICS`): random bytes, truncated and odd
  JSON, JSON nested 5,000 levels deep, numbers too large for a float (``1e400``,
  ``10**400``), ``NaN``/``Infinity`` literals, wrong types, strings of 100 KB (past
  ``max_payload``) and of 60 KB (just under it), thousands of invented keys, thousands
  of invented device ids (each used once) next to a few noisy devices that send
  everything, readings that decode but cannot be stored (timestamps out of the window,
  long names), zigbee2mqtt device lists of garbage, and the poison SenML pack
  :data:`POISON_SENML` whose time is infinite.
- CoAP: raw datagrams (random bytes, truncated headers, reserved token lengths and
  codes, malformed and unknown critical options, Block1 with block number 1000 and the
  reserved SZX 7, Size1 past any bound) and well-formed requests with bad bodies (JSON,
  CBOR and SenML-CBOR that do not decode or do not make readings: ``{"t": 10**400}``,
  bignums, deep nesting, unknown content formats, wrong methods and paths).

Every item carries its ``kind`` (what was made) and ``source`` (the device id, or the
raw socket it goes out of), so a test can say how many distinct sources it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the subscriptions the garbage is made for, one per MQTT payload format
TOPICS = {
    "json": "fz/json/{device}",
    "value": "fz/value/{device}/{metric}",
    "senml": "fz/senml/{device}",
    "zigbee2mqtt": "fz/z2m/{device}",
}
#: zigbee2mqtt's device list next to the zigbee2mqtt subscription (the adapter reads it)
BRIDGE_TOPIC = "fz/z2m/bridge/devices"
#: a SenML pack whose time (bt + t) overflows to infinity: must never reach the outbox
POISON_SENML = b'[{"bn":"d:","bt":1e308,"t":1e308,"n":"x","v":1}]'

#: CoAP option numbers (RFC 7252, 7959)
_URI_PATH, _CONTENT_FORMAT, _BLOCK1, _SIZE1 = 11, 12, 27, 60
#: CoAP content formats
JSON, CBOR, SENML_JSON, SENML_CBOR = 50, 60, 110, 112
POST, PUT, GET, DELETE = 2, 3, 1, 4


@dataclass(frozen=True)
class MqttItem:
    """One MQTT publish: where, what, how."""

    kind: str
    topic: str
    payload: bytes
    qos: int
    source: str


@dataclass(frozen=True)
class CoapItem:
    """One CoAP datagram: ``raw`` bytes as they go on the wire, or a request for a real
    CoAP client (``code``, ``path`` segments, ``content_format``, ``payload``)."""

    kind: str
    source: str
    raw: bytes | None = None
    #: which of the flood's raw sockets sends ``raw``
    sock: int = 0
    code: int = POST
    path: tuple[str, ...] = ()
    content_format: int | None = None
    payload: bytes = b""


# -- CBOR, written by hand: the garbage must include what an encoder refuses to make ------


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("CBOR heads take at most 64-bit arguments")


def cbor(value: object) -> bytes:
    """Canonical-enough CBOR of ints (any size: bignum tags), floats, text, bytes, bools,
    None, lists and dicts."""
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        if 0 <= value < 1 << 64:
            return _cbor_head(0, value)
        if -(1 << 64) <= value < 0:
            return _cbor_head(1, -1 - value)
        tag, n = (2, value) if value > 0 else (3, -1 - value)
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return _cbor_head(6, tag) + _cbor_head(2, len(raw)) + raw
    if isinstance(value, float):
        import struct

        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return _cbor_head(3, len(data)) + data
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, (list, tuple)):
        return _cbor_head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        return _cbor_head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(f"no CBOR for {type(value).__name__}")


def _coap_option(delta: int, value: bytes) -> bytes:
    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, (n - 269).to_bytes(2, "big")

    d, dx = nibble(delta)
    ln, lx = nibble(len(value))
    return bytes([d << 4 | ln]) + dx + lx + value


def coap_message(code: int, mid: int, token: bytes, options: list[tuple[int, bytes]],
                 payload: bytes = b"", mtype: int = 0) -> bytes:
    """A CoAP datagram (RFC 7252 section 3) with ``options`` as (number, value) pairs."""
    out = bytearray([0x40 | mtype << 4 | len(token), code])
    out += mid.to_bytes(2, "big") + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        out += _coap_option(number - last, value)
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def _uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""


class Garbage:
    """The generator: call :meth:`mqtt` and :meth:`coap` for one item each."""

    def __init__(self, seed: int, noisy: int = 16, invented_share: float = 0.3) -> None:
        self.rnd = random.Random(seed)
        self.noisy = [f"fz-noisy-{i:02d}" for i in range(noisy)]
        self.invented_share = invented_share
        self._invented = 0
        self._mids: dict[int, int] = {}

    # -- shared pieces ------------------------------------------------------------------

    def _text(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rnd.choices(alphabet, k=n))

    def _new_id(self, control: bool) -> str:
        """A device id never used before by this generator (a share of them unusable);
        ``control``: some with line breaks (mosquitto refuses those in topic names)."""
        self._invented += 1
        n = self._invented
        r = self.rnd.random()
        if r < 0.6:
            return f"fz-{self._text(6).lower()}-{n}"
        if r < 0.75:
            return f"Fz_{self._text(3)}.{n}"
        if r < 0.85:
            return f"fz-é-ü-{n}-\u202e\u00a0"  # accents, a right-to-left override, a nbsp
        if r < 0.93:
            return f"fz-{n}-" + "x" * self.rnd.randint(130, 400)  # past every id bound
        if r < 0.97 or not control:
            return f"fz {n} with spaces"
        # line breaks: a device id must not be able to write lines of its own into the log
        return self.rnd.choice([f"fz-{n}\nINJECTED line", f"fz-{n}\r\nINJECTED", f"fz-{n}\t"])

    def device(self, control: bool = False) -> str:
        """A noisy device (most garbage) or a device invented for this one message."""
        if self.rnd.random() < self.invented_share:
            return self._new_id(control)
        return self.rnd.choice(self.noisy)

    def _number_text(self) -> str:
        return self.rnd.choice([
            "1e400", "-1e400", "1e-400", "1" + "0" * 400, "-" + "9" * 500, "NaN", "Infinity",
            "-Infinity", "0x10", "1_000", "+1", "01", ".5", "5.", "1e", "--1", "1.0e+308",
            "2e308", "4.9e-324", "9007199254740993", str(2**64), str(-(2**63) - 1)])

    def _odd_json(self) -> bytes:
        r = self.rnd.random()
        if r < 0.2:
            good = json.dumps({"temperature": 21.5, "humidity": 40, "ts": 1.7e9,
                               "nested": {"a": [1, 2, {"b": None}]}})
            return good[: self.rnd.randint(0, len(good) - 1)].encode()  # truncated
        if r < 0.4:
            return self.rnd.choice([
                b'{"a":}', b'{"a":1,}', b"{'a': 1}", b'{"a":1 /* c */}', b'\xef\xbb\xbf{"a":1}',
                b'{"a":1}{"b":2}', b'{"a":1} trailing', b'{"a" 1}', b'{a:1}', b'[1,2,]',
                b'{"a":1,"a":"x","a":null}', b'{"\\ud800":1}', b'{"a":"\\x00"}', b'{"a":tru}',
                b"\x00", b"", b"   ", b"null", b'"just a string"', b"[]", b"{}", b"[[]]",
                b'{"":1}', b'{"a":1e}', b'{"a":.5}', b'{"a":-}', b'{"a":01}'])
        if r < 0.55:
            return f'{{"temperature": {self._number_text()}, "ts": {self._number_text()}}}'.encode()
        if r < 0.7:
            depth = self.rnd.choice([5000, 5000, 2000, 100_000 // 4])
            opener = self.rnd.choice(["[", '{"a":', '[{"a":'])
            closer = {"[": "]", '{"a":': "}", '[{"a":': "}]"}[opener]
            body = opener * depth + ("1" + closer * depth if self.rnd.random() < 0.5 else "")
            return body.encode()
        if r < 0.85:
            return self.rnd.choice([b"[1, 2, 3]", b"42", b"true", b"null", b'"21.5"',
                                    b'[{"temperature": 1}]', b'{"temperature": [1, 2]}',
                                    b'{"temperature": {"v": "x"}}', b'{"ts": {"a": 1}}',
                                    b'{"temperature": null, "humidity": "40"}'])
        return bytes(self.rnd.getrandbits(8) for _ in range(self.rnd.randint(1, 300)))

    def _big_string(self) -> str:
        # 100 KB: past the default max_payload (64 KiB); 60 KB: just under it
        return "A" * self.rnd.choice([100_000, 60_000])

    # -- MQTT ---------------------------------------------------------------------------

    def mqtt(self) -> MqttItem:
        """One garbage MQTT message for a daemon subscribed with :data:`TOPICS`."""
        fmt = self.rnd.choice(["json", "json", "value", "senml", "zigbee2mqtt"])
        device = self.device()
        kind, payload = getattr(self, f"_mqtt_{fmt}")(device)
        metric = self.rnd.choice(["temperature", "humidity", "t", "Temp C", "x" * 150,
                                  f"m{self.rnd.randint(0, 10**6)}", "ünïcode", "_", "1st"])
        topic = TOPICS[fmt].format(device=device, metric=metric)
        if kind == "bridge":
            topic = BRIDGE_TOPIC
        return MqttItem(f"{fmt}:{kind}", topic, payload, self.rnd.choice([1, 1, 1, 0]), device)

    def _mqtt_json(self, device: str) -> tuple[str, bytes]:
        r = self.rnd.random()
        now = 1.7e9 + self.rnd.random() * 1e8
        if r < 0.45:
            return "odd_json", self._odd_json()
        if r < 0.55:
            return "big_string", json.dumps({"note": self._big_string(), "t": 1}).encode()
        if r < 0.65:
            # thousands of invented keys (metric names), some past the name bound
            obj = {self._text(self.rnd.randint(1, 120)): self.rnd.random()
                   for _ in range(self.rnd.randint(1, 500))}
            return "many_keys", json.dumps(obj).encode()
        if r < 0.8:
            # decodes, cannot be stored: timestamp far away, or a value no float holds
            ts = self.rnd.choice([1e9 + 1, 4e9, 1e15, 9.9e307, -5, now])
            body = {"temperature": self.rnd.choice([21.5, 10**30, -(10**19), 1e299]), "ts": ts}
            return "unstorable", json.dumps(body).encode()
        if r < 0.9:
            wrong = self.rnd.choice([[1, 2], "hot", None, {"deep": {"deeper": "x"}}, True,
                                     {"v": 1, "u": 5}])
            return "wrong_type", json.dumps({"temperature": wrong, "ts": "yesterday"}).encode()
        # plausible readings with units nobody knows, or nested too deep for the flattener
        unit = self.rnd.choice(["furlongs", "", "°K", "u" * 40])
        nested: object = 1.5
        for _ in range(self.rnd.randint(1, 20)):
            nested = {"n": nested}
        return "odd_shape", json.dumps({"v": {"value": 3, "unit": unit}, "n": nested}).encode()

    def _mqtt_value(self, device: str) -> tuple[str, bytes]:
        r = self.rnd.random()
        if r < 0.5:
            return "number_text", self._number_text().encode()
        if r < 0.7:
            return "text", self.rnd.choice([b"", b" ", b"hot", b"ON!", b"\xff\xfe", b"1 2",
                                            b"true false", b"\x00", b"21,5"])
        if r < 0.8:
            return "big_string", self._big_string().encode()
        if r < 0.9:
            return "random_bytes", bytes(self.rnd.getrandbits(8)
                                         for _ in range(self.rnd.randint(1, 64)))
        return "odd_json", self._odd_json()

    def _mqtt_senml(self, device: str) -> tuple[str, bytes]:
        r = self.rnd.random()
        if r < 0.1:
            return "poison", POISON_SENML
        if r < 0.4:
            return "odd_json", self._odd_json()
        if r < 0.8:
            rec = self.rnd.choice([
                {"bn": "d:", "bt": 1e308, "t": 1e308, "n": "x", "v": 1},
                {"bn": "d:", "bt": -1e308, "t": -1e308, "n": "x", "v": 1},
                {"bt": "yesterday", "n": "x", "v": 1}, {"n": 5, "v": 1},
                {"n": "x", "v": "1"}, {"n": "x", "vb": "true"}, {"n": "x", "vs": 5},
                {"n": "", "v": 1}, {"bn": "", "n": "", "v": 1}, {"n": "x"},
                {"n": "x", "v": 1, "t": 10**30}, {"n": "x", "v": 1, "u": 7},
                {"n": "x", "v": 1, "u": "furlongs"}, {"n": "x" * 300, "v": 1},
                {"n": "x", "vs": "s" * 2000}, {"bn": "a" * 500, "n": "x", "v": 1},
                {"n": "x", "v": 1e300, "bv": 1e300}, {"n": "x", "s": 1}, {"bver": 99},
                {"n": "x", "v": 1, "t": 5e9}, {"n": "x", "v": 1, "t": -1e9},
            ])
            pack = [rec] * self.rnd.randint(1, 3)
            if self.rnd.random() < 0.3:
                pack = [{"bn": "ok:", "n": "temperature", "v": 20.0}, *pack]
            return "bad_record", json.dumps(pack).encode()
        if r < 0.9:
            return "big_number", (b'[{"n":"x","v":' + self._number_text().encode()
                                  + b',"t":' + self._number_text().encode() + b"}]")
        return "wrong_type", self.rnd.choice([b"{}", b"[]", b"[1]", b'[["n"]]', b'{"n":"x"}',
                                              b'"[{}]"', b"[null]"])

    def _mqtt_zigbee2mqtt(self, device: str) -> tuple[str, bytes]:
        r = self.rnd.random()
        if r < 0.05:
            entries: list[object] = [
                self.rnd.choice([None, 1, "x", [], {"friendly_name": 5},
                                 {"friendly_name": "a/b"}, {"friendly_name": ""},
                                 {"friendly_name": self._text(20), "definition": "nope"},
                                 {"friendly_name": self._text(10), "definition": {"model": 1}}])
                for _ in range(self.rnd.randint(0, 50))]
            payload = json.dumps(entries).encode() if self.rnd.random() < 0.8 else self._odd_json()
            return "bridge", payload
        if r < 0.45:
            return "odd_json", self._odd_json()
        if r < 0.55:
            return "big_string", json.dumps({"state": self._big_string()}).encode()
        body = self.rnd.choice([
            {"temperature": "warm"}, {"state": 1}, {"state": "MAYBE"},
            {"color": {self._text(30): 1, "x": "y"}}, {"color": [1, 2]},
            {"last_seen": "not a date", "linkquality": 10**30},
            {"last_seen": 10**30, "battery": 50}, {"voltage": 1e308, "energy": 1e308},
            {"pressure": -1e308}, {"action": "a" * 2000}, {"linkquality": None},
            {"update": {"state": "idle"}, "occupancy": "yes"},
            {self._text(120): 1}])
        return "odd_values", json.dumps(body).encode()

    # -- CoAP ---------------------------------------------------------------------------

    def _mid(self, sock: int) -> int:
        mid = self._mids.get(sock, self.rnd.randint(0, 0xFFFF))
        self._mids[sock] = (mid + 1) & 0xFFFF
        return mid

    def coap(self, raw_sources: int = 8) -> CoapItem:
        """One garbage CoAP datagram: raw (about 60 %) or a request for a real client."""
        if self.rnd.random() < 0.6:
            return self._coap_raw(self.rnd.randrange(raw_sources))
        return self._coap_request()

    def _coap_raw(self, sock: int) -> CoapItem:
        rnd = self.rnd
        mid = self._mid(sock)
        token = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 8)))
        device = self.device(control=True)
        source = f"raw-{sock}"  # until the datagram names a device
        path = [(_URI_PATH, b"readings"), (_URI_PATH, device.encode()[:255])]
        r = rnd.random()
        if r < 0.15:
            return CoapItem("random_bytes", source, sock=sock,
                            raw=bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 200))))
        if r < 0.25:
            head = coap_message(POST, mid, token, path, b'{"temperature": 1}')
            return CoapItem("truncated_header", source, head[: rnd.randint(1, 3)], sock)
        if r < 0.35:
            # version 0, 2 or 3; reserved token lengths 9..15; reserved or response codes
            first = rnd.choice([0x00, 0x80, 0xC0]) | rnd.randint(0, 8) if rnd.random() < 0.5 \
                else 0x40 | rnd.randint(9, 15)
            code = rnd.choice([POST, 0x1F, 0xE0, 0x45, 0x84, 0xFF])
            return CoapItem("bad_header", source, sock=sock,
                            raw=bytes([first, code]) + mid.to_bytes(2, "big") + token + b"\xffx")
        if r < 0.55:
            head = coap_message(POST, mid, b"\x01\x02", [])
            bad = rnd.choice([
                bytes([0xF1, 0x00]),            # option delta 15 (reserved)
                bytes([0x1F]),                   # option length 15 (reserved)
                bytes([0xD1]),                   # extended delta byte missing
                bytes([0xBD]),                   # Uri-Path with extended length missing
                bytes([0xBE, 0xFF]),             # extended length running past the end
                bytes([0xB5]) + b"rea",          # option value shorter than its length
                bytes([0xB8]) + b"readings" + bytes([0x04]) + b"\xff\xfe\xfd\xfc",  # not UTF-8
                _coap_option(9, b"x"),           # unknown critical option (odd number)
                _coap_option(2049, b"x"),        # unknown critical option, extended delta
                _coap_option(_CONTENT_FORMAT, b"\x00\x00\x00\x00\x01"),  # uint too long
                b"\xff",                         # payload marker and no payload
            ])
            return CoapItem("bad_options", source, head + bad, sock)
        if r < 0.7:
            # Block1 with block number 1000: SZX 7 (reserved over UDP) or 6, more or last
            szx = rnd.choice([7, 7, 6, 0])
            more = rnd.choice([0, 1])
            block = _uint(1000 << 4 | more << 3 | szx)
            opts = [*path, (_CONTENT_FORMAT, bytes([JSON])), (_BLOCK1, block)]
            body = b'{"temperature": 1}' + b" " * rnd.choice([0, 1006, 5])
            return CoapItem(f"block1_1000_szx{szx}", device,
                            coap_message(POST, mid, token, opts, body), sock)
        if r < 0.8:
            size1 = rnd.choice([2**32 - 1, 100_000, 10**9])
            opts = [*path, (_CONTENT_FORMAT, bytes([JSON])), (_SIZE1, _uint(size1)),
                    (_BLOCK1, _uint(0 << 4 | 1 << 3 | 6))]
            return CoapItem("size1_huge", device,
                            coap_message(POST, mid, token, opts, b"{" + b" " * 1023), sock)
        # well-formed header and path, a body no decoder takes, sent raw (CON or NON)
        fmt = rnd.choice([JSON, CBOR, SENML_JSON, SENML_CBOR, 0, 41, 65535])
        opts = [*path, (_CONTENT_FORMAT, _uint(fmt))]
        return CoapItem("raw_bad_body", device,
                        coap_message(POST, mid, token, opts, self._coap_body(fmt)[:1024],
                                     mtype=rnd.choice([0, 1])), sock)

    def _coap_body(self, fmt: int) -> bytes:
        rnd = self.rnd
        if fmt in (JSON, SENML_JSON):
            r = rnd.random()
            if r < 0.5:
                return self._odd_json()[:1000]
            if fmt == JSON:
                return json.dumps(rnd.choice([
                    {"temperature": "x"}, {"ts": "now", "t": 1}, {"units": [1]},
                    {"temperature": {"u": "Cel"}}, {"temperature": 1, "units": {"temperature":
                                                                                "furlongs"}},
                    [], [1], {"ts": 1e300, "t": 1}, {"": 1}, {"t": 1, "ts": -1},
                    {"temperature": "x" * 300}, {"temperature": 21, "ts": 4e12}])).encode()
            return json.dumps([rnd.choice([
                {"bn": "d:", "bt": 1e308, "t": 1e308, "n": "x", "v": 1}, {"n": "x", "v": "1"},
                {"n": "x", "v": 1, "u": 3}, {"bn": 5}, {"n_": "must understand", "v": 1},
                {"n": "x", "vs": "s" * 300}, {"bt": 1e308, "n": "x", "v": 1}])]).encode()
        if fmt in (CBOR, SENML_CBOR):
            r = rnd.random()
            if r < 0.25:
                return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 200)))
            if r < 0.4:
                return rnd.choice([b"\x81" * 900, b"\xa1\x61a" * 300, b"\x9f" * 900,
                                   b"\xd8\x18\x41", b"\xc1\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
                                   b"\xf9\x7e\x00", b"\xf7", b"\xbf\x61a", b"\x5f\x41",
                                   b"\x7f\x61a\x41b\xff", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",
                                   b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
                                   b"\xc2\x5a\xff\xff\xff\xff",
                                   b"\xd9\xd9\xf7\xa0", b"\xd8\x1e\x82\x01\x00", b"\xc4\x82\x19"])
            if fmt == CBOR:
                return cbor(rnd.choice([
                    {"t": 10**400}, {"ts": 10**400, "t": 1}, {"t": -(10**400)},
                    {"temperature": float("nan")}, {"temperature": float("inf")},
                    {1: 2}, {"temperature": b"\x00\x01"}, {"temperature": [1]},
                    {"temperature": None}, {"units": {"temperature": 5}, "temperature": 1},
                    [{"t": 1}, 5], {"t": 2**64}]))
            return cbor(rnd.choice([
                [{-2: "d:", -3: 1e308, 6: 1e308, 0: "x", 2: 1}],
                [{0: "x", 2: 10**400}], [{0: "x", 6: 10**400, 2: 1}], [{-2: 5, 2: 1}],
                [{0: "x", 2: float("nan")}], [{0: "x", 4: 1}], [{99: 1, 0: "x", 2: 1}],
                [{"n_": 1, 0: "x", 2: 1}], [{0: b"x", 2: 1}], [{-2: "d:", 0: "x", 3: "s" * 300}],
                [{0: "x"}], [], {}]))
        return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 100)))

    def _coap_request(self) -> CoapItem:
        rnd = self.rnd
        device = self.device(control=True)
        r = rnd.random()
        if r < 0.1:
            # the collection resource: SenML packs whose base names name the devices
            fmt = rnd.choice([SENML_JSON, SENML_CBOR, JSON])
            return CoapItem("collection", device, code=POST, path=("readings",),
                            content_format=fmt, payload=self._coap_body(fmt))
        if r < 0.2:
            path = rnd.choice([("readings", device, "extra"), ("nothing",), ("readings", ""),
                               ("readings", "a" * 200), (".well-known", "core"),
                               ("readings", "../etc")])
            return CoapItem("bad_path", device, code=rnd.choice([POST, GET, DELETE]),
                            path=path, content_format=JSON, payload=b'{"temperature": 1}')
        if r < 0.25:
            return CoapItem("bad_method", device, code=rnd.choice([GET, DELETE]),
                            path=("readings", device), content_format=JSON)
        if r < 0.3:
            return CoapItem("bad_format", device, code=POST, path=("readings", device),
                            content_format=rnd.choice([0, 40, 41, 11542, 65000]),
                            payload=b"21.5")
        fmt = rnd.choice([JSON, CBOR, SENML_JSON, SENML_CBOR])
        body = self._coap_body(fmt)[:1000]  # one datagram: no block-wise transfer
        return CoapItem(f"bad_body_{fmt}", device, code=rnd.choice([POST, POST, PUT]),
                        path=("readings", device), content_format=fmt, payload=body)


# -- sending it: one flood of MQTT and CoAP at once, bounded in count and time -------------


@dataclass
class FloodReport:
    """What a :func:`flood` sent, and what came back."""

    mqtt_sent: int = 0
    coap_sent: int = 0
    #: MQTT publishes the broker had not acknowledged when the flood ended
    mqtt_unacked: int = 0
    #: ``"mqtt:<kind>"`` / ``"coap:<kind>"`` → items sent
    kinds: dict[str, int] = field(default_factory=dict)
    #: items per source (device id, or raw socket) per protocol
    sources: dict[str, dict[str, int]] = field(default_factory=lambda: {"mqtt": {}, "coap": {}})
    #: answers to the client's CoAP requests by code ("4.00"...), "timeout" or the error
    coap_answers: dict[str, int] = field(default_factory=dict)
    #: datagrams that came back to the raw sockets (answers, resets)
    coap_raw_replies: int = 0
    elapsed: float = 0.0

    def count(self, protocol: str, kind: str, source: str) -> None:
        key = f"{protocol}:{kind}"
        self.kinds[key] = self.kinds.get(key, 0) + 1
        per = self.sources[protocol]
        per[source] = per.get(source, 0) + 1


async def flood(seed: int, mqtt_port: int, coap_port: int, mqtt_count: int, coap_count: int,
                seconds: float, host: str = "127.0.0.1", client_id: str = "fz-flood",
                window: int = 64, exclude: tuple[str, ...] = ()) -> FloodReport:
    """Publish ``mqtt_count`` garbage MQTT messages (QoS 0 and 1, one client) and send
    ``coap_count`` garbage CoAP datagrams (raw sockets and a real aiocoap client), spread
    evenly over ``seconds`` (0: as fast as the windows allow).

    Bounded: stops at the counts, or ``seconds + 30`` s after starting, whichever comes
    first. The MQTT and CoAP streams have their own generators (seeds ``seed`` and
    ``seed + 1``), so each is the same on every run whatever the scheduling. Items whose
    ``"<protocol>:<kind>"`` contains one of ``exclude`` are skipped (not counted), to find
    which garbage does what.
    """
    import aiocoap
    import gmqtt
    from aiocoap.numbers.codes import Code

    report = FloodReport()
    t0 = time.monotonic()
    hard_stop = t0 + seconds + 30.0

    def due(i: int, count: int) -> float:
        return t0 + seconds * i / count if seconds else 0.0

    def wanted(protocol: str, kind: str) -> bool:
        return not any(x in f"{protocol}:{kind}" for x in exclude)

    async def mqtt_stream() -> None:
        gen = Garbage(seed)
        client = gmqtt.Client(client_id)
        await client.connect(host, mqtt_port, keepalive=30)
        storage = client._persistent_storage  # gmqtt's in-flight QoS 1 publishes
        try:
            for i in range(mqtt_count):
                wait = due(i, mqtt_count) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while len(storage._messages) >= window and time.monotonic() < hard_stop:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                if time.monotonic() >= hard_stop:
                    break
                item = gen.mqtt()
                for _ in range(10_000):
                    if wanted("mqtt", item.kind):
                        break
                    item = gen.mqtt()
                client.publish(item.topic, item.payload, qos=item.qos)
                report.mqtt_sent += 1
                report.count("mqtt", item.kind, item.source)
                if i % 50 == 0:
                    await asyncio.sleep(0)
            while storage._messages and time.monotonic() < hard_stop:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            report.mqtt_unacked = len(storage._messages)
        finally:
            await client.disconnect()

    async def coap_stream() -> None:
        gen = Garbage(seed + 1)
        raw_sources = 8
        socks = []
        for _ in range(raw_sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((host, coap_port))
            s.setblocking(False)
            socks.append(s)
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        in_flight = asyncio.Semaphore(window)
        pending: set[asyncio.Task[None]] = set()

        async def request(item: CoapItem) -> None:
            msg = aiocoap.Message(code=Code(item.code), uri=f"coap://{host}:{coap_port}/",
                                  payload=item.payload)
            msg.opt.uri_path = item.path
            if item.content_format is not None:
                msg.opt.content_format = item.content_format
            try:
                answer = await asyncio.wait_for(ctx.request(msg).response, 10.0)
                key = answer.code.dotted
            except TimeoutError:
                key = "timeout"
            except Exception as exc:  # noqa: BLE001 - the client's own refusal is an answer too
                key = type(exc).__name__
            finally:
                in_flight.release()
            report.coap_answers[key] = report.coap_answers.get(key, 0) + 1

        def drain() -> None:
            for s in socks:
                for _ in range(64):
                    try:
                        s.recv(4096)
                    except BlockingIOError:
                        break
                    except OSError:  # ICMP port unreachable after a reset: keep going
                        break
                    report.coap_raw_replies += 1

        try:
            for i in range(coap_count):
                wait = due(i, coap_count) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if time.monotonic() >= hard_stop:
                    break
                item = gen.coap(raw_sources)
                for _ in range(10_000):
                    if wanted("coap", item.kind):
                        break
                    item = gen.coap(raw_sources)
                if item.raw is not None:
                    with contextlib.suppress(OSError):
                        socks[item.sock].send(item.raw)
                    drain()
                    await asyncio.sleep(0)
                else:
                    remaining = hard_stop - time.monotonic()
                    try:
                        await asyncio.wait_for(in_flight.acquire(), max(remaining, 0.01))
                    except TimeoutError:
                        break
                    task = asyncio.create_task(request(item))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                report.coap_sent += 1
                report.count("coap", item.kind, item.source)
            if pending:
                await asyncio.wait(pending, timeout=max(hard_stop - time.monotonic(), 0.01))
            drain()
        finally:
            for task in pending:
                task.cancel()
            await ctx.shutdown()
            for s in socks:
                s.close()

    await asyncio.gather(mqtt_stream(), coap_stream())
    report.elapsed = time.monotonic() - t0
    return report


# -- the daemon under test: its config, and what a test or benchmark reads from it ----------


def daemon_config(state_dir: str, mqtt_port: int, coap_port: int) -> dict[str, object]:
    """``gateway run`` with an MQTT adapter on every payload format of :data:`TOPICS`, a
    CoAP adapter on 127.0.0.1:``coap_port``, the control API on its Unix socket (in
    ``state_dir``), no uplink: every accepted reading stays in the outbox."""
    return {
        "gateway": {"id": "gw-fuzz", "state_dir": state_dir},
        "uplink": {"enabled": False},
        "api": {"enabled": True},
        "store": {"commit_interval": "20ms"},
        "adapters": [
            {"type": "mqtt", "host": "127.0.0.1", "port": mqtt_port, "client_id": "gw-fuzz",
             "reconnect_delay": 0.2,
             "subscriptions": [
                 {"topic": TOPICS["json"], "format": "json", "timestamp": "ts"},
                 {"topic": TOPICS["value"], "format": "value"},
                 {"topic": TOPICS["senml"], "format": "senml"},
                 {"topic": TOPICS["zigbee2mqtt"], "format": "zigbee2mqtt"}]},
            {"type": "coap", "bind": "127.0.0.1", "port": coap_port},
        ],
    }


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def api_get(sock: str, path: str) -> tuple[int, object]:
    """GET ``path`` from the control API on its Unix socket: (status, JSON body or text)."""
    import aiohttp

    conn = aiohttp.UnixConnector(path=sock)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session, \
            session.get(f"http://gateway{path}") as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" \
            else text


def samples(exposition: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric in a Prometheus exposition: sorted labels → value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def publish_one(port: int, topic: str, payload: bytes, client_id: str,
                      within: float = 10.0) -> bool:
    """One QoS 1 publish from its own connection; True once the broker acknowledged it."""
    import gmqtt

    client = gmqtt.Client(client_id)
    await asyncio.wait_for(client.connect("127.0.0.1", port, keepalive=30), within)
    try:
        client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + within
        while client._persistent_storage._messages and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return not client._persistent_storage._messages
    finally:
        await client.disconnect()


async def coap_post(port: int, path: tuple[str, ...], payload: bytes, fmt: int = JSON,
                    within: float = 10.0) -> str:
    """One confirmable POST from a real aiocoap client: the answer's code ("2.04"...)."""
    import aiocoap
    from aiocoap.numbers.codes import Code

    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/", payload=payload)
        msg.opt.uri_path = path
        msg.opt.content_format = fmt
        answer = await asyncio.wait_for(ctx.request(msg).response, within)
        return str(answer.code.dotted)
    finally:
        await ctx.shutdown()


# -- the daemon's log ---------------------------------------------------------------------

_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (\w+) +([\w.]+): (.*)$")


def log_part(line: str) -> str:
    """Which part of the daemon wrote a log line (for counting lines per part)."""
    m = _LINE.match(line)
    if m is None:
        return "continuation"  # a traceback or another multi-line record
    logger, msg = m.group(2), m.group(3)
    if logger == "gateway.adapter.mqtt":
        return "mqtt_bridge" if " described by " in msg else "mqtt_input"
    if logger == "gateway.readings":
        return "readings_coap" if msg.startswith("coap") else "readings_mqtt"
    if logger.startswith("gateway.adapter.coap"):
        return "coap"
    if logger == "gateway.devices":
        if msg.startswith("new device"):
            return "devices_new"
        online = msg.startswith("device ") and msg.endswith(" online")
        return "devices_online" if online else "devices_other"
    return "other"
