"""``type: coap``: constrained devices over CoAP (aiocoap), as server and as client."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiocoap import Context
from aiocoap.pipe import Pipe, error_to_message, run_driving_pipe

from gateway.adapters.base import Adapter, AdapterConfig, AdapterContext
from gateway.adapters.coap import aiocoap_patch
from gateway.adapters.coap.client import DeviceClient
from gateway.adapters.coap.config import CoapConfig
from gateway.adapters.coap.metrics import coap_metrics
from gateway.adapters.coap.problems import Problems
from gateway.adapters.coap.security import OscoreContexts
from gateway.adapters.coap.server import Policy, ReadingsResource, Root
from gateway.logs import InputLog
from gateway.reading import Command, CommandResult

#: seconds ``stop`` waits for requests whose readings are being made durable


class _Context(Context):  # type: ignore[misc]
    """aiocoap's context, minus one cost: naming each rendering task after ``repr(request)``.

    That repr formats the remote's address (ipaddress parsing, interface lookup) and took
    about a third of the gateway's CPU per request; the task name is only for debugging.
    """

    def render_to_pipe(self, pipe: Pipe) -> None:
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe),
                         name="coap request")


class CoapAdapter(Adapter):
    """Readings in (POST/PUT, observe, poll), commands out (PUT/POST), OSCORE optional."""

    Config = CoapConfig
    config: CoapConfig

    def __init__(self, config: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(config, ctx)
        assert isinstance(config, CoapConfig)
        self._m = coap_metrics(ctx.metrics)
        #: bad input of every kind: one line a minute per (source, reason)
        self._input_log = InputLog(self.log)
        self._aiocoap_log = f"gateway.adapter.{self.prefix}.aiocoap"
        self._problems = Problems(self.prefix, self._input_log, self._count_dropped, self.log,
                                  self._aiocoap_log)
        self.patched: aiocoap_patch.Installed | None = None
        self._context: _Context | None = None
        self._oscore: OscoreContexts | None = None
        self._stopping = asyncio.Event()
        self.readings: ReadingsResource | None = None
        self.clients: dict[str, DeviceClient] = {}
        #: where files sent by ``format: file`` commands are taken from
        self.files_dir = ctx.state_dir / "coap" / "files"

    @property
    def oscore_dir(self) -> Path:
        """The directory of per-device OSCORE contexts."""
        d = self.config.oscore.dir
        return Path(d) if d else self.ctx.state_dir / "coap" / "oscore"

    @property
    def port(self) -> int:
        """The UDP port the server is bound to (the kernel's pick when configured as 0)."""
        assert self._context is not None
        for ri in self._context.request_interfaces:
            sock = _bound_socket(ri)
            if sock is not None:
                return int(sock.getsockname()[1])
        return self.config.port

    def _count_dropped(self, reason: str) -> None:
        self._m.dropped.labels(self.prefix, reason).inc()

    def _duplicate_entries(self) -> float:
        return float(self.patched.duplicate_entries()) if self.patched is not None else 0.0

    async def _accept(self, readings: Any) -> bool:
        if self._stopping.is_set():
            return False  # shutting down: the device retries after Max-Age, elsewhere or later
        # a refusal is answered at once (5.03 with Max-Age): the device sends it again
        return await self.accept(readings, retry_for=0)

    async def start(self) -> None:
        """Load OSCORE contexts, bind the UDP server, start observing declared devices."""
        cfg = self.config
        creds = None
        if cfg.oscore.enabled:
            self._oscore = OscoreContexts(self.oscore_dir, self.log)
            await asyncio.to_thread(self._oscore.load)
            missing = [d.id for d in cfg.devices if d.oscore and
                       d.id not in self._oscore.by_device]
            if missing:
                self._oscore.close()
                raise RuntimeError(f"no OSCORE context for device(s) {', '.join(missing)} in "
                                   f"{self.oscore_dir} (one directory per device id)")
            creds = self._oscore.server_credentials()
        protected = set(self._oscore.by_device) if self._oscore else set()
        policy = Policy(cfg.accept_unknown, cfg.oscore.required,
                        {d.id for d in cfg.devices}, protected)
        self.readings = ReadingsResource(self.prefix, cfg.path, self._accept, policy,
                                         cfg.max_payload, cfg.retry_after, self._m,
                                         self._input_log, self.ctx.devices.knows)
        site: Any = Root(self.readings)
        transports = ["udp6"]
        if creds is not None:
            from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

            site = OscoreSiteWrapper(site, creds)
            transports = ["oscore", "udp6"]
        # aiocoap's per-request chatter (info) only when debugging, as for its own loggers
        logging.getLogger(self._aiocoap_log).setLevel(
            logging.NOTSET if self.log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        self._problems.install()
        try:
            self._context = await _Context.create_server_context(
                site, bind=(cfg.bind, cfg.port), transports=transports,
                loggername=self._aiocoap_log)
        except Exception:
            self._problems.remove()
            if self._oscore is not None:
                self._oscore.close()
            raise
        self.patched = aiocoap_patch.install(self._context, self._problems)
        if self.patched is None:
            self.log.warning("coap: aiocoap %s is not %s, the version whose duplicate cache, "
                             "backlogs and datagram parsing this gateway bounds; running "
                             "without those bounds", aiocoap_patch.installed_version(),
                             aiocoap_patch.PATCHED_VERSION)
        self._m.duplicate_entries.labels(self.prefix).set_function(self._duplicate_entries)
        self.log.info("coap: listening on [%s]:%d, readings at /%s/<device id>", cfg.bind,
                      self.port, cfg.path)
        declared = {spec.id for spec in cfg.devices}
        for native in protected - declared:
            # a device with a security context is known before its first reading
            self.ctx.devices.declare(f"{self.prefix}:{native}")
        for spec in cfg.devices:
            client = DeviceClient(self.prefix, spec, self._context, self.accept, cfg.block_size,
                                  self.files_dir, self._m, self.log, self._input_log)
            self.clients[client.device] = client
            if spec.oscore and self._oscore is not None:
                sc = self._oscore.by_device[spec.id]
                self._context.client_credentials[spec.address + "/*"] = sc
            info = {k: v for k, v in (("name", spec.name), ("type", spec.type),
                                      ("model", spec.model)) if v is not None}
            self.ctx.devices.declare(client.device, **info)
            for res in spec.resources:
                self.spawn(client.watch(res, self._stopping),
                           name=f"{self.prefix}:watch:{spec.id}{res.path}")

    async def stop(self) -> None:
        """Finish requests whose readings are being stored, then unbind and release."""
        self._stopping.set()
        await super().stop()  # drains what is being stored
        if self._context is not None:
            # answers already rendered go out before the socket closes
            await asyncio.sleep(0)
            if self.patched is not None:
                self.patched.remove()
                self.patched = None
            await self._context.shutdown()
            self._context = None
        self._m.duplicate_entries.labels(self.prefix).set_function(lambda: 0.0)
        self._problems.remove()
        if self._oscore is not None:
            await asyncio.to_thread(self._oscore.close)
            self._oscore = None

    async def send(self, command: Command) -> CommandResult:
        """PUT/POST to the resource configured for the command's action on its device."""
        client = self.clients.get(command.device)
        if client is None:
            return CommandResult(False, "unknown_device",
                                 f"{command.device} is not declared under this adapter's "
                                 "devices (commands need its address and resources)")
        return await client.send(command)


def _bound_socket(ri: Any) -> Any:
    """The UDP socket behind one aiocoap request interface, if it has one."""
    messages = getattr(getattr(ri, "token_interface", None), "message_interface", None)
    transport = getattr(messages, "transport", None)
    return transport.get_extra_info("socket") if transport is not None else None
