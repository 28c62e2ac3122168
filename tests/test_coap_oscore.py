"""OSCORE: per-device contexts from the state directory; real aiocoap OSCORE on both ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiocoap import Context, Message
from aiocoap.credentials import CredentialsMap
from aiocoap.numbers.codes import Code
from aiocoap.oscore import FilesystemSecurityContext, NotAProtectedMessage
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from tests.coap_helpers import Device, DeviceResource, Gateway, client, post, write_oscore_pair


async def _protected_client(gw: Gateway, device_ctx: Path) -> Context:
    c = await client(["oscore", "udp6"])
    c.client_credentials.load_from_dict(
        {f"{gw.uri}/*": {"oscore": {"basedir": str(device_ctx) + "/"}}})
    return c


@pytest.fixture
async def plain() -> AsyncIterator[Context]:
    c = await client()
    try:
        yield c
    finally:
        await c.shutdown()


def _contexts(tmp_path: Path, *devices: str) -> dict[str, Path]:
    """Gateway-side contexts in <state>/coap/oscore/<id>; the devices' copies elsewhere."""
    out = {}
    for i, dev in enumerate(devices):
        write_oscore_pair(tmp_path / "coap" / "oscore" / dev, tmp_path / "devices" / dev,
                          secret=f"secret-of-{dev}-0123", gateway_id=f"{0x10 + i:02x}",
                          device_id=f"{0x20 + i:02x}")
        out[dev] = tmp_path / "devices" / dev
    return out


async def _gateway(tmp_path: Path, **oscore: Any) -> Gateway:
    return await Gateway(tmp_path, {"oscore": {"enabled": True, **oscore}}).start()


async def test_oscore_protected_post_is_accepted(tmp_path: Path) -> None:
    ctxs = _contexts(tmp_path, "valve-1")
    gw = await _gateway(tmp_path, required=True)
    c = await _protected_client(gw, ctxs["valve-1"])
    try:
        response = await post(c, f"{gw.uri}/readings/valve-1", b'{"flow": 1.5}', 50)
        assert response.code == Code.CHANGED
        assert [(r.device, r.metric, r.value) for r in await gw.stored()] == [
            ("coap:valve-1", "flow", 1.5)]
        assert gw.directory.declared == {"coap:valve-1": {}}
    finally:
        await c.shutdown()
        await gw.stop()


async def test_plain_requests_get_401_when_security_is_required(
        tmp_path: Path, plain: Context) -> None:
    _contexts(tmp_path, "valve-1")
    gw = await _gateway(tmp_path, required=True)
    try:
        for dev in ("valve-1", "anyone"):
            response = await post(plain, f"{gw.uri}/readings/{dev}", b'{"flow": 1}', 50)
            assert response.code == Code.UNAUTHORIZED, dev
        assert await gw.stored() == []
        # discovery stays open
        wkc = await plain.request(Message(code=Code.GET,
                                          uri=f"{gw.uri}/.well-known/core")).response
        assert wkc.code == Code.CONTENT and b"/readings/valve-1" in wkc.payload
    finally:
        await gw.stop()


async def test_device_with_a_context_must_use_it_even_when_others_may_post_plainly(
        tmp_path: Path, plain: Context) -> None:
    _contexts(tmp_path, "valve-1")
    gw = await _gateway(tmp_path, required=False)
    try:
        spoof = await post(plain, f"{gw.uri}/readings/valve-1", b'{"flow": 9}', 50)
        assert spoof.code == Code.UNAUTHORIZED
        other = await post(plain, f"{gw.uri}/readings/thermo-3", b'{"temperature": 20}', 50)
        assert other.code == Code.CHANGED
        assert [r.device for r in await gw.stored()] == ["coap:thermo-3"]
    finally:
        await gw.stop()


async def test_a_devices_context_cannot_post_for_another_device(tmp_path: Path) -> None:
    ctxs = _contexts(tmp_path, "valve-1", "valve-2")
    gw = await _gateway(tmp_path, required=True)
    c = await _protected_client(gw, ctxs["valve-1"])
    try:
        response = await post(c, f"{gw.uri}/readings/valve-2", b'{"flow": 1}', 50)
        assert response.code == Code.FORBIDDEN
        assert await gw.stored() == []
    finally:
        await c.shutdown()
        await gw.stop()


async def test_wrong_key_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    _contexts(tmp_path, "valve-1")
    # the device believes in another secret (same ids): decryption fails at the gateway
    forged = tmp_path / "forged"
    write_oscore_pair(tmp_path / "unused", forged, secret="not-the-secret!!", gateway_id="10",
                      device_id="20")
    gw = await _gateway(tmp_path, required=True)
    c = await _protected_client(gw, forged)
    try:
        # the gateway cannot decrypt it and answers 4.00 unprotected (it has no key to
        # protect the answer with), which the device's OSCORE layer rejects in turn
        with pytest.raises(NotAProtectedMessage) as refused:
            await post(c, f"{gw.uri}/readings/valve-1", b'{"flow": 1}', 50)
        assert refused.value.plain_message.code == Code.BAD_REQUEST
        assert await gw.stored() == []
    finally:
        await c.shutdown()
        await gw.stop()


async def test_restarted_adapter_gets_the_context_locks_back(tmp_path: Path) -> None:
    ctxs = _contexts(tmp_path, "valve-1")
    gw = await _gateway(tmp_path, required=True)
    port = gw.port
    await gw.stop()
    again = await Gateway(tmp_path / "second-run", {"port": port, "oscore": {
        "enabled": True, "required": True, "dir": str(tmp_path / "coap" / "oscore")}}).start()
    c = await _protected_client(again, ctxs["valve-1"])
    try:
        response = await post(c, f"{again.uri}/readings/valve-1", b'{"flow": 2}', 50)
        assert response.code == Code.CHANGED
    finally:
        await c.shutdown()
        await again.stop()


class _ClaimsChecking(DeviceResource):
    """A device resource that serves only OSCORE-authenticated requests."""

    async def render_get(self, request: Message) -> Message:
        if not request.remote.authenticated_claims:
            return Message(code=Code.UNAUTHORIZED)
        return await super().render_get(request)


async def test_gateway_observes_an_oscore_protected_device(tmp_path: Path) -> None:
    device = Device()
    _contexts(tmp_path, "node-9")
    sensor = device.add("/s", _ClaimsChecking({"temperature": 30.0}))
    device_sc = FilesystemSecurityContext(str(tmp_path / "devices" / "node-9"))
    device_sc.authenticated_claims = ["gateway"]
    creds = CredentialsMap()
    creds[":gateway"] = device_sc
    device.site = OscoreSiteWrapper(device.site, creds)  # type: ignore[assignment]
    await device.start()
    gw = await Gateway(tmp_path, {"oscore": {"enabled": True}, "devices": [
        {"id": "node-9", "address": device.address, "oscore": True,
         "resources": [{"path": "/s"}]}]}).start()
    try:
        await gw.wait_stored(lambda rs: any(r.value == 30.0 for r in rs))
        sensor.set(temperature=31.0)
        await gw.wait_stored(lambda rs: any(r.value == 31.0 for r in rs))
    finally:
        await gw.stop()
        await device.stop()
        device_sc._destroy()


def test_device_declared_with_oscore_needs_oscore_enabled() -> None:
    from pydantic import ValidationError

    from gateway.adapters.coap.config import CoapConfig

    with pytest.raises(ValidationError, match="oscore.enabled"):
        CoapConfig.model_validate({"type": "coap", "devices": [
            {"id": "n", "address": "coap://127.0.0.1", "oscore": True}]})


async def test_missing_context_for_a_declared_oscore_device_fails_start(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"oscore": {"enabled": True}, "devices": [
        {"id": "ghost", "address": "coap://127.0.0.1:9", "oscore": True}]})
    with pytest.raises(RuntimeError, match="no OSCORE context for device.*ghost"):
        await gw.start()
    assert gw.outbox is not None
    await gw.outbox.close()



async def test_a_pack_naming_another_device_is_refused_whole(tmp_path: Path) -> None:
    ctxs = _contexts(tmp_path, "valve-1", "valve-2")
    gw = await _gateway(tmp_path, required=True)
    c = await _protected_client(gw, ctxs["valve-1"])
    try:
        own = [{"bn": "valve-1/", "n": "flow", "v": 1}]
        mixed = own + [{"bn": "valve-2/", "n": "flow", "v": 2}]
        refused = await post(c, f"{gw.uri}/readings", json.dumps(mixed).encode(), 110)
        assert refused.code == Code.FORBIDDEN
        assert await gw.stored() == []
        accepted = await post(c, f"{gw.uri}/readings", json.dumps(own).encode(), 110)
        assert accepted.code == Code.CHANGED
        assert [r.device for r in await gw.stored()] == ["coap:valve-1"]
    finally:
        await c.shutdown()
        await gw.stop()
