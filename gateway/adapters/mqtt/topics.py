"""Topic templates: ``sensors/{device}/{metric}`` ↔ subscription filters and topic names.

A template is a topic whose segments are literals, ``+`` or ``{name}`` placeholders
(each placeholder stands for exactly one segment), optionally ending in ``#``: the rest
of the topic, one or more segments, given to the payload format as the ``#`` slot
(``shellies/{device}/#`` matches ``shellies/plug1/relay/0/power`` with
``# = relay/0/power``). The same template gives the
subscription filter (placeholders become ``+``), extracts the named segments from an
incoming topic, and fills them in to build an outgoing topic (commands).
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


class TopicTemplate:
    """One parsed template; raises ValueError with a readable reason when malformed."""

    __slots__ = ("text", "filter", "names", "_segments", "_slots", "_rest")

    def __init__(self, text: str) -> None:
        if not text or text.startswith("$"):
            raise ValueError("expected a topic such as sensors/{device}/{metric} "
                             "(not empty, not a $SYS topic)")
        segments = text.split("/")
        names: list[str] = []
        slots: list[tuple[int, str]] = []
        filter_parts: list[str] = []
        for i, seg in enumerate(segments):
            m = _PLACEHOLDER.match(seg)
            if m:
                name = m.group(1)
                if name in names:
                    raise ValueError(f"placeholder {{{name}}} appears twice in {text!r}")
                names.append(name)
                slots.append((i, name))
                filter_parts.append("+")
            elif "{" in seg or "}" in seg:
                raise ValueError(f"segment {seg!r} of {text!r}: a placeholder must be a whole "
                                 "segment, like {device}")
            elif seg == "#":
                if i != len(segments) - 1:
                    raise ValueError(f"{text!r}: '#' must be the last segment")
                filter_parts.append("#")
            elif "+" in seg and seg != "+" or "#" in seg:
                raise ValueError(f"segment {seg!r} of {text!r}: wildcards must be whole segments")
            else:
                filter_parts.append(seg)
        self.text = text
        self._rest = segments[-1] == "#"
        if self._rest:
            segments = segments[:-1]
        self.filter = "/".join(filter_parts)
        self.names = tuple(names)
        self._segments = segments
        self._slots = tuple(slots)

    def match(self, topic: str) -> dict[str, str] | None:
        """The placeholder values in ``topic``, or None when it does not fit."""
        parts = topic.split("/")
        n = len(self._segments)
        if len(parts) != n and not (self._rest and len(parts) > n):
            return None
        for seg, part in zip(self._segments, parts, strict=False):
            if seg[:1] != "{" and seg != "+" and seg != part:
                return None
        out = {}
        for i, name in self._slots:
            if not parts[i]:
                return None
            out[name] = parts[i]
        if self._rest:
            out["#"] = "/".join(parts[n:])
        return out

    def fill(self, **values: str) -> str:
        """The topic with each placeholder replaced (``+`` segments are not allowed here)."""
        if "+" in self._segments or self._rest:
            raise ValueError(f"{self.text!r} has wildcards: cannot publish to it")
        parts = list(self._segments)
        for i, name in self._slots:
            value = values.get(name)
            if not value:
                raise ValueError(f"no value for {{{name}}} in {self.text!r}")
            if "/" in value or "+" in value or "#" in value:
                raise ValueError(f"{{{name}}} = {value!r} cannot contain '/', '+' or '#'")
            parts[i] = value
        return "/".join(parts)

    def __repr__(self) -> str:
        return f"TopicTemplate({self.text!r})"
