"""Config reload: what changed between the running config and a newly read file.

``systemctl reload gateway`` (SIGHUP) and ``gateway reload`` (``POST /api/reload``) read the
file the daemon was started with again. :func:`plan` compares it with the running config,
section by section; the daemon (:meth:`gateway.daemon.Gateway.reload`) applies the plan in
place. What cannot change without a restart (the gateway's id and state directory, the
store, the control API, local history) is reported and left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.adapters.base import AdapterConfig
from gateway.config.model import GatewayConfig

#: sections (or ``section.key``) a running daemon keeps until it restarts
RESTART_ONLY = ("gateway.id", "gateway.state_dir", "store", "api", "history")


def _get(config: GatewayConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _enabled(adapters: list[AdapterConfig]) -> dict[str, AdapterConfig]:
    return {a.name: a for a in adapters if a.enabled}


@dataclass
class Plan:
    """What a reload changes; :attr:`config` is what the daemon runs with afterwards."""

    config: GatewayConfig
    #: restart-only sections that differ (kept as they were)
    restart_needed: list[str] = field(default_factory=list)
    #: top-level sections whose content differs (``adapters`` per adapter below)
    sections: set[str] = field(default_factory=set)
    adapters_added: list[str] = field(default_factory=list)
    adapters_removed: list[str] = field(default_factory=list)
    adapters_changed: list[str] = field(default_factory=list)

    def changed(self, section: str) -> bool:
        return section in self.sections


def plan(running: GatewayConfig, new: GatewayConfig) -> Plan:
    """Compare a freshly loaded config with the running one."""
    restart = [key for key in RESTART_ONLY if _get(running, key) != _get(new, key)]
    # what needs a restart stays as the daemon runs it; everything else is the new file's
    kept = new.model_copy(update={
        "store": running.store, "api": running.api, "history": running.history,
        "gateway": new.gateway.model_copy(update={"id": running.gateway.id,
                                                  "state_dir": running.gateway.state_dir}),
    })
    out = Plan(kept, restart_needed=restart)
    for name in type(new).model_fields:
        if name in ("source", "adapters"):
            continue
        if getattr(running, name) != getattr(kept, name):
            out.sections.add(name)
    before, after = _enabled(running.adapters), _enabled(new.adapters)
    out.adapters_removed = [n for n in before if n not in after]
    out.adapters_added = [n for n in after if n not in before]
    out.adapters_changed = [n for n in after if n in before and after[n] != before[n]]
    if out.adapters_added or out.adapters_removed or out.adapters_changed:
        out.sections.add("adapters")
    return out


@dataclass
class ReloadResult:
    """The outcome of one reload, for the log line and the API's answer."""

    config: str
    #: one line per problem of an invalid file (then nothing changed)
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)
    #: parts that could not be applied (logged with the reason; the rest was)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed

    def summary(self) -> str:
        """The one line a reload logs."""
        if self.problems:
            return (f"reload of {self.config} refused: {len(self.problems)} problem(s) in "
                    "the file; nothing changed")
        parts = [f"changed: {', '.join(self.changed)}" if self.changed else "nothing changed"]
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        if self.restart_needed:
            parts.append(f"needs a restart (left as it was): {', '.join(self.restart_needed)}")
        return f"reload of {self.config}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "config": self.config, "summary": self.summary(),
                "changed": self.changed, "restart_needed": self.restart_needed,
                "failed": self.failed, "problems": self.problems}
