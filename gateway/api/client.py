"""A small blocking client of the control API, for the CLI (stdlib only: starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.config.secrets import ReferenceError_, resolve_references
from gateway.config.yamlmarks import YamlError, load_yaml

DEFAULT_STATE_DIR = "/var/lib/gateway"


class DaemonUnreachable(Exception):
    """Nothing answers on the socket: the daemon is not running, or we may not connect."""


class ApiError(Exception):
    """The daemon answered with an error status; ``message`` is its explanation."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


def socket_from_config(path: str | Path) -> Path:
    """Where the daemon configured by ``path`` listens (``api.socket``, or in state_dir).

    Reads only the ``api`` and ``gateway`` sections: the CLI must work without the
    uplink's secrets, which the daemon reads and an operator may not.
    """
    try:
        raw, _ = load_yaml(path)
    except YamlError as exc:
        raise DaemonUnreachable(f"{exc}; pass --socket PATH to name the socket directly") from None
    top: dict[str, Any] = raw if isinstance(raw, dict) else {}
    api: dict[str, Any] = top["api"] if isinstance(top.get("api"), dict) else {}
    gw: dict[str, Any] = top["gateway"] if isinstance(top.get("gateway"), dict) else {}
    try:
        sock = resolve_references(api.get("socket"))
        state_dir = resolve_references(gw.get("state_dir")) or DEFAULT_STATE_DIR
    except ReferenceError_ as exc:
        raise DaemonUnreachable(f"{path}: {exc}") from None
    if api.get("enabled") is False:
        raise DaemonUnreachable(f"{path}: api.enabled is false, so the daemon serves no "
                                "control API; enable it and restart the gateway")
    return Path(sock) if sock else Path(str(state_dir)) / "gateway.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("gateway", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class ApiClient:
    """Blocking requests to the daemon's Unix socket; JSON in, JSON out."""

    def __init__(self, socket_path: str | Path, timeout: float = 10.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; return (status, decoded body). Raises DaemonUnreachable."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except FileNotFoundError:
            raise DaemonUnreachable(f"the gateway is not running: no control socket at "
                                    f"{self.socket_path} (start it with: systemctl start "
                                    "gateway)") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(f"the gateway is not running: nothing answers on "
                                    f"{self.socket_path} (start it with: systemctl start "
                                    "gateway)") from None
        except PermissionError:
            raise DaemonUnreachable(f"permission denied on {self.socket_path}: run as root or "
                                    "as a member of the socket's group (api.socket_group)"
                                    ) from None
        except TimeoutError:
            raise DaemonUnreachable(f"the gateway did not answer on {self.socket_path} within "
                                    f"{self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnreachable(f"cannot talk to the gateway on {self.socket_path}: "
                                    f"{exc}") from None
        finally:
            conn.close()
        content_type = resp.getheader("Content-Type", "")
        if content_type.startswith("application/json"):
            decoded: Any = json.loads(raw.decode() or "null")
        else:
            decoded = raw.decode(errors="replace")
        return resp.status, decoded

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Like :meth:`request`, raising ApiError on a 4xx/5xx answer."""
        status, decoded = self.request(method, path, body)
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise ApiError(status, str(message or decoded or f"HTTP {status}"), decoded)
        return decoded


def device_path(device: str, suffix: str = "") -> str:
    """``/api/devices/<id>[suffix]`` with the id escaped (ids hold ``:`` and may hold ``/``)."""
    return f"/api/devices/{quote(device, safe=':')}{suffix}"


def default_socket() -> Path:
    """The socket a default install listens on."""
    return Path(DEFAULT_STATE_DIR) / "gateway.sock"
