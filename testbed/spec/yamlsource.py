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

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Problem, SpecError

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


class Lines:
    """Line and column of a character index, as an editor counts them.

    PyYAML's own marks also start a new line at U+0085, U+2028 and U+2029, which editors
    show inside a line; here only LF, CRLF and CR end a line (and a BOM takes no column).
    """

    def __init__(self, text: str):
        self.bom = text.startswith("\ufeff")
        self.starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]

    def position(self, index: int) -> tuple[int, int]:
        """1-based (line, column) of character ``index``."""
        line = bisect.bisect_right(self.starts, index)
        col = index - self.starts[line - 1] + 1
        if line == 1 and self.bom and index > 0:
            col -= 1
        return line, col


def positions(root: Sourced) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Where every value and every key of the document was written, by field path
    (``pcie[0].device.cmb``), so later passes can point at a line without the YAML.

    >>> values, keys = positions(load("a:\\n  b: [1, 2]\\n", "x.yaml"))
    >>> values["a.b[1]"], keys["a.b"]
    ((2, 10), (2, 3))
    """
    values: dict[str, tuple[int, int]] = {}
    keys: dict[str, tuple[int, int]] = {}

    def visit(node: Sourced, path: str) -> None:
        values[path] = (node.line, node.col)
        if isinstance(node.value, dict):
            for k, v in node.value.items():
                sub = f"{path}.{k}" if path else k
                if k in node.key_line:
                    keys[sub] = node.key_line[k]
                visit(v, sub)
        elif isinstance(node.value, list):
            for i, v in enumerate(node.value):
                visit(v, f"{path}[{i}]")

    visit(root, "")
    return values, keys


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character ``index`` of ``text`` (see :class:`Lines`)."""
    return Lines(text).position(index)


_BAD = object()  # a scalar that could not be constructed (already reported)
_ODD_BREAKS = "\x85\u2028\u2029"


def _code(character) -> int:
    return character if isinstance(character, int) else ord(character)


class _Builder:
    def __init__(self, filename: str, text: str):
        self.filename = filename
        self.lines = Lines(text)
        self.constructor = yaml.SafeLoader("")
        self.count = 0
        self.problems: list[Problem] = []

    def where(self, node: yaml.Node) -> tuple[int, int]:
        return self.lines.position(node.start_mark.index)

    def build(self, node: yaml.Node, path: str) -> Sourced:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError([Problem(self.filename, *self.where(node), path,
                                     f"document is too large (more than {MAX_NODES} values)")])
        line, col = self.where(node)
        if isinstance(node, yaml.MappingNode):
            out = Sourced({}, line, col)
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(self.filename, *self.where(key_node), path,
                                                 "merge keys ('<<') are not supported"))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(Problem(self.filename, *self.where(key_node), path,
                                                 "keys must be plain words"))
                    continue
                key = self.scalar(key_node, path)
                if key is _BAD:
                    continue
                key = str(key)
                kline, kcol = self.where(key_node)
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
        value = self.scalar(node, path)
        return Sourced(None if value is _BAD else value, line, col)

    def scalar(self, node: yaml.Node, path: str):
        """The Python value of a scalar node (a key or a value), or _BAD after a problem."""
        try:
            return self.constructor.construct_object(node)
        except Exception as exc:  # noqa: BLE001 - e.g. "!!int abc" raises ValueError, "!!bool x" KeyError
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            reason = getattr(exc, "problem", None) or f"{node.value!r} is not a valid {tag} value"
            self.problems.append(Problem(self.filename, *self.where(node), path, f"bad value: "
                                         f"{reason} (remove the {tag!r} tag and write a plain "
                                         "value)"))
            return _BAD


def load(text: str, filename: str) -> Sourced:
    """Parse one YAML document; raise :class:`SpecError` on any syntax problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = position(text, mark.index) if mark else (1, 1)
        context = exc.context
        cmark = exc.context_mark
        cline, ccol = position(text, cmark.index) if cmark is not None else (line, col)
        if context and cline != line:
            context += f" that starts on line {cline}, column {ccol},"
        msg = " ".join(filter(None, [context, exc.problem])) or "invalid YAML"
        if "'\\t'" in msg:
            msg += " (indent with spaces, not tabs)"
        lines = re.split(r"\r\n|\r|\n", text)
        odd = sorted({c for n in {line, cline} if n <= len(lines) for c in lines[n - 1]
                      if c in _ODD_BREAKS})
        if odd:
            msg += (f" (the line contains U+{ord(odd[0]):04X}, which YAML reads as a line break: "
                    "remove it, or quote the value)")
        raise SpecError([Problem(filename, line, col, "", f"YAML syntax error: {msg}")]) from None
    except yaml.reader.ReaderError as exc:  # a control character: not marked with a line
        raise SpecError([Problem(filename, *position(text, exc.position), "",
                                 f"character U+{_code(exc.character):04X} is not allowed in YAML "
                                 "(remove it, or write it as an escape in a double-quoted "
                                 "string)")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(filename, 1, 1, "", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise SpecError([Problem(filename, 1, 1, "", "document is nested too deeply")]) from None
    except ValueError as exc:  # e.g. NUL or other unprintable characters
        raise SpecError([Problem(filename, 1, 1, "", f"not a YAML text file: {exc}")]) from None
    if node is None:
        what = "has only comments" if text.strip() else "is empty"
        raise SpecError([Problem(filename, 1, 1, "", f"file {what}: expected a topology mapping "
                                 "(name, machine, pcie, ...)")])
    builder = _Builder(filename, text)
    try:
        root = builder.build(node, "")
    except RecursionError:
        raise SpecError([Problem(filename, 1, 1, "", "document is nested too deeply")]) from None
    if builder.problems:
        raise SpecError(builder.problems)
    return root
