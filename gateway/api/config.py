"""The ``api:`` section."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from gateway.config.types import Duration, Section

#: shortest bearer token accepted
TOKEN_MIN = 16
#: Linux limit on a Unix socket path (sun_path is 108 bytes, NUL included)
SUN_PATH_MAX = 107
_GROUP = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8780"``, ``"[::1]:8780"``, ``"localhost:8780"`` → (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected host:port, e.g. 127.0.0.1:8780 or [::1]:8780")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def read_token(path: Path) -> str:
    """The bearer token in ``path``; ValueError saying what is wrong with it."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(token) < TOKEN_MIN:
        raise ValueError(f"{path} holds {len(token)} characters; use a token of at least "
                         f"{TOKEN_MIN} (e.g. openssl rand -hex 32)")
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` only ever reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: treat it as reachable from outside


class ApiConfig(Section):
    """The local control API: HTTP on a Unix socket, optionally on TCP too."""

    enabled: bool = True
    socket: str | None = Field(default=None, description="default: <state_dir>/gateway.sock")
    socket_mode: str = Field(default="0660", description="octal permissions of the socket")
    socket_group: str | None = Field(default=None, description="group owning the socket")
    # before ``http``: its validator needs to know whether a token is configured
    token_file: str | None = Field(default=None,
                                   description="file holding the bearer token TCP clients send")
    http: str | None = Field(default=None, description="host:port, e.g. 127.0.0.1:8780")
    command_timeout: Duration = Field(default=30.0, gt=0, le=3600,
                                      description="longest wait for an adapter to run a command")

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, v: str | None) -> str | None:
        if v is not None and len(os.fsencode(v)) > SUN_PATH_MAX:
            raise ValueError(f"a Unix socket path may be at most {SUN_PATH_MAX} bytes long; "
                             "choose a shorter path, e.g. /run/gateway/gateway.sock")
        return v

    @field_validator("token_file")
    @classmethod
    def _token_readable(cls, v: str | None) -> str | None:
        # checked here so that `gateway check` says it, not the daemon at its next start
        if v is not None:
            read_token(Path(v))
        return v

    @field_validator("socket_mode")
    @classmethod
    def _octal_mode(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", v.strip()):
            raise ValueError("expected octal permissions such as 0660 or 0600")
        return v.strip()

    @field_validator("socket_group")
    @classmethod
    def _group_name(cls, v: str | None) -> str | None:
        if v is not None and not _GROUP.match(v):
            raise ValueError("expected a group name such as gateway")
        return v

    @field_validator("http")
    @classmethod
    def _host_port(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        host, _ = split_host_port(v)
        if not is_loopback(host) and not info.data.get("token_file"):
            raise ValueError(
                f"{host} is reachable from other machines: set api.token_file to a file "
                "holding a secret token, or bind 127.0.0.1")
        return v

    @property
    def mode(self) -> int:
        """``socket_mode`` as a number."""
        return int(self.socket_mode, 8)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """``http`` as (host, port), or None when TCP is off."""
        return split_host_port(self.http) if self.http else None
