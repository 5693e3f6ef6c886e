"""Load YAML into plain data plus the line of every JSON path, so problems can point at the file."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

# the C loader is ~10x faster on large files; the pure Python one where PyYAML was built without libyaml
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.path = path


class DuplicateKeyError(YamlSyntaxError):
    pass


@dataclass(frozen=True)
class Marked:
    """Parsed data and where each JSON path ('$', '$.hosts[3].ip') starts (1-based line)."""

    data: object
    lines: dict[str, int]

    def line_of(self, path: str) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = _parent(path)
        return 1


def _parent(path: str) -> str:
    if path == "$":
        return ""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else "$"


def child_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if text.replace("_", "").replace("-", "").isalnum():
        return f"{path}.{text}"
    return f"{path}[{text!r}]"


def load_marked(text: str) -> Marked:
    """Parse one YAML document; raise YamlSyntaxError with a line for bad syntax or duplicate keys."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(line, f"{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(1, str(e)) from None
    if node is None:
        return Marked(None, {"$": 1})
    converter = _Converter()
    try:
        data = converter.convert(node, "$", ())
    except yaml.MarkedYAMLError as e:  # e.g. an unsafe tag such as !!python/object
        mark = e.problem_mark or e.context_mark
        raise YamlSyntaxError(mark.line + 1 if mark else 1, f"{e.problem or e.context}") from None
    return Marked(data, converter.lines)


MAX_NODES = 500_000  # far above a 10k-host file; stops alias bombs ("billion laughs") early


class _Converter:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")  # only for scalar resolution (ints, bools, nulls)

    def convert(self, node: yaml.Node, path: str, parents: tuple[int, ...]) -> object:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlSyntaxError(
                node.start_mark.line + 1, f"the document expands to more than {MAX_NODES} values (alias bomb?)"
            )
        if id(node) in parents:
            raise YamlSyntaxError(node.start_mark.line + 1, "an alias refers to its own parent (recursive structure)")
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            parents = (*parents, id(node))
        return _convert(self, node, path, parents)


def _convert(conv: _Converter, node: yaml.Node, path: str, parents: tuple[int, ...]) -> object:
    lines, constructor = conv.lines, conv.constructor
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[object, object] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node)
            if isinstance(key, list | dict):
                raise YamlSyntaxError(key_node.start_mark.line + 1, "a mapping key must be a plain value")
            child = child_path(path, key)
            if key in out:
                raise DuplicateKeyError(key_node.start_mark.line + 1, f"duplicate key {key!r}", child)
            out[key] = conv.convert(value_node, child, parents)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [conv.convert(item, child_path(path, i), parents) for i, item in enumerate(node.value)]
    return constructor.construct_object(node)
