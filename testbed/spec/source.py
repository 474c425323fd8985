"""Finding and reading a topology file: library names, paths, and the checks on the file
itself (type, size, encoding) before any YAML is parsed.

    >>> "switch-cmb" in library() and library()["switch-cmb"].name
    'switch-cmb.yaml'
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import Problem, SpecError, UsageError, did_you_mean
from ..paths import topologies_dir

MAX_FILE_BYTES = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: ``a named pipe (FIFO)``, ...

    >>> file_kind(stat.S_IFIFO)
    'a named pipe (FIFO)'
    """
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")

def library() -> dict[str, Path]:
    """The topologies shipped in ``topologies/``, by name."""
    return {p.stem: p for p in sorted(topologies_dir().glob("*.yaml"))}


def resolve(name_or_path: str | Path) -> Path:
    """A library name (``switch-cmb``) or a path -> the file's path."""
    if not str(name_or_path).strip():
        raise UsageError("an empty topology name: give a library name (such as switch-cmb) "
                         "or the path of a YAML file")
    if "\0" in str(name_or_path):
        raise UsageError(f"{name_or_path!r}: a NUL byte in the topology's name")
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
    """The file as text, or SpecError for a missing, unreadable, special or binary file.

    The file's type is checked before it is opened (a FIFO would block, ``/dev/zero``
    never ends), and at most the size limit is read."""
    where = str(path)

    def fail(message: str) -> SpecError:
        return SpecError([Problem(where, 1, 1, "", message)])

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail("no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail("a loop of symbolic links, not a topology file") from None
        raise fail(f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise fail("is a directory, not a topology file")
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"is {file_kind(st.st_mode)}, not a topology file (a regular YAML file)")
    if st.st_size > MAX_FILE_BYTES:
        raise fail("file is larger than 1 MiB: not a topology")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
                raise fail("is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
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


