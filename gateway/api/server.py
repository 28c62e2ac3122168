"""The control API: health, metrics, devices, outbox, commands and permit-join over HTTP.

Served on a Unix socket (mode ``api.socket_mode``, default 0660: whoever may use the
gateway is in its group) and optionally on TCP (``api.http``). TCP clients send
``Authorization: Bearer <token>`` when ``api.token_file`` is set; the config refuses a
non-loopback bind without one, and without one TCP only reads. Every answer is JSON,
except ``/metrics``. Adapters add routes through the ``gateway.api_routes`` entry points.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import hmac
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from gateway import __version__
from gateway.adapters.capabilities import Joiner, Remover
from gateway.adapters.registry import UnknownAdapterType, adapter_class
from gateway.api.config import SUN_PATH_MAX, read_token
from gateway.reading import Command, CommandResult

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("gateway.api")

#: entry-point group of extra routes: ``add_routes(app, gateway)`` functions
ROUTES_GROUP = "gateway.api_routes"
#: Zigbee's own bound on a permit-join window
PERMIT_JOIN_MAX = 254
#: most dead letters one ``GET /api/outbox/dead-letters`` answers
DEAD_LETTERS_MAX = 10_000
#: /healthz counts devices at most this often (listing 1,000 devices takes ~10 ms)
_COUNTS_TTL = 1.0
#: how long in-flight requests may take to finish once the API stops
_SHUTDOWN_TIMEOUT = 2.0

#: HTTP status for each CommandResult status
_COMMAND_HTTP = {
    "sent": 200, "delivered": 200, "unknown_device": 404, "refused": 503,
    "unsupported": 422, "timeout": 504, "error": 502,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiStartError(RuntimeError):
    """The API cannot listen where the config says; the message says why and what to do."""


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; values JSON cannot hold (sets, paths) become strings."""
    return web.Response(text=json.dumps(data, default=str, separators=(",", ":")),
                        status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return json_response({"error": message}, status)


class _AdapterUpCollector:
    """``gateway_adapter_up``: 1 while an adapter runs, 0 while it starts or backs off."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("gateway_adapter_up",
                                 "1 while the adapter runs, 0 while starting or in backoff",
                                 labels=["adapter", "type"])

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        sup = self._gw.supervisor
        if sup is not None:
            for st in sup.states.values():
                family.add_metric([st.name, st.type], 1.0 if st.state == "running" else 0.0)
        return [family]


class ApiServer:
    """The HTTP control API of one running :class:`~gateway.daemon.Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.config = gateway.config.api
        self.socket_path = gateway.config.socket_path
        self._token: str | None = None
        self._runner: web.AppRunner | None = None
        self._bound_socket = False
        self.tcp_address: tuple[str, int] | None = None
        self._counts: tuple[float, int, int] | None = None
        reg = gateway.metrics
        Info("gateway_build", "Version of the running gateway", registry=reg).info(
            {"version": __version__, "python": sys.version.split()[0]})
        Gauge("gateway_start_time_seconds", "UNIX time the daemon started",
              registry=reg).set(gateway.started_at)
        Gauge("gateway_uptime_seconds", "Seconds since the daemon started",
              registry=reg).set_function(lambda: time.time() - gateway.started_at)
        Gauge("gateway_ready", "1 once every component has started, 0 while starting or "
              "stopping", registry=reg).set_function(lambda: 1.0 if gateway.ready else 0.0)
        reg.register(_AdapterUpCollector(gateway))
        self.m_requests = Counter("gateway_api_requests", "Control API requests answered",
                                  ["endpoint", "code"], registry=reg)
        self.m_commands = Counter("gateway_api_commands",
                                  "Commands sent through the control API, by outcome",
                                  ["status"], registry=reg)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the Unix socket (and TCP if configured); raise ApiStartError if not."""
        if self.config.token_file:
            self._token = _read_token(Path(self.config.token_file))
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/devices", self.devices)
        app.router.add_get("/api/devices/{device}", self.device)
        app.router.add_patch("/api/devices/{device}", self.rename_device)
        app.router.add_delete("/api/devices/{device}", self.remove_device)
        app.router.add_post("/api/devices/{device}/commands", self.command)
        app.router.add_get("/api/outbox", self.outbox)
        app.router.add_get("/api/outbox/dead-letters", self.dead_letters)
        app.router.add_post("/api/permit-join", self.permit_join)
        app.router.add_post("/api/reload", self.reload)
        # adapters' own routes (POST /api/zigbee/backup...) come through entry points
        self._mount_plugin_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        try:
            sock = self._bind_unix()
            await web.SockSite(runner, sock).start()
            if self.config.http_address is not None:
                host, port = self.config.http_address
                site = web.TCPSite(runner, host, port, reuse_address=True)
                try:
                    await site.start()
                except OSError as exc:
                    raise ApiStartError(f"api.http: cannot listen on {self.config.http}: "
                                        f"{exc.strerror or exc}") from None
                self.tcp_address = (host, port)
        except BaseException:
            await self.stop()
            raise
        where = str(self.socket_path)
        if self.tcp_address is not None:
            where += f" and http://{self.config.http}"
        log.info("control API listening on %s", where)

    def _mount_plugin_routes(self, app: web.Application) -> None:
        """Routes that adapters (or third-party packages) add under ``gateway.api_routes``."""
        # by name: a distribution found twice on sys.path lists its entry points twice
        for ep in {ep.name: ep for ep in entry_points(group=ROUTES_GROUP)}.values():
            try:
                ep.load()(app, self.gw)
            except Exception as exc:  # noqa: BLE001 - one bad plugin must not take the API down
                log.error("control API: routes %r (%s) not mounted: %s: %s", ep.name, ep.value,
                          type(exc).__name__, exc)

    def _bind_unix(self) -> socket.socket:
        path = self.socket_path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ApiStartError(f"api.socket: {path} is longer than the {SUN_PATH_MAX} bytes a "
                                "Unix socket path may have; set api.socket to a shorter path")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ApiStartError(f"api.socket: {path} exists and is not a socket; remove it "
                                    "or choose another path")
            if _answers(path):
                raise ApiStartError(f"api.socket: another gateway is listening on {path}; stop "
                                    "it first (or give this one its own state_dir / api.socket)")
            path.unlink()  # left behind by a crash: nobody answers on it
        # bind under a temporary name, set mode and group, then rename into place: the
        # socket never exists at its real path with looser permissions
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, self.config.mode)
            if self.config.socket_group:
                try:
                    gid = grp.getgrnam(self.config.socket_group).gr_gid
                except KeyError:
                    raise ApiStartError(f"api.socket_group: no group named "
                                        f"{self.config.socket_group!r} on this system") from None
                os.chown(tmp, -1, gid)
            os.replace(tmp, path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._bound_socket = True
        return sock

    async def stop(self) -> None:
        """Stop answering; finish requests in flight (briefly); remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._bound_socket:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._bound_socket = False

    # -- plumbing -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        endpoint = route.canonical if route is not None else "unmatched"
        try:
            refusal = None if _is_unix(request) else self._refuse_tcp(request)
            response: web.StreamResponse = refusal or await handler(request)
        except web.HTTPException as exc:
            response = error_response(exc.status, exc.reason if exc.text is None
                                      or exc.text.startswith(f"{exc.status}:") else exc.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in one handler must not take the API down
            log.exception("control API: %s %s failed", request.method, request.path)
            response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        self.m_requests.labels(endpoint, str(response.status)).inc()
        log.debug("%s %s -> %d", request.method, request.path_qs, response.status)
        return response

    def _refuse_tcp(self, request: web.Request) -> web.Response | None:
        """TCP clients: the token when one is set; else only reading (GET/HEAD).

        The Unix socket's file mode decides who may steer the gateway; a loopback port is
        open to every local user, so without a token it must not take commands.
        """
        if self._token is not None:
            given = request.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                return None
            refused = error_response(401, "missing or wrong token: send Authorization: "
                                          "Bearer <token from api.token_file>")
            refused.headers["WWW-Authenticate"] = "Bearer"
            return refused
        if request.method in ("GET", "HEAD"):
            return None
        return error_response(403, f"{request.method} over TCP needs api.token_file (any local "
                                   "user can reach a loopback port); use the Unix socket, "
                                   "e.g. the gateway CLI")

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="request body must be a JSON object")
        return body

    # -- endpoints ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers: readiness, adapters, uplink, outbox, devices."""
        gw = self.gw
        now = time.time()
        problems: list[str] = []
        adapters: dict[str, Any] = {}
        if gw.supervisor is not None:
            for st in gw.supervisor.states.values():
                adapters[st.name] = {"type": st.type, "state": st.state, "restarts": st.restarts,
                                     "since": st.since, "last_error": st.last_error}
                if st.state != "running":
                    problems.append(f"adapter {st.name} is {st.state}"
                                    + (f" ({st.last_error})" if st.last_error else ""))
        enabled = gw.config.uplink.enabled
        uplink = gw.uplink
        connected = uplink is not None and uplink.connected
        if enabled and not connected:
            last = uplink.last_error if uplink is not None else None
            problems.append("uplink is not connected (readings wait in the outbox)"
                            + (f": {last}" if last else ""))
        outbox: dict[str, Any] = {}
        if gw.outbox is not None:
            st_ = gw.outbox.stats()
            outbox = {"depth": st_.depth, "events": st_.events, "bytes": st_.bytes,
                      "oldest_age": now - st_.oldest_ts if st_.oldest_ts else 0.0,
                      "dropped": st_.dropped}
        known, online = self._device_counts()
        status = ("degraded" if problems else "ok") if gw.ready else "starting"
        return {
            "status": status, "ready": gw.ready, "gateway": gw.config.gateway.id,
            "version": __version__, "started_at": gw.started_at,
            "uptime": now - gw.started_at, "adapters": adapters,
            "uplink": {"enabled": enabled, "connected": connected,
                       "connected_since": uplink.connected_since if uplink is not None else None},
            "outbox": outbox,
            "devices": {"known": known, "online": online},
            "problems": problems,
        }

    def _device_counts(self) -> tuple[int, int]:
        """(known, online); the registry's full listing is costly, so at most once a second."""
        now = time.monotonic()
        if self._counts is None or now - self._counts[0] >= _COUNTS_TTL:
            devices = self._all_devices()
            self._counts = (now, len(devices), sum(1 for d in devices if d.get("online")))
        return self._counts[1], self._counts[2]

    def status_line(self) -> str:
        """One line for ``systemctl status``: health, adapters, uplink, outbox."""
        h = self.health()
        running = sum(1 for a in h["adapters"].values() if a["state"] == "running")
        uplink = ("uplink off" if not h["uplink"]["enabled"]
                  else "uplink connected" if h["uplink"]["connected"] else "uplink DOWN")
        return (f"{h['status']}: {running}/{len(h['adapters'])} adapter(s) running, {uplink}, "
                f"outbox {h['outbox'].get('depth', 0)} reading(s), "
                f"{h['devices']['online']}/{h['devices']['known']} device(s) online")

    async def healthz(self, request: web.Request) -> web.Response:
        """200 once ready (``status`` ok or degraded), 503 while starting or stopping."""
        data = self.health()
        return json_response(data, 200 if data["ready"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition of every metric registered on the daemon's registry."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encode(self.gw.metrics)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    def _all_devices(self) -> list[dict[str, Any]]:
        return list(self.gw.devices.all()) if self.gw.devices is not None else []

    async def devices(self, request: web.Request) -> web.Response:
        """Every known device; ``?adapter=NAME`` and ``?online=true|false`` narrow the list,
        ``?fields=id,model,...`` keeps only those keys (a lighter answer for pollers)."""
        out = self._all_devices()
        adapter = request.query.get("adapter")
        if adapter:
            out = [d for d in out if d.get("adapter") == adapter]
        online = request.query.get("online")
        if online is not None:
            if online.lower() not in ("true", "false", "1", "0"):
                return error_response(400, "online must be true or false")
            want = online.lower() in ("true", "1")
            out = [d for d in out if bool(d.get("online")) == want]
        fields = request.query.get("fields")
        if fields:
            keep = {"id", *(f.strip() for f in fields.split(",") if f.strip())}
            out = [{k: v for k, v in d.items() if k in keep} for d in out]
        return json_response(out)

    def _device_or_404(self, device: str) -> dict[str, Any]:
        found = self.gw.devices.get(device) if self.gw.devices is not None else None
        if found is None:
            raise web.HTTPNotFound(text=f"no device {device!r} in the registry "
                                        "(gateway devices lists the known ones)")
        return dict(found)

    async def device(self, request: web.Request) -> web.Response:
        """One device, or 404."""
        return json_response(self._device_or_404(request.match_info["device"]))

    async def rename_device(self, request: web.Request) -> web.Response:
        """``{"name": "..."}``: give a device a display name."""
        device = request.match_info["device"]
        body = await self._json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return error_response(400, 'expected {"name": "<display name>"}')
        if self.gw.devices is None or not self.gw.devices.rename(device, name.strip()):
            return error_response(404, f"no device {device!r} in the registry")
        return json_response(self._device_or_404(device))

    async def remove_device(self, request: web.Request) -> web.Response:
        """Forget a device. An adapter with ``remove(device)`` (Zigbee: the device is asked
        to leave the network) does it first; otherwise it registers again on its next
        reading."""
        device = request.match_info["device"]
        sup = self.gw.supervisor
        owner = sup.owner_of(device) if sup is not None else None
        result: CommandResult | None = None
        if isinstance(owner, Remover):
            try:
                result = await asyncio.wait_for(owner.remove(device), self.config.command_timeout)
            except TimeoutError:
                result = CommandResult.timeout(
                    f"the adapter did not finish within {self.config.command_timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - reported; the registry entry still goes
                result = CommandResult.error(f"{type(exc).__name__}: {exc}")
            if not isinstance(result, CommandResult):
                result = None
        known = self.gw.devices is not None and self.gw.devices.remove(device)
        adapter_knew = result is not None and result.status != "unknown_device"
        if not known and not adapter_knew:
            return error_response(404, f"no device {device!r} in the registry")
        body: dict[str, Any] = {"removed": device}
        if result is not None:
            body["adapter"] = result._asdict()
        return json_response(body)

    async def outbox(self, request: web.Request) -> web.Response:
        """Depth, size, age and drops of the outbox, with its bounds."""
        if self.gw.outbox is None:
            return error_response(503, "the outbox is not open")
        st = self.gw.outbox.stats()
        data = dataclasses.asdict(st)
        data["oldest_age"] = time.time() - st.oldest_ts if st.oldest_ts else 0.0
        store = self.gw.config.store
        data["max_bytes"] = store.max_bytes
        data["max_age"] = store.max_age
        data["path"] = str(self.gw.config.outbox_path)
        data["uplink_enabled"] = self.gw.config.uplink.enabled
        data["uplink_connected"] = self.gw.uplink is not None and self.gw.uplink.connected
        return json_response(data)

    async def dead_letters(self, request: web.Request) -> web.Response:
        """The latest readings set aside because they could not be stored (``?limit=``)."""
        if self.gw.outbox is None:
            return error_response(503, "the outbox is not open")
        raw = request.query.get("limit", "100")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= DEAD_LETTERS_MAX:
            return error_response(400, f"limit must be a whole number from 1 to "
                                       f"{DEAD_LETTERS_MAX}")
        rows = await self.gw.outbox.dead_letters(int(raw))
        st = self.gw.outbox.stats()
        return json_response({"count": st.dead_letters, "deleted": st.dead_letters_deleted,
                              "max": self.gw.config.store.dead_letter_max,
                              "dead_letters": [r._asdict() for r in rows]})

    async def command(self, request: web.Request) -> web.Response:
        """``{"action": "...", "params": {...}}`` → the owning adapter; answers its result."""
        device = request.match_info["device"]
        body = await self._json_body(request)
        action = body.get("action")
        params = body.get("params", {})
        if not isinstance(action, str) or not action:
            return error_response(400, 'expected {"action": "<name>", "params": {...}}')
        if not isinstance(params, dict):
            return error_response(400, "params must be a JSON object")
        if self.gw.supervisor is None:
            return error_response(503, "adapters are not running yet")
        cmd = Command(device, action, params)
        try:
            result = await asyncio.wait_for(self.gw.supervisor.send(cmd),
                                            self.config.command_timeout)
        except TimeoutError:
            result = CommandResult.timeout(
                f"the adapter did not finish within {self.config.command_timeout:g} s")
        self.m_commands.labels(result.status).inc()
        log.info("command %s %s %s: %s %s", device, action, params, result.status, result.detail)
        return json_response(result._asdict(), _COMMAND_HTTP.get(result.status, 500))

    async def reload(self, request: web.Request) -> web.Response:
        """Read the config file again and apply what changed (as SIGHUP does). 200 with what
        changed; 422 with the file's problems (nothing changed); 500 if a part failed."""
        result = await self.gw.reload()
        body = result.as_dict()
        if result.problems:
            body["error"] = result.summary()
            return json_response(body, 422)
        if result.failed:
            body["error"] = result.summary()
            return json_response(body, 500)
        return json_response(body)

    async def permit_join(self, request: web.Request) -> web.Response:
        """``{"seconds": N}``: open every joining-capable adapter for N s (0 closes)."""
        body = await self._json_body(request)
        seconds = body.get("seconds", 60)
        if isinstance(seconds, bool) or not isinstance(seconds, int) \
                or not 0 <= seconds <= PERMIT_JOIN_MAX:
            return error_response(400, f"seconds must be a whole number from 0 to "
                                       f"{PERMIT_JOIN_MAX}")
        only = body.get("adapter")
        sup = self.gw.supervisor
        running = dict(sup.adapters) if sup is not None else {}
        targets: dict[str, Joiner] = {name: a for name, a in running.items()
                                      if isinstance(a, Joiner) and only in (None, name)}
        if not targets:
            return error_response(409, self._why_no_joining(only))
        names = sorted(targets)
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(targets[n].permit_join(seconds), self.config.command_timeout)
              for n in names),
            return_exceptions=True)
        results: dict[str, Any] = {}
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                text = (f"no answer within {self.config.command_timeout:g} s"
                        if isinstance(outcome, TimeoutError)
                        else f"{type(outcome).__name__}: {outcome}")
                results[name] = {"ok": False, "error": text}
                log.warning("permit-join on %s failed: %s", name, text)
            else:
                results[name] = {"ok": True}
                if outcome is not None:
                    results[name]["result"] = outcome
        opened = [n for n in names if results[n]["ok"]]
        if opened:
            log.info("permit-join %s for %d s on %s", "open" if seconds else "closed", seconds,
                     ", ".join(opened))
        data: dict[str, Any] = {"seconds": seconds, "until": time.time() + seconds,
                                "adapters": results}
        if not opened:
            data["error"] = "permit-join failed: " + "; ".join(
                f"{n}: {r['error']}" for n, r in results.items())
            return json_response(data, 502)
        return json_response(data)

    def _why_no_joining(self, only: Any) -> str:
        sup = self.gw.supervisor
        capable_idle = []
        if sup is not None:
            for st in sup.states.values():
                if only not in (None, st.name) or st.name in sup.adapters:
                    continue
                try:
                    cls = adapter_class(st.type)
                except UnknownAdapterType:
                    continue
                if issubclass(cls, Joiner):
                    capable_idle.append(f"{st.name} ({st.state})")
        if capable_idle:
            return ("no adapter can permit joining right now: " + ", ".join(capable_idle)
                    + " not running; see gateway status")
        if only is not None:
            return f"adapter {only!r} is not running or cannot permit joining"
        return ("no running adapter can permit joining: add a zigbee adapter to the config "
                "(devices of the other protocols need no pairing here)")


def _is_unix(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_UNIX


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _read_token(path: Path) -> str:
    # read again at start: the file may have changed since the config was checked
    try:
        return read_token(path)
    except ValueError as exc:
        raise ApiStartError(f"api.token_file: {exc}") from None
