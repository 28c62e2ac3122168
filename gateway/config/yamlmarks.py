"""YAML loading that remembers where every key and item came from (file, line, column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


class YamlError(Exception):
    """The file could not be read or parsed; the message names file and line."""


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
    pass


#: nodes one file may expand to: aliases of aliases ("billion laughs") stop here
MAX_NODES = 100_000


def _construct(node: yaml.Node, path: Loc, marks: Marks, loader: _Loader) -> Any:
    marks.add(path, node)
    if len(marks) > MAX_NODES:
        raise YamlError(f"{marks.file}:{node.start_mark.line + 1}: more than {MAX_NODES} "
                        "values (aliases expanding into each other?); a config is far smaller")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (dict, list)):
                raise YamlError(
                    f"{marks.file}:{key_node.start_mark.line + 1}: a mapping key must be a "
                    "plain value"
                )
            if key in out:
                raise YamlError(
                    f"{marks.file}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                )
            out[key] = _construct(value_node, (*path, str(key)), marks, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), marks, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _one_line(what: object) -> str:
    return " ".join(str(what).split())


def load_yaml(path: str | Path) -> tuple[Any, Marks]:
    """Parse one YAML file; return its data and the positions of its keys."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise YamlError(f"{file}: no such file") from None
    except OSError as exc:
        raise YamlError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(f"{file}:{line}:{column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        "save the file as UTF-8") from None
    marks = Marks(file)
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise YamlError(f"{file}: invalid YAML: {_one_line(exc)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, marks
        return _construct(node, (), marks, loader), marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise YamlError(f"{where}: invalid YAML: {_one_line(exc.problem or exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{file}: invalid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise YamlError(f"{file}: nested too deeply to be a config file") from None
    finally:
        loader.dispose()
