"""OSCORE security contexts, one directory per device under the state directory.

``<dir>/<native id>/`` holds aiocoap's ``settings.json`` (or ``secret.json``): sender-id,
recipient-id, secret and optional salt, algorithm and id-context, e.g.::

    {"sender-id_hex": "01", "recipient-id_hex": "02", "secret_ascii": "...."}

The gateway writes ``sequence.json`` (sequence number and replay window) and a ``lock``
file next to them, so the directory must be writable by the gateway. The directory name
is the device's id: a request unprotected with that context carries the claim
``<native id>``, and only that device's readings may be posted with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gateway.adapters.coap.config import NATIVE_ID


class OscoreError(Exception):
    """A security context directory cannot be used."""


class OscoreContexts:
    """The per-device OSCORE contexts found in one directory."""

    def __init__(self, directory: Path, log: logging.Logger) -> None:
        self.directory = directory
        self._log = log
        self.by_device: dict[str, Any] = {}

    def load(self) -> None:
        """Load every context; raise :class:`OscoreError` naming the first unusable one."""
        from aiocoap.oscore import FilesystemSecurityContext

        if not self.directory.is_dir():
            self._log.warning("coap: OSCORE directory %s does not exist: no device has a "
                              "security context", self.directory)
            return
        for sub in sorted(self.directory.iterdir()):
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            if not ((sub / "settings.json").exists() or (sub / "secret.json").exists()):
                continue
            if not NATIVE_ID.match(sub.name):
                raise OscoreError(f"{sub}: the directory name must be the device id (letters,"
                                  " digits, '_', '.', ':' or '-')")
            try:
                sc = FilesystemSecurityContext(str(sub))
            except Exception as exc:  # noqa: BLE001 - aiocoap raises many kinds here
                self.close()
                raise OscoreError(f"{sub}: cannot load the OSCORE context: "
                                  f"{type(exc).__name__}: {exc} (another gateway holding its "
                                  "lock file, or settings.json malformed?)") from exc
            sc.authenticated_claims = [sub.name]
            self.by_device[sub.name] = sc
        self._log.info("coap: %d OSCORE context(s) loaded from %s", len(self.by_device),
                       self.directory)

    def server_credentials(self) -> Any:
        """An aiocoap credentials map holding every context, for the server side."""
        from aiocoap.credentials import CredentialsMap

        creds = CredentialsMap()
        for native, sc in self.by_device.items():
            creds[":" + native] = sc
        return creds

    def close(self) -> None:
        """Persist sequence numbers and release the lock files."""
        for native, sc in self.by_device.items():
            try:
                # aiocoap releases the lock only when the object is garbage collected;
                # a restarting adapter must get the lock back at once
                if getattr(sc, "lockfile", None) is not None:
                    sc._destroy()
            except Exception as exc:  # noqa: BLE001 - go on releasing the others
                self._log.warning("coap: OSCORE context of %s not closed cleanly: %s",
                                  native, exc)
        self.by_device.clear()
