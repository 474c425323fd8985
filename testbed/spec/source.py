"""Finding and reading a topology file: library names, paths, and the checks on the file
itself (type, size, encoding) before any YAML is parsed.

    >>> sorted(library())[:2]
    ['fabric-large', 'nvme-pmr']
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Problem, SpecError, did_you_mean
from ..paths import topologies_dir

MAX_FILE_BYTES = 1 << 20



def library() -> dict[str, Path]:
    """The topologies shipped in ``topologies/``, by name."""
    return {p.stem: p for p in sorted(topologies_dir().glob("*.yaml"))}


def resolve(name_or_path: str | Path) -> Path:
    """A library name (``switch-cmb``) or a path -> the file's path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(name_or_path):
        return p
    lib = library()
    if str(name_or_path) in lib:
        return lib[str(name_or_path)]
    raise SpecError([Problem(str(name_or_path), 1, 1, "", "no such topology file or library "
                             f"name{did_you_mean(str(name_or_path), lib)}; library: "
                             f"{', '.join(lib) or '(empty)'}")])


def read_text(path: Path) -> str:
    """The file as text, or SpecError for a missing, unreadable or binary file."""
    where = str(path)
    try:
        if path.is_dir():
            raise SpecError([Problem(where, 1, 1, "", "is a directory, not a topology file")])
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        raise SpecError([Problem(where, 1, 1, "", "no such file")]) from None
    except OSError as exc:
        raise SpecError([Problem(where, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError([Problem(where, 1, 1, "", "file is larger than 1 MiB: not a topology")])
    if b"\0" in data:
        raise SpecError([Problem(where, 1, 1, "", "binary data (NUL bytes): not a YAML file")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = len(data[data.rfind(b"\n", 0, exc.start) + 1: exc.start].decode("utf-8")) + 1
        raise SpecError([Problem(where, line, col, "", f"not UTF-8 text (byte "
                                 f"{data[exc.start]:#04x}): save the file as UTF-8")]) from None


