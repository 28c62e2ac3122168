"""The CoAP server side: devices POST or PUT readings to ``/<path>/<device id>``.

Answers (RFC 7252 codes):

- 2.04 Changed: the readings are durable (the sink's ``accept`` returned True).
- 5.03 Service Unavailable with Max-Age: the outbox refused; retry after Max-Age seconds.
- 4.00 Bad Request with a diagnostic payload: the body could not be decoded.
- 4.15 Unsupported Content-Format: not JSON, CBOR, SenML+JSON or SenML+CBOR.
- 4.13 Request Entity Too Large with Size1: the body (or the block-wise transfer under
  way) is larger than ``max_payload``; refused before anything is parsed or spooled.
- 4.08 Request Entity Incomplete: a Block1 block whose predecessors the gateway does not
  hold (never sent, or the transfer was forgotten: see :class:`Block1Spool`); 4.00 for a
  block of the wrong size or with SZX 7 (BERT, which CoAP over UDP does not have).
- 4.02 Bad Option: a critical option the gateway does not know; 5.05 for proxy options.
- 4.01 Unauthorized: OSCORE is required (or the device has a context) and the request
  carries no authenticated claims; 4.03 Forbidden: claims of another device.
- 4.04 Not Found: malformed device id, or an unknown device when ``accept_unknown`` is off.

Authorisation is checked here, in the resource, before block-wise reassembly: aiocoap's
OSCORE site wrapper lets plain requests through to the resources unchanged.

Block-wise bodies are reassembled here too, in a spool bounded in transfers and age
(aiocoap's own keeps every transfer for 93 s, however many), and /.well-known/core is
served block by block from one rendering instead of a copy cached per requester.
Bad input is logged through :class:`gateway.logs.InputLog`: at most one line a minute
per source (the device if the registry knows it, else the sender's address) and reason.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from typing import Any

from aiocoap import Message, interfaces, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.util.linkformat import Link, LinkFormat

from gateway.adapters.coap import codec
from gateway.adapters.coap.config import NATIVE_ID
from gateway.adapters.coap.metrics import CoapMetrics
from gateway.adapters.coap.problems import host
from gateway.logs import InputLog
from gateway.payloads import DecodeError
from gateway.reading import Reading

Accept = Callable[[Sequence[Reading]], Awaitable[bool]]

#: link attribute values for the readings resources
READINGS_RT = "gateway.readings"
READINGS_CT = " ".join(str(f) for f in codec.READING_FORMATS)
SENML_CT = " ".join(str(f) for f in codec.SENML_FORMATS)
#: devices seen since start that /.well-known/core lists (bounded: ids come from the network)
_MAX_LISTED = 1000
#: block-wise transfers reassembled at once, at most; and seconds one is kept after a block
MAX_TRANSFERS, TRANSFER_LIFETIME = 32, 60.0
#: option numbers aiocoap knows; a critical one outside them gets 4.02 (RFC 7252 5.4.1)
_KNOWN_OPTIONS = frozenset(int(n) for n in OptionNumber)
_PROXY_OPTIONS = frozenset({int(OptionNumber.PROXY_URI), int(OptionNumber.PROXY_SCHEME)})


def _diagnostic(code: Code, text: str, **options: Any) -> Message:
    # RFC 7252 section 5.5.2: a diagnostic payload is UTF-8 text without a Content-Format
    return Message(code=code, payload=text.encode("utf-8", "replace")[:512], **options)


class BlockError(Exception):
    """A Block1 block that cannot be taken: ``code`` is the answer, ``reason`` its label."""

    def __init__(self, code: Code, reason: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.reason = reason


class Block1Spool:
    """Request bodies arriving block-wise (RFC 7959 Block1), bounded.

    At most ``max_transfers`` at once (a new one beyond that evicts the oldest), each
    forgotten ``lifetime`` seconds after its last block; with each body bounded by
    ``max_payload`` before it gets here, the spool holds at most ``max_transfers *
    max_payload`` bytes. A transfer is keyed by sender, method, path, Content-Format and
    Request-Tag.
    """

    def __init__(self, max_transfers: int = MAX_TRANSFERS, lifetime: float = TRANSFER_LIFETIME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_transfers = max_transfers
        self.lifetime = lifetime
        self._clock = clock
        #: key → [time of the last block, body so far]; insertion order is age order
        self._transfers: dict[Hashable, tuple[float, bytearray]] = {}

    def __len__(self) -> int:
        return len(self._transfers)

    @staticmethod
    def key(req: Message) -> Hashable:
        fmt = req.opt.content_format
        return (req.remote.blockwise_key, int(req.code), tuple(req.opt.uri_path),
                None if fmt is None else int(fmt), tuple(req.opt.request_tag))

    def feed(self, req: Message) -> bytes | None:
        """The whole body once the last block is in; None while more are to come."""
        block = req.opt.block1
        now = self._clock()
        self._expire(now)
        key = self.key(req)
        payload: bytes = req.payload
        if block.more and len(payload) != block.size:
            self._transfers.pop(key, None)
            raise BlockError(Code.BAD_REQUEST, "bad_block",
                             f"block {block.block_number} carries {len(payload)} bytes, not "
                             f"the {block.size} its Block1 option announces")
        if block.block_number == 0:
            self._transfers.pop(key, None)  # a new transfer replaces an unfinished one
            if not block.more:
                return payload
            while len(self._transfers) >= self.max_transfers:
                del self._transfers[next(iter(self._transfers))]
            self._transfers[key] = (now, bytearray(payload))
            return None
        entry = self._transfers.pop(key, None)
        if entry is None or len(entry[1]) != block.start:
            raise BlockError(Code.REQUEST_ENTITY_INCOMPLETE, "incomplete_block",
                             f"block {block.block_number} does not follow a block this "
                             "gateway holds; start again at block 0")
        body = entry[1]
        body += payload
        if not block.more:
            return bytes(body)
        self._transfers[key] = (now, body)  # to the end: the most recently fed
        return None

    def _expire(self, now: float) -> None:
        cutoff = now - self.lifetime
        while self._transfers:
            oldest = next(iter(self._transfers))
            if self._transfers[oldest][0] >= cutoff:
                break
            del self._transfers[oldest]


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
                 input_log: InputLog, knows: Callable[[str], bool]) -> None:
        super().__init__()
        self._adapter = adapter
        self.path = path
        self._accept = accept
        self.policy = policy
        self._max_payload = max_payload
        self._max_age = max(1, round(retry_after))
        self._m = metrics
        self._input_log = input_log
        self._knows = knows
        self._seen: dict[str, None] = dict.fromkeys(sorted(policy.declared | policy.protected))
        #: bumped whenever the links change: /.well-known/core renders again only then
        self.links_version = 0
        self.spool = Block1Spool()

    # -- discovery --------------------------------------------------------------------------

    def get_resources_as_linkheader(self) -> LinkFormat:
        """For /.well-known/core: the collection, and the per-device resources of declared,
        protected and seen devices."""
        links = [Link(f"/{self.path}", rt=READINGS_RT, ct=SENML_CT)]
        links += [Link(f"/{self.path}/{native}", rt=READINGS_RT, ct=READINGS_CT)
                  for native in self._seen]
        return LinkFormat(links)

    # -- bad input ----------------------------------------------------------------------------

    def answered(self, code: str) -> None:
        """Count an answer given on this resource's behalf (by code, e.g. ``4.02``)."""
        self._m.requests.labels(self._adapter, code).inc()

    def refused(self, req: Message, native: str | None, reason: str, msg: str,
                 *args: Any) -> None:
        """Count ``reason`` and log one line a minute per source: the device if the
        registry knows it, else the sender's address (invented ids share their sender's)."""
        self._m.malformed.labels(self._adapter, reason).inc()
        device = f"{self._adapter}:{native}" if native else ""
        source = device if device and self._knows(device) else host(req.remote)
        self._input_log.warning(source, reason, "coap %s: " + msg + " (from %s for %s)",
                                self._adapter, *args, host(req.remote),
                                device or f"/{self.path}")

    # -- requests ---------------------------------------------------------------------------

    async def render_to_pipe(self, pipe: Any) -> None:
        """Refuse what must not be spooled, reassemble Block1 transfers, then render."""
        req = pipe.request
        refusal = self._precheck(req)
        if refusal is not None:
            self._m.requests.labels(self._adapter, str(refusal.code.dotted)).inc()
            pipe.add_response(refusal, is_last=True)
            return
        block1 = req.opt.block1
        if block1 is None:
            response = await self._render(req, req.payload)  # the common case: one datagram
        else:
            try:
                body = self.spool.feed(req)
            except BlockError as exc:
                native = req.opt.uri_path[1] if len(req.opt.uri_path) == 2 else None
                self.refused(req, native, exc.reason, "%s", exc)
                self._m.requests.labels(self._adapter, str(exc.code.dotted)).inc()
                pipe.add_response(_diagnostic(exc.code, str(exc)), is_last=True)
                return
            if body is None:
                self._m.requests.labels(self._adapter, "2.31").inc()
                pipe.add_response(Message(code=Code.CONTINUE, block1=block1), is_last=True)
                return
            response = await self._render(req, body)
            response.opt.block1 = block1
        block2 = req.opt.block2
        if block2 is not None and len(response.payload) > block2.size:
            # only diagnostics are this long: the beginning of one is still a diagnostic
            response.payload = response.payload[:block2.size]
        pipe.add_response(response, is_last=True)

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
            self.refused(req, native, "unsupported_format", "content format %s refused",
                          "none" if fmt is None else int(fmt))
            return _diagnostic(Code.UNSUPPORTED_CONTENT_FORMAT,
                               f"/{self.path} takes SenML packs (110, 112) whose base names "
                               f"name the devices; post other formats to /{self.path}/<id>")
        if fmt is not None and int(fmt) not in codec.READING_FORMATS:
            self.refused(req, native, "unsupported_format", "content format %d refused",
                          int(fmt))
            return _diagnostic(Code.UNSUPPORTED_CONTENT_FORMAT,
                               f"content format {int(fmt)} is not supported; use 50 (JSON), 60 "
                               "(CBOR), 110 (SenML+JSON) or 112 (SenML+CBOR)")
        block1 = req.opt.block1
        if block1 is not None and block1.size_exponent == 7:
            self.refused(req, native, "bad_block", "Block1 with SZX 7 (BERT) refused")
            return _diagnostic(Code.BAD_REQUEST, "Block1 SZX 7 (BERT) is not defined for CoAP "
                               "over UDP; use 0 to 6 (16 to 1024 bytes)")
        # the whole body's size is known only at the last block: refuse as soon as the
        # announced size (Size1) or the bytes up to this block exceed the bound
        size = len(req.payload)
        if block1 is not None:
            size += block1.start
        announced = req.opt.size1 or 0
        if size > self._max_payload or announced > self._max_payload:
            self.refused(req, native, "oversized", "refused %d+ bytes (max_payload %d)",
                          max(size, announced), self._max_payload)
            return _diagnostic(Code.REQUEST_ENTITY_TOO_LARGE,
                               f"payload larger than {self._max_payload} bytes",
                               size1=self._max_payload)
        return None

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        """Yes: readings are decoded from the whole body."""
        return True

    async def render(self, request: Message) -> Message:
        """Decode, make durable, then answer: 2.04 only after ``accept`` returned True."""
        return await self._render(request, request.payload)

    async def _render(self, request: Message, payload: bytes) -> Message:
        path = request.opt.uri_path
        native = path[1] if len(path) == 2 else None
        device = f"{self._adapter}:{native}" if native else f"/{self.path}"
        fmt = request.opt.content_format
        fmt_n = codec.JSON if fmt is None else int(fmt)
        try:
            if native is None:
                readings = codec.decode_pack(fmt_n, payload, self._adapter, time.time())
            else:
                readings = codec.decode(fmt_n, payload, device, time.time())
        except DecodeError as exc:
            self.refused(request, native, exc.reason, "bad payload (%s): %.200s", exc.reason,
                          exc)
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
                self.links_version += 1
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
        #: (links version, rendering) of /.well-known/core without a query or Accept
        self._wkc_cache: tuple[int, Message] | None = None

    def get_resources_as_linkheader(self) -> LinkFormat:
        """Links of every resource, for /.well-known/core."""
        return self.readings.get_resources_as_linkheader()

    async def render_to_pipe(self, pipe: Any) -> None:
        """Route the request by its first path segment."""
        req = pipe.request
        refusal = self._check_options(req)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        path = req.opt.uri_path
        if path and path[0] == self.readings.path:
            await self.readings.render_to_pipe(pipe)
        elif path == (".well-known", "core"):
            pipe.add_response(await self._well_known_core(req), is_last=True)
        else:
            pipe.add_response(_diagnostic(Code.NOT_FOUND, "no such resource; see "
                                          "/.well-known/core"), is_last=True)

    def _check_options(self, req: Message) -> Message | None:
        for opt in req.opt.option_list():
            number = int(opt.number)
            if number in _PROXY_OPTIONS:
                self.readings.answered("5.05")
                return _diagnostic(Code.PROXYING_NOT_SUPPORTED, "this gateway is not a proxy")
            if number & 1 and number not in _KNOWN_OPTIONS:  # odd numbers are critical
                self.readings.refused(req, None, "bad_option", "unknown critical option %d",
                                       number)
                self.readings.answered("4.02")
                return _diagnostic(Code.BAD_OPTION, f"critical option {number} is not "
                                   "supported")
        return None

    async def _well_known_core(self, req: Message) -> Message:
        """The link format, one block at a time when asked (RFC 7959 Block2), without
        keeping a copy per requester: every block is cut from the same rendering."""
        if req.code != Code.GET:
            return _diagnostic(Code.METHOD_NOT_ALLOWED, "use GET")
        if req.opt.uri_query or req.opt.accept is not None:
            full = await self._wkc.render(req)  # filtered or another format: for this request
        else:
            version = self.readings.links_version
            if self._wkc_cache is None or self._wkc_cache[0] != version:
                self._wkc_cache = (version, await self._wkc.render(req))
            full = self._wkc_cache[1]
        block2 = req.opt.block2
        szx = min(6, req.remote.maximum_block_size_exp if block2 is None
                  else block2.size_exponent)
        size = 2 ** (szx + 4)
        number = 0 if block2 is None else block2.block_number
        if block2 is None and len(full.payload) <= req.remote.maximum_payload_size:
            return Message(code=full.code, payload=full.payload,
                           content_format=full.opt.content_format)
        start = number * size
        if start >= len(full.payload) and number:
            return _diagnostic(Code.BAD_REQUEST, "block beyond the end of /.well-known/core")
        more = start + size < len(full.payload)
        return Message(code=full.code, payload=full.payload[start:start + size],
                       content_format=full.opt.content_format, block2=(number, more, szx))

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        """Unused: :meth:`render_to_pipe` routes before any assembly."""
        return False

    async def render(self, request: Message) -> Message:
        """Unused: :meth:`render_to_pipe` routes every request."""
        raise NotImplementedError
