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

    def find(self, path: Loc) -> tuple[int, int] | None:
        """Position of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self._by_path:
                return self._by_path[p]
            if not p:
                return None
            p = p[:-1]


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    pass


def _construct(node: yaml.Node, path: Loc, marks: Marks, loader: _Loader) -> Any:
    marks.add(path, node)
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


def load_yaml(path: str | Path) -> tuple[Any, Marks]:
    """Parse one YAML file; return its data and the positions of its keys."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlError(f"{file}: cannot read: {exc}") from None
    marks = Marks(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, marks
        return _construct(node, (), marks, loader), marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise YamlError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{file}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
