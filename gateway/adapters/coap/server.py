"""The CoAP server side: devices POST or PUT readings to ``/<path>/<device id>``.

Answers (RFC 7252 codes):

- 2.04 Changed: the readings are durable (the sink's ``accept`` returned True).
- 5.03 Service Unavailable with Max-Age: the outbox refused; retry after Max-Age seconds.
- 4.00 Bad Request with a diagnostic payload: the body could not be decoded.
- 4.15 Unsupported Content-Format: not JSON, CBOR, SenML+JSON or SenML+CBOR.
- 4.13 Request Entity Too Large with Size1: the body (or the block-wise transfer under
  way) is larger than ``max_payload``; refused before anything is parsed or spooled.
- 4.01 Unauthorized: OSCORE is required (or the device has a context) and the request
  carries no authenticated claims; 4.03 Forbidden: claims of another device.
- 4.04 Not Found: malformed device id, or an unknown device when ``accept_unknown`` is off.

Authorisation is checked here, in the resource, before block-wise reassembly: aiocoap's
OSCORE site wrapper lets plain requests through to the resources unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from aiocoap import Message, interfaces, resource
from aiocoap.numbers.codes import Code
from aiocoap.util.linkformat import Link, LinkFormat

from gateway.adapters.coap import codec
from gateway.adapters.coap.config import NATIVE_ID
from gateway.adapters.coap.metrics import CoapMetrics
from gateway.reading import Reading

Accept = Callable[[Sequence[Reading]], Awaitable[bool]]

#: link attribute values for the readings resources
READINGS_RT = "gateway.readings"
READINGS_CT = " ".join(str(f) for f in codec.READING_FORMATS)
SENML_CT = " ".join(str(f) for f in codec.SENML_FORMATS)
#: devices seen since start that /.well-known/core lists (bounded: ids come from the network)
_MAX_LISTED = 1000


def _diagnostic(code: Code, text: str, **options: Any) -> Message:
    # RFC 7252 section 5.5.2: a diagnostic payload is UTF-8 text without a Content-Format
    return Message(code=code, payload=text.encode("utf-8")[:512], **options)


class Policy:
    """Who may post readings for which device."""

    def __init__(self, accept_unknown: bool, required: bool, declared: Collection[str],
                 protected: Collection[str]) -> None:
        self.accept_unknown = accept_unknown
        self.required = required
        self.declared = frozenset(declared)
        #: devices that have an OSCORE context: they must use it
        self.protected = frozenset(protected)

    def check(self, native: str, claims: Sequence[str]) -> Message | None:
        """A refusal for a request about ``native`` with ``claims``, or None to go on."""
        if claims:
            if native not in claims:
                return _diagnostic(Code.FORBIDDEN, f"this security context is not device "
                                   f"{native!r}'s")
            return None
        if self.required or native in self.protected:
            return _diagnostic(Code.UNAUTHORIZED, "OSCORE protection required")
        if not self.accept_unknown and native not in self.declared:
            return _diagnostic(Code.NOT_FOUND, f"unknown device {native!r}")
        return None


class ReadingsResource(resource.Resource):  # type: ignore[misc]
    """``/<path>/<native id>``: POST or PUT readings of one device.

    Routed to by :class:`Root` with the request's full Uri-Path (``<path>``, ``<id>``).
    """

    def __init__(self, adapter: str, path: str, accept: Accept, policy: Policy,
                 max_payload: int, retry_after: float, metrics: CoapMetrics,
                 log: logging.Logger) -> None:
        super().__init__()
        self._adapter = adapter
        self.path = path
        self._accept = accept
        self.policy = policy
        self._max_payload = max_payload
        self._max_age = max(1, round(retry_after))
        self._m = metrics
        self._log = log
        self._seen: dict[str, None] = dict.fromkeys(sorted(policy.declared | policy.protected))

    # -- discovery --------------------------------------------------------------------------

    def get_resources_as_linkheader(self) -> LinkFormat:
        """For /.well-known/core: the collection, and the per-device resources of declared,
        protected and seen devices."""
        links = [Link(f"/{self.path}", rt=READINGS_RT, ct=SENML_CT)]
        links += [Link(f"/{self.path}/{native}", rt=READINGS_RT, ct=READINGS_CT)
                  for native in self._seen]
        return LinkFormat(links)

    # -- requests ---------------------------------------------------------------------------

    async def render_to_pipe(self, pipe: Any) -> None:
        """Refuse what must not be spooled, then let aiocoap reassemble blocks and render."""
        req = pipe.request
        refusal = self._precheck(req)
        if refusal is not None:
            self._m.requests.labels(self._adapter, str(refusal.code.dotted)).inc()
            pipe.add_response(refusal, is_last=True)
            return
        if req.opt.block1 is None and req.opt.block2 is None:
            # the common case, one datagram: skip the block-wise caches' key building
            pipe.add_response(await self.render(req), is_last=True)
            return
        await interfaces.Resource._render_to_pipe(self, pipe)

    def _precheck(self, req: Message) -> Message | None:
        path = req.opt.uri_path
        native: str | None
        if len(path) == 1:
            native = None  # the collection: SenML packs whose base names name the devices
        elif len(path) == 2 and NATIVE_ID.match(path[1]):
            native = path[1]
        else:
            return _diagnostic(Code.NOT_FOUND, f"post readings to /{self.path}/<device id>")
        if req.code not in (Code.POST, Code.PUT):
            return _diagnostic(Code.METHOD_NOT_ALLOWED, "use POST or PUT")
        claims = req.remote.authenticated_claims
        if native is not None:
            refusal = self.policy.check(native, claims)
            if refusal is not None:
                return refusal
        elif not claims and self.policy.required:
            return _diagnostic(Code.UNAUTHORIZED, "OSCORE protection required")
        fmt = req.opt.content_format
        if native is None and (fmt is None or int(fmt) not in codec.SENML_FORMATS):
            self._m.malformed.labels(self._adapter, "unsupported_format").inc()
            return _diagnostic(Code.UNSUPPORTED_CONTENT_FORMAT,
                               f"/{self.path} takes SenML packs (110, 112) whose base names "
                               f"name the devices; post other formats to /{self.path}/<id>")
        if fmt is not None and int(fmt) not in codec.READING_FORMATS:
            self._m.malformed.labels(self._adapter, "unsupported_format").inc()
            return _diagnostic(Code.UNSUPPORTED_CONTENT_FORMAT,
                               f"content format {int(fmt)} is not supported; use 50 (JSON), 60 "
                               "(CBOR), 110 (SenML+JSON) or 112 (SenML+CBOR)")
        # the whole body's size is known only at the last block: refuse as soon as the
        # announced size (Size1) or the bytes up to this block exceed the bound
        size = len(req.payload)
        if req.opt.block1 is not None:
            size += req.opt.block1.start
        announced = req.opt.size1 or 0
        if size > self._max_payload or announced > self._max_payload:
            self._m.malformed.labels(self._adapter, "oversized").inc()
            self._log.warning("coap: refused %d+ bytes from %s for %s (max_payload %d)",
                              max(size, announced), req.remote.hostinfo,
                              native or "a SenML pack", self._max_payload)
            return _diagnostic(Code.REQUEST_ENTITY_TOO_LARGE,
                               f"payload larger than {self._max_payload} bytes",
                               size1=self._max_payload)
        return None

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        """Yes: readings are decoded from the whole body."""
        return True

    async def render(self, request: Message) -> Message:
        """Decode, make durable, then answer: 2.04 only after ``accept`` returned True."""
        path = request.opt.uri_path
        native = path[1] if len(path) == 2 else None
        device = f"{self._adapter}:{native}" if native else f"/{self.path}"
        fmt = request.opt.content_format
        fmt_n = codec.JSON if fmt is None else int(fmt)
        try:
            if native is None:
                readings = codec.decode_pack(fmt_n, request.payload, self._adapter, time.time())
            else:
                readings = codec.decode(fmt_n, request.payload, device, time.time())
        except codec.PayloadError as exc:
            self._m.malformed.labels(self._adapter, exc.reason).inc()
            self._log.warning("coap: bad payload from %s for %s (%s): %s",
                              request.remote.hostinfo, device, exc.reason, exc)
            self._m.requests.labels(self._adapter, "4.00").inc()
            return _diagnostic(Code.BAD_REQUEST, str(exc))
        if native is None:
            natives = list(dict.fromkeys(r.device.split(":", 1)[1] for r in readings))
            claims = request.remote.authenticated_claims
            for one in natives:
                # one device the sender may not post for refuses the whole pack
                refusal = self.policy.check(one, claims)
                if refusal is not None:
                    self._m.requests.labels(self._adapter, str(refusal.code.dotted)).inc()
                    return refusal
        else:
            natives = [native]
        if not await self._accept(readings):
            self._m.requests.labels(self._adapter, "5.03").inc()
            return _diagnostic(Code.SERVICE_UNAVAILABLE, "gateway queue full; retry later",
                               max_age=self._max_age)
        for one in natives:
            if one not in self._seen and len(self._seen) < _MAX_LISTED:
                self._seen[one] = None
        self._m.requests.labels(self._adapter, "2.04").inc()
        return Message(code=Code.CHANGED)


class Root(interfaces.Resource):  # type: ignore[misc]
    """The server's resource tree: ``/<path>/<id>`` and ``/.well-known/core``.

    A dispatch on the first Uri-Path segment instead of aiocoap's ``Site``, which deep-copies
    every request to strip its path: on the hot path that copy cost more than the decoding.
    """

    def __init__(self, readings: ReadingsResource) -> None:
        super().__init__()
        self.readings = readings
        self._wkc = resource.WKCResource(self.get_resources_as_linkheader, impl_info=None)

    def get_resources_as_linkheader(self) -> LinkFormat:
        """Links of every resource, for /.well-known/core."""
        return self.readings.get_resources_as_linkheader()

    async def render_to_pipe(self, pipe: Any) -> None:
        """Route the request by its first path segment."""
        path = pipe.request.opt.uri_path
        if path and path[0] == self.readings.path:
            await self.readings.render_to_pipe(pipe)
        elif path == (".well-known", "core"):
            await self._wkc.render_to_pipe(pipe)
        else:
            pipe.add_response(_diagnostic(Code.NOT_FOUND, "no such resource; see "
                                          "/.well-known/core"), is_last=True)

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        """Unused: :meth:`render_to_pipe` routes before any assembly."""
        return False

    async def render(self, request: Message) -> Message:
        """Unused: :meth:`render_to_pipe` routes every request."""
        raise NotImplementedError
