"""Read YAML while remembering where every value came from.

PyYAML's safe loader drops line numbers; the topology validator needs them to
say ``file:line:col: field: problem``.  :func:`load` composes the document with
the *safe* loader, turns each node into plain Python data and keeps a
:class:`Sourced` wrapper for every mapping, list and scalar.

    >>> doc = load("a:\\n  b: [1, 2]\\n", "x.yaml")
    >>> doc.value["a"].value["b"].value[1].value, doc.value["a"].value["b"].value[1].line
    (2, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .problems import Problem, SpecError

MAX_NODES = 100_000  # alias bombs expand to more nodes than any topology needs


@dataclass
class Sourced:
    """A value (dict of str->Sourced, list of Sourced, or scalar) and where it was written."""

    value: Any
    line: int
    col: int
    key_line: dict[str, tuple[int, int]] = field(default_factory=dict)

    def plain(self) -> Any:
        """The value with every wrapper removed."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


class _Builder:
    def __init__(self, filename: str):
        self.filename = filename
        self.constructor = yaml.SafeLoader("")
        self.count = 0
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: str) -> Sourced:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError([Problem(self.filename, node.start_mark.line + 1,
                                     node.start_mark.column + 1, path,
                                     f"document is too large (more than {MAX_NODES} values)")])
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.MappingNode):
            out = Sourced({}, line, col)
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(self.filename, key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1, path,
                                                 "merge keys ('<<') are not supported"))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(Problem(self.filename, key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1, path,
                                                 "keys must be plain words"))
                    continue
                key = str(self.constructor.construct_object(key_node))
                kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                sub = f"{path}.{key}" if path else key
                if key in out.value:
                    first = out.key_line[key][0]
                    self.problems.append(Problem(self.filename, kline, kcol, sub,
                                                 f"duplicate key (first given on line {first})"))
                    continue
                out.key_line[key] = (kline, kcol)
                out.value[key] = self.build(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return Sourced([self.build(n, f"{path}[{i}]") for i, n in enumerate(node.value)],
                           line, col)
        try:
            value = self.constructor.construct_object(node)
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.filename, line, col, path, f"bad value: {exc}"))
            value = None
        return Sourced(value, line, col)


def load(text: str, filename: str) -> Sourced:
    """Parse one YAML document; raise :class:`SpecError` on any syntax problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise SpecError([Problem(filename, line, col, "", f"YAML syntax error: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(filename, 1, 1, "", f"YAML error: {exc}")]) from None
    except (ValueError, RecursionError) as exc:  # e.g. NUL or other unprintable characters
        raise SpecError([Problem(filename, 1, 1, "", f"not a YAML text file: {exc}")]) from None
    if node is None:
        raise SpecError([Problem(filename, 1, 1, "", "file is empty: expected a topology mapping")])
    builder = _Builder(filename)
    try:
        root = builder.build(node, "")
    except RecursionError:
        raise SpecError([Problem(filename, 1, 1, "", "document is nested too deeply")]) from None
    if builder.problems:
        raise SpecError(builder.problems)
    return root
