"""Hostile input to the CoAP adapter: garbage datagrams, abusive payloads and block-wise
transfers, floods from one source. Each is answered cleanly (or dropped if it is not CoAP),
counted, logged at most once a minute per source and reason, never with a traceback; what
aiocoap keeps per request stays bounded.

A real aiocoap client on loopback, and a raw UDP socket for what no client would send.
Nothing is mocked except where a test says so (a store that raises, to reach aiocoap's
own error path).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.numbers.optionnumbers import OptionNumber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapters.coap import aiocoap_patch, codec
from gateway.adapters.coap.aiocoap_patch import DuplicateCache
from gateway.adapters.coap.problems import LIBRARY_LOGGERS, Problems
from gateway.adapters.coap.server import MAX_TRANSFERS, Block1Spool
from gateway.payloads import REASONS, DecodeError
from tests.coap_helpers import Gateway, client, eventually, post

# -- raw CoAP ---------------------------------------------------------------------------------

CON, NON, ACK, RST = 0, 1, 2, 3
URI_PATH, CONTENT_FORMAT, BLOCK1, REQUEST_TAG = 11, 12, 27, 292


def _nibble(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, struct.pack("!H", n - 269)


def coap(code: int = 2, mid: int = 0, token: bytes = b"", options: Any = (),
         payload: bytes = b"", mtype: int = CON) -> bytes:
    """One CoAP datagram, options given as (number, value bytes)."""
    out = bytearray([0x40 | (mtype << 4) | len(token), code]) + struct.pack("!H", mid) + token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        (d, dx), (ln, lx) = _nibble(number - last), _nibble(len(value))
        out += bytes([(d << 4) | ln]) + dx + lx + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def post_datagram(mid: int, payload: bytes, fmt: int | None = 50, device: str = "kitchen",
                  extra: Any = (), mtype: int = CON) -> bytes:
    """A POST to /readings/<device>; the token is the message id."""
    opts = [(URI_PATH, b"readings"), (URI_PATH, device.encode()), *extra]
    if fmt is not None:
        opts.append((CONTENT_FORMAT, fmt.to_bytes(2, "big").lstrip(b"\0")))
    return coap(2, mid, struct.pack("!H", mid), opts, payload, mtype)


def block1(num: int, more: bool, szx: int) -> bytes:
    value = (num << 4) | (8 if more else 0) | szx
    return value.to_bytes(3, "big").lstrip(b"\0") or b"\0"


def garbage(rng: random.Random, n: int, first_mid: int = 0) -> Iterator[bytes]:
    """``n`` hostile datagrams of every kind, each with its own message id."""
    deep_json = b"[" * 1500 + b"]" * 1500  # one datagram (< 4096 bytes), nested 1,500 deep
    payloads = [
        (50, b'{"temperature": 21.5'), (50, b'{"t": NaN}'), (50, deep_json),
        (50, json.dumps({"t": 10**400}).encode()), (50, b"\xff\xfe"),
        (60, b"\xff\xff\x00"), (60, cbor2.dumps({"t": 10**400})), (60, b"\x81" * 3000 + b"\x01"),
        (110, b'[{"bn": 3}]'), (110, b"[]"), (110, deep_json),
        (112, cbor2.dumps([{6: 10**400, 2: 1}])), (112, cbor2.dumps([{0: "t", 2: 10**400}])),
        (112, cbor2.dumps([{2: "warm"}])), (41, b"<x/>"),
    ]
    for i in range(n):
        mid = (first_mid + i) & 0xFFFF
        kind = i % 10
        if kind == 0:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        elif kind == 1:  # truncated header, or not version 1
            yield rng.choice([b"\x40", b"\x40\x02", b"\x40\x02\x00", b"\x80\x02\x00\x01"])
        elif kind == 2:  # options cut short, payload marker with nothing after it
            yield rng.choice([bytes([0x40, 0x02, mid >> 8, mid & 0xFF, 0xBD]),
                              bytes([0x40, 0x02, mid >> 8, mid & 0xFF, 0xB5, 0x61]),
                              bytes([0x40, 0x02, mid >> 8, mid & 0xFF, 0xFF]),
                              bytes([0x40, 0x02, mid >> 8, mid & 0xFF, 0xF1, 0x00])])
        elif kind == 3:  # a Uri-Path that is not UTF-8
            yield coap(2, mid, b"", [(URI_PATH, b"readings"), (URI_PATH, b"\xc3\x28")])
        elif kind == 4:  # unknown critical option; content formats nobody registered
            yield post_datagram(mid, b'{"t": 1}', extra=[(9999, b"x")])
        elif kind == 5:
            yield post_datagram(mid, b'{"t": 1}', fmt=None,
                                extra=[(CONTENT_FORMAT, rng.randbytes(8))])
        elif kind in (6, 7):  # bad JSON, CBOR, SenML
            fmt, body = payloads[rng.randrange(len(payloads))]
            yield post_datagram(mid, body, fmt)
        elif kind == 8:  # block-wise abuse
            yield rng.choice([
                post_datagram(mid, b'{"a":1}', extra=[(BLOCK1, block1(1000, True, 7))]),
                post_datagram(mid, b'{"a":1}', extra=[(BLOCK1, block1(5, True, 6))]),
                post_datagram(mid, b'{"a":1}', extra=[(BLOCK1, block1(0, True, 2))]),
                post_datagram(mid, b"x" * 64, extra=[(BLOCK1, block1(0, True, 2)),
                                                     (REQUEST_TAG, rng.randbytes(4))]),
            ])
        else:  # types and codes that do not fit: a request as ACK, responses, pings, RST
            yield rng.choice([coap(2, mid, b"", [(URI_PATH, b"readings")], mtype=ACK),
                              coap(69, mid, b"\x01", (), b"x", mtype=CON),
                              coap(0, mid, b"", (), b"", mtype=CON),
                              coap(0, mid, b"", (), b"", mtype=RST)])


class RawPeer:
    """A UDP socket speaking CoAP by hand; acknowledges separate responses as a client must."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = ("127.0.0.1", port)
        self.replies: list[Message] = []

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def drain(self) -> list[Message]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.replies
            msg = Message.decode(data)
            if msg.mtype == aiocoap.CON and msg.code.is_response():
                self.send(coap(0, msg.mid, b"", (), b"", mtype=ACK))
            self.replies.append(msg)

    def answers(self) -> dict[bytes, Message]:
        """Responses (not empty ACKs or RSTs) by token."""
        return {m.token: m for m in self.drain() if m.code.is_response()}

    def close(self) -> None:
        self.sock.close()


async def flood(peer: RawPeer, datagrams: list[bytes], handled: Any, within: float = 30.0,
                burst: int = 50) -> None:
    """Send in bursts, each once the gateway has handled the one before (``handled()``
    counts what it has seen): a socket buffer overrun would lose datagrams, not test them."""
    for start in range(0, len(datagrams), burst):
        for d in datagrams[start:start + burst]:
            peer.send(d)
        target = start + len(datagrams[start:start + burst])
        await eventually(lambda t=target: handled() >= t, within,  # type: ignore[misc]
                         what=f"gateway handled {target} datagrams")


def total(gw: Gateway, name: str) -> float:
    return sum(s.value for m in gw.metrics.collect() if m.name == name
               for s in m.samples if s.name.endswith("_total"))


def handled(gw: Gateway) -> float:
    """Every datagram the adapter answered, refused or dropped."""
    return (total(gw, "gateway_coap_requests") + total(gw, "gateway_coap_dropped"))


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


def coap_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("gateway.adapter.coap")
            and r.levelno >= logging.WARNING]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = await Gateway(tmp_path, {}).start()
    try:
        yield g
    finally:
        await g.stop()


@pytest.fixture
def peer(gw: Gateway) -> Iterator[RawPeer]:
    p = RawPeer(gw.port)
    yield p
    p.close()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler while the test runs."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


# -- payloads: a clean 4.00 for each ------------------------------------------------------------

DEEP_JSON = b"[" * 5000 + b"]" * 5000
DEEP_CBOR = b"\x81" * 5000 + b"\x01"


@pytest.mark.parametrize("fmt,body,reason", [
    (112, cbor2.dumps([{0: "t", 6: 10**400, 2: 1}]), "bad_time"),
    (112, cbor2.dumps([{0: "t", 2: 10**400}]), "bad_value"),
    (112, cbor2.dumps([{-3: 10**400, 0: "t", 2: 1}]), "bad_time"),
    (60, cbor2.dumps({"t": 10**400}), "bad_value"),
    (60, cbor2.dumps({"t": 1, "ts": 10**400}), "bad_time"),
    (50, json.dumps({"t": 10**400}).encode(), "bad_value"),
    (50, DEEP_JSON, "bad_json"),
    (110, DEEP_JSON, "bad_json"),
    (60, DEEP_CBOR, "bad_cbor"),
    (112, DEEP_CBOR, "bad_cbor"),
], ids=["senml-cbor-t-bignum", "senml-cbor-v-bignum", "senml-cbor-bt-bignum", "cbor-bignum",
        "cbor-ts-bignum", "json-bigint", "json-deep", "senml-json-deep", "cbor-deep",
        "senml-cbor-deep"])
async def test_abusive_payloads_get_a_clean_400_and_are_counted(
        gw: Gateway, cli: Context, caplog: pytest.LogCaptureFixture, fmt: int, body: bytes,
        reason: str) -> None:
    caplog.set_level(logging.INFO)
    response = await post(cli, f"{gw.uri}/readings/kitchen", body, fmt)  # deep ones: block-wise
    assert response.code == Code.BAD_REQUEST, response.payload
    assert gw.metric("gateway_coap_malformed_total", adapter="coap", reason=reason) == 1
    assert gw.metric("gateway_coap_requests_total", adapter="coap", code="5.00") == 0
    assert await gw.stored() == []
    no_traceback(caplog)
    assert len(coap_lines(caplog)) == 1


# -- block-wise abuse -----------------------------------------------------------------------------

async def _raw_request(cli: Context, msg: Message) -> Message:
    return await asyncio.wait_for(cli.request(msg, handle_blockwise=False).response, 10)


def _block_post(gw: Gateway, num: int, more: bool, szx: int, payload: bytes,
                tag: bytes | None = None) -> Message:
    msg = Message(code=Code.POST, uri=f"{gw.uri}/readings/kitchen", payload=payload,
                  content_format=50, block1=(num, more, szx))
    if tag is not None:
        msg.opt.request_tag = [tag]
    return msg


@pytest.mark.parametrize("num,more,szx,payload,code,reason", [
    (1000, True, 7, b'{"a":1}', Code.BAD_REQUEST, "bad_block"),
    (1000, False, 7, b'{"a":1}', Code.BAD_REQUEST, "bad_block"),
    (5, True, 2, b"x" * 64, Code.REQUEST_ENTITY_INCOMPLETE, "incomplete_block"),
    (3, False, 6, b'{"a":1}', Code.REQUEST_ENTITY_INCOMPLETE, "incomplete_block"),
    (0, True, 2, b'{"a":1}', Code.BAD_REQUEST, "bad_block"),
    (200, True, 6, b"x" * 1024, Code.REQUEST_ENTITY_TOO_LARGE, "oversized"),
], ids=["szx7-more", "szx7-last", "no-start", "last-without-start", "short-block",
        "beyond-max-payload"])
async def test_block1_abuse_is_refused_cleanly(
        gw: Gateway, cli: Context, caplog: pytest.LogCaptureFixture, num: int, more: bool,
        szx: int, payload: bytes, code: Code, reason: str) -> None:
    caplog.set_level(logging.INFO)
    response = await _raw_request(cli, _block_post(gw, num, more, szx, payload))
    assert response.code == code, response.payload
    assert gw.metric("gateway_coap_malformed_total", adapter="coap", reason=reason) == 1
    assert gw.sink is not None and gw.sink.calls == 0
    no_traceback(caplog)


async def test_a_gap_in_a_block1_transfer_gets_408_and_a_fresh_start_works(
        gw: Gateway, cli: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = b'{"temperature": 21.5, "humidity": 40.25, "pad": "' + b"x" * 80 + b'"}'
    first = await _raw_request(cli, _block_post(gw, 0, True, 1, body[:32]))
    assert first.code == Code.CONTINUE
    gap = await _raw_request(cli, _block_post(gw, 2, True, 1, body[64:96]))
    assert gap.code == Code.REQUEST_ENTITY_INCOMPLETE
    # the transfer is gone: its next block cannot be taken either
    late = await _raw_request(cli, _block_post(gw, 1, True, 1, body[32:64]))
    assert late.code == Code.REQUEST_ENTITY_INCOMPLETE
    for i in range(0, len(body), 32):
        chunk = body[i:i + 32]
        last = await _raw_request(cli, _block_post(gw, i // 32, i + 32 < len(body), 1, chunk))
    assert last.code == Code.CHANGED
    # "pad" is text: unmapped text is not a reading
    assert sorted(r.metric for r in await gw.stored()) == ["humidity", "temperature"]
    no_traceback(caplog)


async def test_the_block1_spool_is_bounded_in_transfers(gw: Gateway, cli: Context) -> None:
    assert gw.adapter is not None and gw.adapter.readings is not None
    spool = gw.adapter.readings.spool
    for i in range(3 * MAX_TRANSFERS):
        started = await _raw_request(cli, _block_post(gw, 0, True, 6, b"x" * 1024,
                                                      tag=i.to_bytes(2, "big")))
        assert started.code == Code.CONTINUE
        assert len(spool) <= MAX_TRANSFERS
    assert len(spool) == MAX_TRANSFERS


def test_block1_spool_forgets_transfers_after_their_lifetime() -> None:
    now = [1000.0]
    spool = Block1Spool(max_transfers=4, lifetime=60.0, clock=lambda: now[0])
    remote = type("R", (), {"blockwise_key": ("127.0.0.1", 1)})()
    msg = Message(code=Code.POST, uri_path=("readings", "x"), payload=b"a" * 16,
                  block1=(0, True, 0))
    msg.remote = remote
    assert spool.feed(msg) is None and len(spool) == 1
    now[0] += 61
    other = Message(code=Code.POST, uri_path=("readings", "y"), payload=b"b" * 16,
                    block1=(0, True, 0))
    other.remote = remote
    spool.feed(other)
    assert len(spool) == 1  # the first one expired


# -- options ----------------------------------------------------------------------------------

async def test_unknown_critical_option_gets_402_and_proxy_options_505(
        gw: Gateway, cli: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    msg = Message(code=Code.POST, uri=f"{gw.uri}/readings/kitchen", payload=b'{"t": 1}',
                  content_format=50)
    msg.opt.add_option(OptionNumber(65001).create_option(value=b"x"))  # odd: critical
    bad = await _raw_request(cli, msg)
    assert bad.code == Code.BAD_OPTION
    assert gw.metric("gateway_coap_malformed_total", adapter="coap", reason="bad_option") == 1
    elective = Message(code=Code.POST, uri=f"{gw.uri}/readings/kitchen", payload=b'{"t": 1}',
                       content_format=50)
    elective.opt.add_option(OptionNumber(65000).create_option(value=b"x"))  # even: elective
    assert (await _raw_request(cli, elective)).code == Code.CHANGED
    proxied = Message(code=Code.POST, uri=f"{gw.uri}/readings/kitchen", payload=b'{"t": 1}')
    proxied.opt.proxy_scheme = "http"
    assert (await _raw_request(cli, proxied)).code == Code.PROXYING_NOT_SUPPORTED
    no_traceback(caplog)


# -- datagrams that are not CoAP ----------------------------------------------------------------

@pytest.mark.parametrize("datagram,reason", [
    (b"\x40", "unparsable"),
    (b"\x80\x02\x00\x01", "unparsable"),
    (bytes([0x40, 0x02, 0x12, 0x34, 0xBD]), "unparsable"),
    (bytes([0x40, 0x02, 0x12, 0x35, 0xF1, 0x00]), "unparsable"),
    (coap(2, 7, b"", [(URI_PATH, b"readings"), (URI_PATH, b"\xc3\x28")]), "unparsable"),
    (post_datagram(8, b"[" + b"1," * 3000 + b"1]"), "truncated"),
    (coap(2, 9, b"", [(URI_PATH, b"readings")], mtype=ACK), "bad_message"),
], ids=["one-byte", "version-2", "option-cut", "delta-15", "path-not-utf8",
        "larger-than-4096", "request-as-ack"])
async def test_datagrams_that_are_not_coap_are_dropped_and_counted_without_a_traceback(
        gw: Gateway, cli: Context, peer: RawPeer, caplog: pytest.LogCaptureFixture,
        loop_errors: list[dict[str, Any]], datagram: bytes, reason: str) -> None:
    caplog.set_level(logging.INFO)
    peer.send(datagram)
    await eventually(lambda: gw.metric("gateway_coap_dropped_total", adapter="coap",
                                       reason=reason) == 1, what="the drop was counted")
    assert peer.answers() == {}
    ok = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert ok.code == Code.CHANGED
    assert loop_errors == []
    no_traceback(caplog)
    assert len(coap_lines(caplog)) == 1


@pytest.mark.parametrize("kind", ["unparsable", "bad_payload", "bad_block"])
async def test_500_bad_datagrams_from_one_source_log_at_most_two_lines(
        gw: Gateway, peer: RawPeer, caplog: pytest.LogCaptureFixture,
        loop_errors: list[dict[str, Any]], kind: str) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    datagrams = {
        "unparsable": [coap(2, i, b"", [(URI_PATH, b"\xff" + bytes([i & 0x7F]))])
                       for i in range(500)],
        "bad_payload": [post_datagram(i, b'{"temperature": ' + str(i).encode())
                        for i in range(500)],
        "bad_block": [post_datagram(i, b'{"a":1}', extra=[(BLOCK1, block1(i + 1, True, 7))])
                      for i in range(500)],
    }[kind]
    await flood(peer, datagrams, lambda: handled(gw))
    assert handled(gw) == 500
    lines = coap_lines(caplog)
    assert 1 <= len(lines) <= 2, lines
    assert loop_errors == []
    no_traceback(caplog)


async def test_2000_garbage_datagrams_are_answered_or_dropped_and_the_server_keeps_serving(
        gw: Gateway, cli: Context, peer: RawPeer, caplog: pytest.LogCaptureFixture,
        loop_errors: list[dict[str, Any]]) -> None:
    caplog.set_level(logging.INFO)
    datagrams = list(garbage(random.Random(11), 2000))
    # every datagram ends in an answer or a count, except pings, RSTs and responses
    # (answered with RST or ignored by the message layer), hence the bound below
    for start in range(0, len(datagrams), 50):
        before = handled(gw) + len(peer.drain())
        for d in datagrams[start:start + 50]:
            peer.send(d)
        await eventually(lambda b=before: handled(gw) + len(peer.drain()) >= b + 40,
                         what="a burst handled")
    ok = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert ok.code == Code.CHANGED
    answers = peer.answers()
    codes = {m.code for m in answers.values()}
    assert codes <= {Code.BAD_REQUEST, Code.BAD_OPTION, Code.REQUEST_ENTITY_INCOMPLETE,
                     Code.REQUEST_ENTITY_TOO_LARGE, Code.UNSUPPORTED_CONTENT_FORMAT,
                     Code.CONTINUE, Code.NOT_FOUND}, codes
    assert gw.metric("gateway_coap_requests_total", adapter="coap", code="5.00") == 0
    assert total(gw, "gateway_coap_dropped") >= 400
    assert total(gw, "gateway_coap_malformed") >= 500
    assert loop_errors == []
    no_traceback(caplog)
    # one line per (source, reason) at most: one source here
    assert len(coap_lines(caplog)) <= 40, coap_lines(caplog)


# -- aiocoap's own error paths: counted, one line, no traceback ----------------------------------

async def test_an_exception_while_rendering_is_counted_and_logged_without_traceback(
        gw: Gateway, cli: Context, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    assert gw.sink is not None

    async def broken(readings: Any) -> bool:
        raise RuntimeError("store exploded")

    # mocked: a store that raises (the real one refuses instead), to reach aiocoap's
    # "exception while rendering" path
    monkeypatch.setattr(gw.sink, "accept", broken)
    for _ in range(3):
        response = await post(cli, f"{gw.uri}/readings/kitchen", b'{"t": 1}', 50)
        assert response.code == Code.INTERNAL_SERVER_ERROR
    assert gw.metric("gateway_coap_dropped_total", adapter="coap", reason="library_error") == 3
    no_traceback(caplog)
    lines = [line for line in coap_lines(caplog) if "store exploded" in line]
    assert len(lines) == 1, coap_lines(caplog)


async def test_aiocoap_exceptions_reaching_asyncio_are_counted_others_left_alone(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    try:  # a text option that is not UTF-8: raised inside aiocoap's parser
        Message.decode(coap(2, 1, b"", [(URI_PATH, b"\xc3\x28")]))
    except UnicodeDecodeError as exc:
        from_aiocoap: BaseException = exc
    loop.default_exception_handler({"message": "Exception in callback rr()",
                                    "exception": from_aiocoap})
    assert gw.metric("gateway_coap_dropped_total", adapter="coap", reason="library_error") == 1
    no_traceback(caplog)
    try:
        raise ValueError("not aiocoap's")
    except ValueError as exc:
        loop.default_exception_handler({"message": "elsewhere", "exception": exc})
    assert [r for r in caplog.records if r.name == "asyncio" and r.exc_info]


async def test_filters_are_removed_at_stop(tmp_path: Path) -> None:
    g = await Gateway(tmp_path, {}).start()
    names = ["gateway.adapter.coap.aiocoap", *LIBRARY_LOGGERS, "asyncio"]
    assert all(any(isinstance(f, Problems) for f in logging.getLogger(n).filters)
               for n in names)
    await g.stop()
    assert not any(isinstance(f, Problems) for n in names for f in logging.getLogger(n).filters)


# -- the patched aiocoap: one test per patched behaviour ----------------------------------------

async def test_a_retransmitted_request_is_answered_again_without_being_processed_twice(
        gw: Gateway, peer: RawPeer) -> None:
    datagram = post_datagram(4242, b'{"temperature": 21}')
    peer.send(datagram)
    await eventually(lambda: len(peer.answers()) == 1, what="the answer")
    peer.send(datagram)  # a retransmission: same sender, same message id
    await eventually(lambda: len([m for m in peer.drain() if m.code.is_response()]) == 2,
                     what="the answer again")
    first, second = [m for m in peer.replies if m.code.is_response()]
    assert first.code == second.code == Code.CHANGED
    assert (first.mid, first.token) == (second.mid, second.token)
    assert gw.sink is not None and gw.sink.calls == 1
    assert [r.value for r in await gw.stored()] == [21]


async def test_the_duplicate_cache_stays_bounded_under_a_stream_of_requests(
        gw: Gateway) -> None:
    assert gw.adapter is not None and gw.adapter.patched is not None
    (endpoint,) = gw.adapter.patched.endpoints
    # the adapter's bound is 32,768 requests; a smaller one shows it holds in seconds
    endpoint.cache = DuplicateCache(lifetime=45.0, max_entries=400)
    peers = [RawPeer(gw.port) for _ in range(4)]
    try:
        sent = 0
        for round_ in range(15):
            for p in peers:
                for i in range(25):
                    p.send(post_datagram(round_ * 25 + i, b'{"t": 1}', device=f"d{sent % 7}"))
                    sent += 1
            await eventually(lambda s=sent: sum(len(p.answers()) for p in peers) >= s,
                             what="answers")
            assert len(endpoint.cache) <= 400
        assert sent == 1500
        assert gw.metric("gateway_coap_requests_total", adapter="coap", code="2.04") == 1500
        assert len(endpoint.cache) >= 200  # the latest half is always remembered
        assert gw.metric("gateway_coap_duplicate_cache_entries", adapter="coap") == len(
            endpoint.cache)
    finally:
        for p in peers:
            p.close()


def test_duplicate_cache_keeps_entries_between_one_and_two_lifetimes() -> None:
    now = [0.0]
    cache = DuplicateCache(lifetime=45.0, max_entries=100, clock=lambda: now[0])
    cache.add("a")
    cache.respond("a", b"answer")
    now[0] = 44.0
    assert cache.lookup("a") == (True, b"answer")
    now[0] = 46.0
    assert cache.lookup("a") == (True, b"answer")  # in the previous generation
    now[0] = 89.0
    assert cache.lookup("a") == (True, b"answer")
    now[0] = 92.0
    assert cache.lookup("a") == (False, None)
    for i in range(1000):
        cache.add(i)
        assert len(cache) <= 100
    assert cache.lookup(999) == (True, None) and cache.lookup(950) == (True, None)


async def test_backlog_for_a_peer_that_never_acknowledges_is_capped() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.drops: list[str] = []

        def dropped(self, reason: str, address: Any, exc: BaseException | None) -> None:
            self.drops.append(reason)

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    silent.bind(("127.0.0.1", 0))
    ctx = await client()
    recorder = Recorder()
    patched = aiocoap_patch.install(ctx, recorder, max_backlog=8)
    assert patched is not None
    try:
        uri = f"coap://127.0.0.1:{silent.getsockname()[1]}/x"
        requests = [ctx.request(Message(code=Code.POST, uri=uri, payload=b"1"))
                    for _ in range(30)]
        # one in flight, 8 waiting: the other 21 fail at once
        await eventually(lambda: len(recorder.drops) == 21, what="21 requests dropped")
        (endpoint,) = patched.endpoints
        assert all(len(b) <= 8 for b in endpoint.manager._backlogs.values())
        failed = [r for r in requests if r.response.done()]
        assert len(failed) == 21
        assert all(isinstance(r.response.exception(), aiocoap.error.Error) for r in failed)
        assert set(recorder.drops) == {"backlog_full"}
    finally:
        patched.remove()
        await ctx.shutdown()
        silent.close()


def test_unknown_enum_values_stop_being_cached_past_the_limit() -> None:
    aiocoap_patch.bound_enum_caches()
    cap = max(aiocoap_patch.ENUM_CACHE_LIMIT, len(ContentFormat._value2member_map_),
              len(OptionNumber._value2member_map_))
    rng = random.Random(3)
    for _ in range(3 * aiocoap_patch.ENUM_CACHE_LIMIT):
        Message.decode(post_datagram(1, b"{}", fmt=None,
                                     extra=[(CONTENT_FORMAT, rng.randbytes(8)),
                                            (rng.randrange(2000, 32000) * 2, b"x")]))
    assert len(ContentFormat._value2member_map_) <= cap
    assert len(OptionNumber._value2member_map_) <= cap
    assert ContentFormat(50) is ContentFormat.JSON  # known members stay themselves
    assert OptionNumber(11) is OptionNumber.URI_PATH
    assert ContentFormat(1234567) == 1234567


async def test_on_another_aiocoap_version_nothing_is_patched(
        tmp_path: Path, cli: Context, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(aiocoap.meta, "version", "0.4.99")
    assert not aiocoap_patch.version_supported()
    g = await Gateway(tmp_path, {}).start()
    try:
        assert g.adapter is not None and g.adapter.patched is None
        assert "0.4.99 is not 0.4.17" in caplog.text
        assert g.adapter._context is not None
        manager = g.adapter._context.request_interfaces[0].token_interface
        assert "_deduplicate_message" not in vars(manager)
        ok = await post(cli, f"{g.uri}/readings/kitchen", b'{"t": 1}', 50)
        assert ok.code == Code.CHANGED
    finally:
        await g.stop()


async def test_well_known_core_is_served_block_wise_from_one_rendering(
        gw: Gateway, cli: Context) -> None:
    for i in range(40):
        await post(cli, f"{gw.uri}/readings/device-{i:02d}", b'{"t": 1}', 50)
    whole = await cli.request(Message(code=Code.GET, uri=f"{gw.uri}/.well-known/core")).response
    assert len(whole.payload) > 1024
    small = Message(code=Code.GET, uri=f"{gw.uri}/.well-known/core")
    small.remote.maximum_block_size_exp = 0  # 16-byte blocks, reassembled by the client
    blocks = await asyncio.wait_for(cli.request(small).response, 30)
    assert blocks.payload == whole.payload
    beyond = Message(code=Code.GET, uri=f"{gw.uri}/.well-known/core", block2=(10_000, False, 0))
    assert (await _raw_request(cli, beyond)).code == Code.BAD_REQUEST


# -- the codec, property-based: only DecodeError, whatever it is given --------------------------

#: every content format the codec takes, and one it does not
FORMATS = (codec.TEXT, codec.JSON, codec.CBOR, codec.SENML_JSON, codec.SENML_CBOR, 41)
_labels = st.sampled_from(["ts", "units", "v", "u", "bn", "bt", "bu", "bv", "bs", "n", "t",
                           "vs", "vb", "s", "vd", "ut", "x_", "temperature", "°C"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**600, 2**600), st.floats(),
    st.text(max_size=12), st.binary(max_size=8), _labels,
    st.sampled_from(["Cel", "°C", "%", "kWh", "hPa", "furlongs", 1e308, -1e308, 10**400]))
_keys = st.one_of(_labels, st.text(max_size=8), st.integers(-8, 9), st.integers(),
                  st.booleans(), st.binary(max_size=4))
_docs = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=6)), max_leaves=40)


def _decode_all(fmt: int, payload: bytes) -> None:
    for call in (lambda: codec.decode(fmt, payload, "coap:x", 1.7e9, metric="m", unit="Cel"),
                 lambda: codec.decode(fmt, payload, "coap:x", 1.7e9),
                 lambda: codec.decode_pack(fmt, payload, "coap", 1.7e9)):
        try:
            call()
        except DecodeError as exc:
            assert exc.reason in REASONS, exc.reason


def _json_safe(doc: Any) -> Any:
    """``doc`` with what JSON cannot carry (bytes, non-text keys) made text."""
    if isinstance(doc, dict):
        return {str(k): _json_safe(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_json_safe(v) for v in doc]
    return doc.hex() if isinstance(doc, bytes) else doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), payload=st.binary(max_size=300))
def test_codec_raises_only_its_own_error_on_arbitrary_bytes(fmt: int, payload: bytes) -> None:
    _decode_all(fmt, payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), doc=_docs, tag=st.sampled_from([None, 0, 1, 2, 4, 30, 35,
                                                                     258, 28, 55799]))
def test_codec_raises_only_its_own_error_on_arbitrary_structures(fmt: int, doc: Any,
                                                                  tag: int | None) -> None:
    as_cbor = cbor2.dumps(doc if tag is None else cbor2.CBORTag(tag, doc))
    _decode_all(fmt, as_cbor)
    _decode_all(fmt, json.dumps(_json_safe(doc), allow_nan=True).encode())
    if isinstance(doc, (dict, list)):
        _decode_all(fmt, b"[" * 3000 + json.dumps(_json_safe(doc)).encode() + b"]" * 3000)
        _decode_all(fmt, b"\x81" * 3000 + as_cbor)
