"""The guest tool travels with the host code: every boot ships the package
``testbed/guest_tool`` into the guest, in the same SSH command that asks it for the first
inventory.  So the host side and the guest side never disagree about the JSON they
exchange, a change to the tool needs no new image, and a custom kernel or a detached
guest runs the same tool.

It travels as a tar of the package and is unpacked into :data:`GUEST_LIB`, a plain
directory: the guest's Python then keeps each module's compiled bytecode, so only the
first call that uses a module compiles it (under TCG compiling the whole tool cost
about 1.5 s on every call when it ran from a zipapp, where nothing is cached).
:data:`GUEST_TOOL` is the command, a three-line Python script that runs it.

    >>> import io, tarfile
    >>> names = tarfile.open(fileobj=io.BytesIO(package_tar())).getnames()
    >>> "p2pdma_guest/cli.py" in names, "p2pdma-guest" in names
    (True, True)
"""

from __future__ import annotations

import functools
import io
import shlex
import tarfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "guest_tool"
GUEST_TOOL = "/usr/local/bin/p2pdma-guest"
GUEST_LIB = "/usr/local/lib/p2pdma-guest"
LAUNCHER = (f"#!/usr/bin/python3\nimport sys\nsys.path.insert(0, {GUEST_LIB!r})\n"
            "from p2pdma_guest.cli import main\nsys.exit(main())\n")


def guest_tool_tar(package: Path = PACKAGE) -> bytes:
    """The guest tool as a tar: the package as ``p2pdma_guest/`` and the launcher as
    ``p2pdma-guest`` (mode 755).  Fixed times and owners: the same code, the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        for f in sorted(package.glob("*.py")):
            add(f"p2pdma_guest/{f.name}", f.read_bytes(), 0o644)
        add("p2pdma-guest", LAUNCHER.encode(), 0o755)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def package_tar() -> bytes:
    """The tar of this checkout's guest tool (built once per process)."""
    return guest_tool_tar(PACKAGE)


def install_and_run(args: list[str]) -> str:
    """A guest shell command that unpacks the tar read from stdin (send
    :func:`package_tar` as the command's stdin) into :data:`GUEST_LIB`, installs the
    launcher as :data:`GUEST_TOOL` and runs the tool with ``args``.  The directory is
    replaced only when the tool differs from the one already there, so the bytecode an
    earlier call compiled stays (a detached guest, a rerun); a changed tool replaces it
    whole, bytecode included."""
    new, lib = f"{GUEST_LIB}.new", GUEST_LIB
    return (f"rm -rf {new} && mkdir -p {new} && tar -x -m -C {new} && "
            f"if ! diff -r -q -x __pycache__ {new} {lib} >/dev/null 2>&1; then "
            f"rm -rf {lib} && mv {new} {lib}; else rm -rf {new}; fi && "
            f"install -m 755 {lib}/p2pdma-guest {GUEST_TOOL} && exec "
            + shlex.join([GUEST_TOOL, *args]))
