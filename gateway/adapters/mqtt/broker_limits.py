"""Does the local mosquitto queue enough for the gateway's session while it is away?

Devices publish to mosquitto at QoS 1 and get their PUBACK from it. While the gateway is
down (restart, upgrade, crash) or holding messages it cannot store yet, mosquitto queues
what arrives for the gateway's persistent session: at most ``max_queued_messages``
messages (default 1,000; 0 is no limit) and ``max_queued_bytes`` of payload (default 0, no
limit) per client. It drops the rest without a word, and the devices already had their
PUBACK: those messages are lost. An ``mqtt`` adapter on a local broker says what it must
survive, ``expected_rate`` messages/s for ``outage`` seconds of ``expected_payload`` bytes
each: the broker needs ``ceil(rate x outage)`` messages and that many payloads of bytes.
``gateway check`` compares that with the broker's config and says what falls short.

The config is read as mosquitto 2.0 reads it (``src/conf.c``, the same in 2.0.11 and
2.0.20): the main file, and where it says ``include_dir`` the files of that directory
ending in ``.conf``, letter by letter case-insensitively with upper case first (``A.conf``
before ``a.conf`` before ``B.conf``); ``include_dir`` counts in the main file only. A line
is a comment only when ``#`` is its first character. Words are split at spaces only. The
last value wins. Numbers are read as C's ``atoi`` does: leading digits only, so
``32MiB`` is 32 and ``1e5`` is 1, and a negative number is 0. A changed limit takes
effect when mosquitto restarts: its manual says a reload applies these two, but
mosquitto 2.0.11 keeps the old limit through SIGHUP (tests/test_mqtt_broker_limits.py).

``store.max_pending`` does not enter: it bounds readings waiting for a commit, and a
message the outbox refuses stays unacknowledged in the broker, where the limits above
apply to what queues behind it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.adapters.base import Advice
from gateway.config.types import format_seconds

if TYPE_CHECKING:
    from gateway.adapters.mqtt.config import MqttConfig

DEFAULT_BROKER_CONFIG = "/etc/mosquitto/mosquitto.conf"
#: payload bytes of a typical device message (a JSON object with 2 to 4 named values and
#: a timestamp): what ``expected_payload`` defaults to
TYPICAL_PAYLOAD = 300
#: a config file longer than this is read this far
MAX_FILE = 4 * 1024**2
#: the largest value mosquitto can hold in these settings (a C int)
INT_MAX = 2**31 - 1

_C_SPACE = b" \t\n\v\f\r"  # what atoi skips; mosquitto itself splits words at " " only
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


@dataclass(frozen=True)
class Setting:
    """One setting's value and where it was set; ``file`` None is mosquitto's default."""

    value: int | bool
    file: str | None = None
    line: int = 0
    #: the word in the file, when mosquitto reads it as something else ("32MiB" is 32)
    written: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    """The queue settings of one mosquitto config, and what could not be read in it."""

    main: str
    max_queued_messages: Setting = Setting(1000)
    max_queued_bytes: Setting = Setting(0)
    persistence: Setting = Setting(False)
    include_dirs: tuple[str, ...] = ()
    #: every file read, in mosquitto's order
    files: tuple[str, ...] = ()
    #: files that cannot be read, lines mosquitto would refuse to start with
    problems: tuple[str, ...] = ()
    #: False when the main file itself cannot be read (the values are then the defaults)
    readable: bool = True


def parse_broker_config(data: bytes | str, file: str = "<config>") -> BrokerConfig:
    """The queue settings in one file's text; ``include_dir`` is noted, not followed."""
    reader = _Reader(follow=False)
    reader.feed(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data,
                file, level=0)
    return reader.result(file, readable=True)


def read_broker_config(path: str | os.PathLike[str] = DEFAULT_BROKER_CONFIG) -> BrokerConfig:
    """The main file and the files of its ``include_dir`` lines, as mosquitto reads them.

    Never raises: what cannot be read is in ``problems``.
    """
    main = os.fspath(path)
    reader = _Reader(follow=True)
    readable = reader.read_file(main, level=0)
    return reader.result(main, readable)


class _Reader:
    def __init__(self, follow: bool) -> None:
        self.follow = follow
        self.values = {"max_queued_messages": Setting(1000), "max_queued_bytes": Setting(0),
                       "persistence": Setting(False)}
        self.include_dirs: list[str] = []
        self.files: list[str] = []
        self.problems: list[str] = []

    def result(self, main: str, readable: bool) -> BrokerConfig:
        return BrokerConfig(main, self.values["max_queued_messages"],
                            self.values["max_queued_bytes"], self.values["persistence"],
                            tuple(self.include_dirs), tuple(self.files), tuple(self.problems),
                            readable)

    def read_file(self, path: str, level: int) -> bool:
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                if level == 0:
                    self.problems.append(f"{path} is a directory, not a config file")
                    return False
                return True  # mosquitto opens it and reads nothing from it
            if not stat.S_ISREG(mode):
                self.problems.append(f"{path} is not a regular file")
                return False
            with open(path, "rb") as f:
                data = f.read(MAX_FILE + 1)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problems.append(f"cannot read {path} ({reason})")
            return False
        if len(data) > MAX_FILE:
            self.problems.append(f"{path} is longer than 4 MiB; read only that far")
            data = data[:MAX_FILE]
        self.files.append(path)
        self.feed(data, path, level)
        return True

    def feed(self, data: bytes, file: str, level: int) -> None:
        for number, line in enumerate(data.split(b"\n"), start=1):
            line = line.split(b"\0", 1)[0]  # C strings end there
            if not line or line[0] in b"#\r":
                continue
            key, rest = _word(line.rstrip(b"\r"))
            if key is None:
                continue
            if key == b"include_dir":
                if level == 0:  # mosquitto ignores include_dir in included files
                    self._include(rest, file, number)
            elif key in (b"max_queued_messages", b"max_queued_bytes"):
                self._number(key.decode(), rest, file, number)
            elif key in (b"persistence", b"retained_persistence"):
                self._boolean(key.decode(), rest, file, number)

    def _number(self, key: str, rest: bytes, file: str, line: int) -> None:
        word, _ = _word(rest)
        if word is None:
            self.problems.append(f"{file}:{line}: {key} without a value "
                                 "(mosquitto refuses to start)")
            return
        value = max(0, _atoi(word))  # mosquitto: "if(tmp_int < 0) tmp_int = 0;"
        shown = word.decode("utf-8", "backslashreplace")
        self.values[key] = Setting(
            value, file, line, shown if shown != str(value) else None)

    def _boolean(self, key: str, rest: bytes, file: str, line: int) -> None:
        word, _ = _word(rest)
        if word in (b"true", b"1", b"false", b"0"):
            self.values["persistence"] = Setting(word in (b"true", b"1"), file, line)
            return
        shown = "no value" if word is None else repr(word.decode("utf-8", "backslashreplace"))
        self.problems.append(f"{file}:{line}: {key} takes true or false, not {shown} "
                             "(mosquitto refuses to start)")

    def _include(self, rest: bytes, file: str, line: int) -> None:
        if not rest:
            self.problems.append(f"{file}:{line}: include_dir without a directory "
                                 "(mosquitto refuses to start)")
            return
        # the rest of the line as it is, spaces included: mosquitto opens exactly that
        directory = os.fsdecode(rest)
        self.include_dirs.append(directory)
        if not self.follow:
            return
        try:
            names = os.listdir(directory)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problems.append(f"{file}:{line}: include_dir {directory!r} cannot be opened "
                                 f"({reason}); mosquitto refuses to start")
            return
        chosen = [n for n in names if len(os.fsencode(n)) > 5 and n.endswith(".conf")]
        for name in sorted(chosen, key=_mosquitto_order):
            self.read_file(f"{directory}/{name}", level=1)


def _word(text: bytes) -> tuple[bytes | None, bytes]:
    """C's ``strtok_r(text, " ")``: the first word, and what follows its delimiter."""
    start = len(text) - len(text.lstrip(b" "))
    if start == len(text):
        return None, b""
    end = text.find(b" ", start)
    if end < 0:
        return text[start:], b""
    return text[start:end], text[end + 1:]


def _atoi(word: bytes) -> int:
    """C's ``atoi`` as glibc has it: ``strtol`` (clamped to 64 bits), then a 32-bit int."""
    text = word.lstrip(_C_SPACE)
    sign = -1 if text[:1] == b"-" else 1
    if text[:1] in (b"-", b"+"):
        text = text[1:]
    digits = text[:len(text) - len(text.lstrip(b"0123456789"))].lstrip(b"0")
    if not digits:
        return 0
    value = sign * int(digits) if len(digits) <= 19 else sign * 2**63
    value = min(max(value, -(2**63)), 2**63 - 1)
    return (value + 2**31) % 2**32 - 2**31


def _mosquitto_order(name: str) -> list[tuple[int, int]]:
    # mosquitto's scmp_p: byte by byte, case-insensitive first, then upper before lower
    return [(b - 32 if 97 <= b <= 122 else b, b) for b in os.fsencode(name)]


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine: loopback, unspecified, or its own host name."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    own = socket.gethostname().lower()
    if name and name in (own, own.split(".")[0]):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


@dataclass(frozen=True)
class QueueNeed:
    """What the broker must queue for one session to cover ``outage`` at ``rate``."""

    rate: float  # messages/s
    outage: float  # seconds
    payload: int = TYPICAL_PAYLOAD  # bytes per message
    messages: int = field(init=False)
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", math.ceil(self.rate * self.outage))
        object.__setattr__(self, "bytes", self.messages * self.payload)

    def held_by(self, limit: int, per_message: int = 1) -> float:
        """Seconds of outage a limit holds at ``rate``, ``per_message`` units a message."""
        return math.inf if limit <= 0 else limit / per_message / self.rate

    def holds(self, config: BrokerConfig) -> float:
        """Seconds of outage the broker's two limits hold together at ``rate``."""
        return min(self.held_by(int(config.max_queued_messages.value)),
                   self.held_by(int(config.max_queued_bytes.value), self.payload))


def queue_advice(cfg: MqttConfig) -> list[Advice]:
    """Warnings (and notes) when the local broker cannot hold ``cfg.outage`` for ``cfg``."""
    if not cfg.enabled or cfg.broker_config is None:
        return []
    if not (is_local(cfg.host) or "broker_config" in cfg.model_fields_set):
        return []  # a broker elsewhere: its config is not ours to read
    who = f"adapter {cfg.name or cfg.type!r}"
    outage = format_seconds(cfg.outage)
    out: list[Advice] = []
    if cfg.session_expiry < cfg.outage:
        expiry = format_seconds(cfg.session_expiry) if cfg.session_expiry else "0"
        what = ("ends the gateway's session when it disconnects, so the broker queues nothing"
                if not cfg.session_expiry else
                f"lets the broker discard the gateway's session, and what it queued, {expiry} "
                "after the gateway went away")
        out.append(Advice("warning", f"{who}: session_expiry {expiry} {what}; outage is "
                          f"{outage}: set session_expiry to {outage} or more"))
    broker = read_broker_config(cfg.broker_config)
    if not broker.readable:
        out.append(Advice("note", f"{who}: the local broker's queue limits are not checked: "
                          f"{broker.problems[0]}; set broker_config to the file mosquitto "
                          "runs with (null: do not check)"))
        return out
    out.extend(Advice("note", f"{who}: broker config: {p}") for p in broker.problems)
    need = QueueNeed(cfg.expected_rate, cfg.outage, cfg.expected_payload)
    together = need.holds(broker)
    rate = f"{cfg.expected_rate:g} messages/s"
    for key, setting, needed, per_message, of in (
            ("max_queued_messages", broker.max_queued_messages, need.messages, 1, ""),
            ("max_queued_bytes", broker.max_queued_bytes, need.bytes, need.payload,
             f" of {need.payload} B")):
        limit = int(setting.value)
        if limit <= 0 or limit >= needed:
            continue
        held = need.held_by(limit, per_message)
        read_as = f" (mosquitto reads {setting.written!r} as {limit})" if setting.written else ""
        both = f" ({_span(together)} with both limits)" if together < held else ""
        out.append(Advice("warning", (
            f"{who}: mosquitto's {key} is {limit}{read_as} ({_where(setting, broker)}): at "
            f"{rate}{of} (expected_rate) that holds an outage of {_span(held)}{both}; "
            f"outage: {outage} needs {needed}. {_fix(key, setting, needed, broker)}, then "
            "systemctl restart mosquitto: past the limit mosquitto drops messages whose "
            "devices already had their PUBACK")))
    if not broker.persistence.value:
        fix = (f"set persistence true in {broker.persistence.file}" if broker.persistence.file
               else f"add 'persistence true' to {_target(broker)}")
        out.append(Advice("note", (
            f"{who}: mosquitto keeps its queue in memory only (persistence off, "
            f"{_where(broker.persistence, broker)}): if mosquitto itself restarts, what it "
            f"queued for the gateway is lost; {fix}")))
    return out


def _where(setting: Setting, broker: BrokerConfig) -> str:
    if setting.file is not None:
        return f"{setting.file}:{setting.line}"
    within = " or its include_dir files" if broker.include_dirs else ""
    return f"mosquitto's default, not set in {broker.main}{within}"


def _target(broker: BrokerConfig) -> str:
    """Where to add a setting the config does not have: Debian keeps local ones in conf.d."""
    return f"a .conf file in {broker.include_dirs[-1]}" if broker.include_dirs else broker.main


def _fix(key: str, setting: Setting, needed: int, broker: BrokerConfig) -> str:
    if needed > INT_MAX:  # mosquitto holds these in a C int
        value, more = "0", " (no limit: more than mosquitto's largest value is needed)"
    else:
        value, more = str(needed), " (or more; 0 is no limit)"
    if setting.file is not None:
        return f"Set {key} {value}{more} in {setting.file}"
    return f"Add '{key} {value}'{more} to {_target(broker)}"


def _span(seconds: float) -> str:
    """A duration for people: 0.5s, 20s, 33m, 5.6h, 2.3d."""
    if seconds < 10:
        return f"{seconds:.2g}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
