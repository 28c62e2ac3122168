"""``${...}`` references in config strings: environment variables, files, systemd credentials.

- ``${NAME}`` / ``${NAME:-default}``: environment variable.
- ``${file:/path/to/secret}``: the file's content, trailing newline stripped.
- ``${credential:NAME}``: ``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``).
- ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.yamlmarks import Loc

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")


class ReferenceError_(ValueError):
    """A reference could not be resolved; carries the key path where it appeared."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


#: a secret is a password, token or key: far smaller than this
MAX_SECRET_BYTES = 1024 * 1024


def _read_secret_file(path: Path, what: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the path
        raise ValueError(f"cannot read {what}: the path holds a NUL character") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(f"{what} {path} is larger than 1 MiB; is this the right file?")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid UTF-8 (byte {exc.start + 1})") from None


def resolve_one(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        ref = m.group(1).strip()
        if ref.startswith("file:"):
            return _read_secret_file(Path(ref[5:].strip()), "secret file")
        if ref.startswith("credential:"):
            name = ref[11:].strip()
            directory = env.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ValueError(
                    f"credential {name!r} requested but $CREDENTIALS_DIRECTORY is not set "
                    "(use LoadCredential= in the systemd unit, or ${file:...})"
                )
            return _read_secret_file(Path(directory) / name, "credential")
        name, sep, default = ref.partition(":-")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad reference ${{{ref}}}: expected ${{NAME}}, ${{file:PATH}} "
                             "or ${credential:NAME}")
        if name in env:
            return env[name]
        if sep:
            return default
        raise ValueError(f"environment variable {name} is not set")

    return _REF.sub(sub, text)


def resolve_references(data: Any, env: Mapping[str, str] | None = None, loc: Loc = ()) -> Any:
    """Return ``data`` with every ``${...}`` in its strings replaced."""
    env = os.environ if env is None else env
    if isinstance(data, dict):
        return {k: resolve_references(v, env, (*loc, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_references(v, env, (*loc, i)) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        try:
            return resolve_one(data, env)
        except ValueError as exc:
            raise ReferenceError_(loc, str(exc)) from None
    return data
