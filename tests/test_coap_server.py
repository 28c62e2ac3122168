"""Devices post readings to the CoAP adapter: a real aiocoap client on loopback, a real outbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.util import linkformat

from tests.coap_helpers import Gateway, eventually, post, udp_port


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    g = await Gateway(tmp_path, {"max_payload": 4096}).start()
    try:
        yield g
    finally:
        await g.stop()


NOW = float(int(time.time()) - 60)  # device clock: a minute ago, within max_age
JSON_BODY = json.dumps({"temperature": 21.5, "humidity": 40, "ts": NOW,
                        "units": {"temperature": "°C", "humidity": "%"}}).encode()
CBOR_BODY = cbor2.dumps({"temperature": 21.5, "humidity": 40, "ts": NOW,
                         "units": {"temperature": "°C", "humidity": "%"}})
SENML = [{"bn": "kitchen/", "bt": NOW, "n": "temperature", "u": "Cel", "v": 21.5},
         {"n": "humidity", "u": "%RH", "v": 40}]
SENML_JSON_BODY = json.dumps(SENML).encode()
# RFC 8428 integer labels: bn=-2, bt=-3, n=0, u=1, v=2
SENML_CBOR_BODY = cbor2.dumps([{-2: "kitchen/", -3: NOW, 0: "temperature", 1: "Cel", 2: 21.5},
                               {0: "humidity", 1: "%RH", 2: 40}])


@pytest.mark.parametrize("fmt,body", [(50, JSON_BODY), (60, CBOR_BODY), (110, SENML_JSON_BODY),
                                      (112, SENML_CBOR_BODY)],
                         ids=["json", "cbor", "senml+json", "senml+cbor"])
async def test_every_content_format_is_acknowledged_only_with_readings_in_the_outbox(
        gw: Gateway, cli: Context, fmt: int, body: bytes) -> None:
    response = await post(cli, f"{gw.uri}/readings/kitchen", body, fmt)
    assert response.code == Code.CHANGED
    # 2.04 came after accept returned True: the readings are committed already
    stored = await gw.stored()
    got = sorted((r.device, r.metric, r.value, r.unit) for r in stored)
    assert got == [("coap:kitchen", "humidity", 40, "%RH"),
                   ("coap:kitchen", "temperature", 21.5, "Cel")]
    assert all(abs(r.ts - NOW) < 0.01 for r in stored)
    assert gw.metric("gateway_coap_requests_total", adapter="coap", code="2.04") == 1


async def test_put_is_accepted_like_post_and_receive_time_is_used_without_ts(
        gw: Gateway, cli: Context) -> None:
    before = time.time()
    response = await post(cli, f"{gw.uri}/readings/door-1", b'{"open": true, "battery": 87}',
                          50, code=Code.PUT)
    assert response.code == Code.CHANGED
    stored = {r.metric: r for r in await gw.stored()}
    assert stored["open"].value is True
    assert stored["battery"].value == 87
    assert before - 0.01 <= stored["open"].ts <= time.time() + 0.01


async def test_senml_relative_times_and_base_values_resolve(gw: Gateway, cli: Context) -> None:
    pack = [{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW, "bu": "W", "bv": 100,
             "n": "power", "v": 5, "t": -10},
            {"n": "power", "v": 7}]
    response = await post(cli, f"{gw.uri}/readings/meter-7", json.dumps(pack).encode(), 110)
    assert response.code == Code.CHANGED
    stored = sorted(await gw.stored(), key=lambda r: r.ts)
    assert [(r.metric, r.value, r.unit) for r in stored] == [("power", 105, "W"),
                                                             ("power", 107, "W")]
    assert abs(stored[0].ts - (NOW - 10)) < 0.01 and abs(stored[1].ts - NOW) < 0.01


@pytest.mark.parametrize("fmt,body,needle", [
    (50, b'{"temperature": 21.5', "not valid JSON"),
    (50, b'{"temperature": [1, 2]}', "no numeric"),
    (50, b'{"temperature": NaN}', "NaN"),
    (50, b'{"temperature": 20, "units": {"temperature": "furlongs"}}', "unknown unit"),
    (60, b"\xff\xff\x00", "not valid CBOR"),
    (110, b'{"bn": 3}', "array of records"),
    (112, cbor2.dumps([{0: "t", 2: "warm"}]), "v must be"),
    (110, b"[]", "SenML pack"),
], ids=["json-truncated", "json-list-value", "json-nan", "unit", "cbor", "senml-bn",
        "senml-cbor-v", "senml-empty"])
async def test_undecodable_payload_gets_400_with_a_diagnostic_and_is_counted(
        gw: Gateway, cli: Context, fmt: int, body: bytes, needle: str) -> None:
    response = await post(cli, f"{gw.uri}/readings/kitchen", body, fmt)
    assert response.code == Code.BAD_REQUEST
    assert needle in response.payload.decode()
    assert await gw.stored() == []
    assert sum(s.value for m in gw.metrics.collect() if m.name == "gateway_coap_malformed"
               for s in m.samples if s.name.endswith("_total")) == 1
    # the adapter keeps serving after garbage
    ok = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert ok.code == Code.CHANGED


async def test_other_content_formats_get_415(gw: Gateway, cli: Context) -> None:
    response = await post(cli, f"{gw.uri}/readings/kitchen", b"<x/>", 41)  # application/xml
    assert response.code == Code.UNSUPPORTED_CONTENT_FORMAT
    assert b"50 (JSON)" in response.payload
    assert await gw.stored() == []
    assert gw.metric("gateway_coap_malformed_total", adapter="coap",
                     reason="unsupported_format") == 1


async def test_oversized_payload_is_refused_with_413_before_anything_is_parsed(
        gw: Gateway, cli: Context) -> None:
    # 4 KiB bound; the client sends this block-wise and is stopped at the block crossing it
    body = json.dumps({f"m{i}": i for i in range(2000)}).encode()
    assert len(body) > 4096
    response = await post(cli, f"{gw.uri}/readings/kitchen", body, 50)
    assert response.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert response.opt.size1 == 4096
    assert gw.sink is not None and gw.sink.calls == 0
    assert gw.metric("gateway_coap_malformed_total", adapter="coap", reason="oversized") == 1


async def test_announced_size1_over_the_bound_is_refused_at_the_first_block(
        gw: Gateway, cli: Context) -> None:
    response = await post(cli, f"{gw.uri}/readings/kitchen", b'{"a": 1}', 50, size1=10_000_000)
    assert response.code == Code.REQUEST_ENTITY_TOO_LARGE


async def test_large_senml_pack_arrives_block_wise_and_is_stored_whole(
        gw: Gateway, cli: Context) -> None:
    pack = [{"bn": "bulk/", "bt": NOW, "n": "temperature", "u": "Cel", "v": 20.0}]
    pack += [{"n": "temperature", "t": i, "v": 20.0 + i / 100} for i in range(1, 60)]
    body = json.dumps(pack).encode()
    assert 1024 < len(body) < 4096  # more than one 1024-byte block, within max_payload
    msg = Message(code=Code.POST, uri=f"{gw.uri}/readings/bulk", payload=body,
                  content_format=110)
    msg.remote.maximum_block_size_exp = 2  # 64-byte blocks: many Block1 exchanges
    response = await cli.request(msg).response
    assert response.code == Code.CHANGED
    stored = await gw.stored()
    assert len(stored) == 60
    assert sorted(r.value for r in stored) == sorted(20.0 + i / 100 for i in range(60))
    assert gw.sink is not None and gw.sink.calls == 1  # one accept for the reassembled body


async def test_outbox_refusal_gets_503_with_max_age(gw: Gateway, cli: Context) -> None:
    assert gw.sink is not None
    gw.sink.refuse = True  # what a full queue answers (hard to provoke on time)
    response = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert response.code == Code.SERVICE_UNAVAILABLE
    assert response.opt.max_age == 5
    gw.sink.refuse = False
    again = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert again.code == Code.CHANGED
    assert [r.value for r in await gw.stored()] == [20]


async def test_well_known_core_lists_the_readings_resources(gw: Gateway, cli: Context) -> None:
    await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    response = await cli.request(Message(code=Code.GET,
                                         uri=f"{gw.uri}/.well-known/core")).response
    assert response.code == Code.CONTENT
    assert response.opt.content_format == 40
    links = {link.href: link for link in linkformat.parse(response.payload.decode()).links}
    assert "/readings/kitchen" in links
    assert links["/readings/kitchen"].rt == ["gateway.readings"]


async def test_bad_paths_and_methods_are_refused(gw: Gateway, cli: Context) -> None:
    bad_id = await post(cli, f"{gw.uri}/readings/..", b"{}", 50)
    assert bad_id.code == Code.NOT_FOUND
    get = await cli.request(Message(code=Code.GET, uri=f"{gw.uri}/readings/kitchen")).response
    assert get.code == Code.METHOD_NOT_ALLOWED
    nowhere = await post(cli, f"{gw.uri}/elsewhere", b"{}", 50)
    assert nowhere.code == Code.NOT_FOUND


async def test_unknown_devices_are_refused_when_only_declared_ones_may_post(
        tmp_path: Path, cli: Context) -> None:
    g = await Gateway(tmp_path, {"accept_unknown": False, "devices": [
        {"id": "known", "address": "coap://127.0.0.1:9"}]}).start()
    try:
        stranger = await post(cli, f"{g.uri}/readings/stranger", b'{"t": 1}', 50)
        assert stranger.code == Code.NOT_FOUND
        known = await post(cli, f"{g.uri}/readings/known", b'{"t": 1}', 50)
        assert known.code == Code.CHANGED
        assert g.directory.declared == {"coap:known": {}}
    finally:
        await g.stop()


async def test_stop_refuses_new_requests_and_releases_the_port(tmp_path: Path,
                                                               cli: Context) -> None:
    g = await Gateway(tmp_path, {}).start()
    port = g.port
    await g.stop()
    # the same port binds again at once: a restarted adapter gets it back
    again = await Gateway(tmp_path / "again", {"port": port}).start()
    try:
        response = await post(cli, f"{again.uri}/readings/x", b'{"t": 1}', 50)
        assert response.code == Code.CHANGED
    finally:
        await again.stop()


async def test_stop_finishes_requests_being_committed_and_refuses_new_ones(
        tmp_path: Path, cli: Context) -> None:
    g = Gateway(tmp_path, {})
    await g.start()
    assert g.sink is not None and g.adapter is not None
    # a slow commit: the request below is still waiting for its transaction at stop
    g.sink.hold = asyncio.Event()
    in_flight = asyncio.create_task(post(cli, f"{g.uri}/readings/late", b'{"seq": 1}', 50))
    await eventually(lambda: g.sink is not None and g.sink.calls == 1, what="request arrived")
    stopping = asyncio.create_task(g.adapter.stop())
    await asyncio.sleep(0)
    refused = await post(cli, f"{g.uri}/readings/later", b'{"seq": 2}', 50)
    assert refused.code == Code.SERVICE_UNAVAILABLE
    assert not stopping.done()  # still draining
    g.sink.hold.set()
    assert (await in_flight).code == Code.CHANGED
    await stopping
    assert [(r.device, r.value) for r in await g.stored()] == [("coap:late", 1)]
    g.adapter = None
    await g.stop()


async def test_ipv6_devices_post_to_a_dual_stack_bind(tmp_path: Path, cli: Context) -> None:
    port = udp_port()
    g = await Gateway(tmp_path, {"bind": "::", "port": port}).start()
    try:
        for host in ("[::1]", "127.0.0.1"):
            # no Content-Format: taken as JSON
            response = await post(cli, f"coap://{host}:{port}/readings/v6", b'{"seq": 1}', None)
            assert response.code == Code.CHANGED, host
        assert [r.device for r in await g.stored()] == ["coap:v6", "coap:v6"]
    finally:
        await g.stop()


async def test_senml_pack_posted_to_the_collection_names_its_devices_by_base_name(
        gw: Gateway, cli: Context) -> None:
    pack = [{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW, "n": "temperature", "u": "Cel",
             "v": 19.5},
            {"bn": "hall/", "n": "motion", "vb": True}]
    response = await post(cli, f"{gw.uri}/readings", json.dumps(pack).encode(), 110)
    assert response.code == Code.CHANGED
    got = sorted((r.device, r.metric, r.value) for r in await gw.stored())
    assert got == [("coap:hall", "motion", True),
                   ("coap:urn:dev:mac:0024befffe804ff1", "temperature", 19.5)]
    as_cbor = await post(cli, f"{gw.uri}/readings",
                         cbor2.dumps([{-2: "hall/", 0: "motion", 4: False}]), 112)
    assert as_cbor.code == Code.CHANGED


async def test_collection_refuses_json_and_packs_without_a_device(gw: Gateway,
                                                                  cli: Context) -> None:
    as_json = await post(cli, f"{gw.uri}/readings", b'{"temperature": 20}', 50)
    assert as_json.code == Code.UNSUPPORTED_CONTENT_FORMAT
    nameless = await post(cli, f"{gw.uri}/readings", b'[{"n": "temperature", "v": 20}]', 110)
    assert nameless.code == Code.BAD_REQUEST
    assert b"names no quantity" in nameless.payload
    assert await gw.stored() == []


async def test_garbage_datagrams_do_not_stop_the_server(gw: Gateway, cli: Context) -> None:
    import random
    import socket

    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for _ in range(200):
            raw.sendto(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
                       ("127.0.0.1", gw.port))
        # a CON with a truncated option and a payload marker with no payload
        raw.sendto(bytes([0x40, 0x02, 0x12, 0x34, 0xBD]), ("127.0.0.1", gw.port))
        raw.sendto(bytes([0x40, 0x02, 0x12, 0x35, 0xFF]), ("127.0.0.1", gw.port))
    response = await post(cli, f"{gw.uri}/readings/kitchen", b'{"temperature": 20}', 50)
    assert response.code == Code.CHANGED
    assert [r.value for r in await gw.stored()] == [20]


async def test_start_fails_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("::ffff:127.0.0.1", 0))  # no SO_REUSEPORT: the port stays ours
        port = squatter.getsockname()[1]
        g = Gateway(tmp_path, {"port": port})
        with pytest.raises(OSError, match="in use"):
            await g.start()  # the supervisor restarts the adapter with backoff
        assert g.outbox is not None
        await g.outbox.close()
