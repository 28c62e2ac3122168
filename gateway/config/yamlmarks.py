"""YAML loading that remembers where every key and item came from (file, line, column).

Whatever a file holds, :func:`load_yaml` returns data or raises :class:`YamlError` with
one line naming file, line, column and (where known) the key path. Files are bounded:
at most :data:`MAX_FILE_BYTES`, :data:`MAX_DEPTH` levels of nesting and
:data:`MAX_NODES` values once aliases are expanded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]

#: a config file is a few KiB; anything past this is not one (or is /dev/zero)
MAX_FILE_BYTES = 4 * 1024 * 1024
#: levels of nesting (mappings and lists inside each other)
MAX_DEPTH = 64
#: values one file may expand to: aliases of aliases ("billion laughs") stop here
MAX_NODES = 100_000

_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {"int": "integer", "float": "number", "bool": "boolean",
          "timestamp": "date or time", "binary": "base64 value", "null": "null"}


class YamlError(Exception):
    """The file could not be read or parsed; the message names file and line."""


def dotted(loc: Loc) -> str:
    """``("adapters", 0, "port")`` → ``adapters[0].port``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class Marks:
    """Source positions of every node in a loaded YAML document, by key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._by_path: dict[Loc, tuple[int, int]] = {}

    def add(self, path: Loc, node: yaml.Node) -> None:
        self._by_path[path] = (node.start_mark.line + 1, node.start_mark.column + 1)

    def __len__(self) -> int:
        return len(self._by_path)

    def find(self, path: Loc) -> tuple[int, int] | None:
        """Position of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self._by_path:
                return self._by_path[p]
            if not p:
                return None
            p = p[:-1]


class _Loader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # the composer recurses once per level: refuse absurd nesting before Python's stack
        # runs out
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _one_line(what: object) -> str:
    return " ".join(str(what).split())


def _snippet(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


class _Builder:
    """Turns the node graph into plain data, recording every key path's position.

    Aliases are expanded (each use gets its own path and position), so their total is
    bounded; an alias inside the collection it names, and a merge (``<<``) of a mapping
    into itself, are errors instead of endless recursion.
    """

    def __init__(self, marks: Marks, loader: _Loader) -> None:
        self.marks = marks
        self.loader = loader
        self.count = 0
        self.open: set[int] = set()
        self.merging: set[int] = set()
        self.pairs_of: dict[int, list[tuple[Any, yaml.Node]]] = {}

    def fail(self, node: yaml.Node, path: Loc, message: str) -> YamlError:
        mark = node.start_mark
        return YamlError(f"{self.marks.file}:{mark.line + 1}:{mark.column + 1}: "
                         f"{dotted(path)}: {message}")

    def build(self, node: yaml.Node, path: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, path, f"the file expands to more than {MAX_NODES} values "
                            "(aliases repeating aliases?); a config is far smaller")
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep "
                            "(through aliases)")
        self.marks.add(path, node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.open:
            raise self.fail(node, path, "an alias refers to the mapping or list it is in; "
                            "it would never end")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return {key: self.build(value, (*path, str(key)))
                        for key, value in self.pairs(node, path)}
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: Loc) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - the constructors' own errors, e.g. 2020-13-45
            kind = _KINDS.get(str(node.tag).rsplit(":", 1)[-1], "value")
            reason = "too many digits" if "digits" in str(exc) else (
                _one_line(exc) if kind == "date or time" and isinstance(exc, ValueError) else "")
            raise self.fail(node, path, f"{_snippet(str(node.value))} is not a valid {kind}"
                            + (f" ({reason})" if reason else "")) from None

    def pairs(self, node: yaml.MappingNode, path: Loc) -> list[tuple[Any, yaml.Node]]:
        """Keys and value nodes of a mapping, merges (``<<: *base``) applied.

        Keys written in the mapping override merged ones; of several merged mappings the
        first listed wins (YAML's merge rule). Each key may be written once.
        """
        done = self.pairs_of.get(id(node))
        if done is not None:
            return done
        if id(node) in self.merging:
            raise self.fail(node, path, "a merge (<<) includes the mapping it is in")
        self.merging.add(id(node))
        merged: dict[Any, yaml.Node] = {}
        own: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = (value_node.value if isinstance(value_node, yaml.SequenceNode)
                           else [value_node])
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        raise self.fail(source, path, "<< merges a mapping (*anchor) or a "
                                        "list of them")
                    for key, value in self.pairs(source, path):
                        merged.setdefault(key, value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, path, "a mapping key must be a plain value")
            key = self.scalar(key_node, path)
            try:
                hash(key)
            except TypeError:
                raise self.fail(key_node, path, "a mapping key must be a plain value") from None
            if key in own:
                raise self.fail(key_node, (*path, str(key)), f"duplicate key {key!r}")
            own[key] = value_node
        self.merging.discard(id(node))
        result = list({**merged, **own}.items())
        self.pairs_of[id(node)] = result
        return result


def _read(path: str | Path) -> str:
    file = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlError(f"{file}: no such file") from None
    except OSError as exc:
        raise YamlError(f"{file}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise YamlError(f"{file}: larger than {MAX_FILE_BYTES // 1024**2} MiB; a config file is "
                        "a few KiB (is this the right file?)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlError(f"{file}:1:1: not valid UTF-8 (the file is UTF-16); save the file as "
                        "UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        column = len(raw[start:exc.start].decode("utf-8", "replace")) + 1
        raise YamlError(f"{file}:{line}:{column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        "save the file as UTF-8") from None


def load_yaml(path: str | Path) -> tuple[Any, Marks]:
    """Parse one YAML file; return its data and the positions of its keys."""
    file = str(path)
    text = _read(path)
    marks = Marks(file)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # the reader refuses control characters up front
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlError(f"{file}:{line}:{column}: character U+{char:04X} is not allowed in "
                        "YAML (control characters other than tab and newline); remove it"
                        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{file}: invalid YAML: {_one_line(exc)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, marks
        return _Builder(marks, loader).build(node, ()), marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise YamlError(f"{where}: invalid YAML: {_one_line(exc.problem or exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{file}: invalid YAML: {_one_line(exc)}") from None
    except RecursionError:
        mark = loader.get_mark()
        raise YamlError(f"{file}:{mark.line + 1}:{mark.column + 1}: nested too deeply to be "
                        "a config file") from None
    finally:
        loader.dispose()
