"""The guest tool travels with the host code: every boot ships the package
``testbed/guest_tool`` into the guest as a zipapp, in the same SSH command that asks it
for the first inventory.  So the host side and the guest side never disagree about
the JSON they exchange, a change to the tool needs no new image, and a custom kernel
or a detached guest runs the same tool.

    >>> data = zipapp_bytes()
    >>> data[:2] == b"#!"
    True
"""

from __future__ import annotations

import functools
import shlex
import shutil
import tempfile
import zipapp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "guest_tool"
GUEST_TOOL = "/usr/local/bin/p2pdma-guest"


def guest_tool_zipapp(package: Path = PACKAGE) -> bytes:
    """The guest tool package as an executable zipapp (``#!/usr/bin/python3``): the
    package becomes ``p2pdma_guest`` inside it, started by its ``cli.main``."""
    with tempfile.TemporaryDirectory(prefix="guest-tool-") as tmp:
        src = Path(tmp) / "src"
        (src / "p2pdma_guest").mkdir(parents=True)
        for f in sorted(package.glob("*.py")):
            shutil.copyfile(f, src / "p2pdma_guest" / f.name)
        (src / "__main__.py").write_text("import sys\n\nfrom p2pdma_guest.cli import main\n\n"
                                         "sys.exit(main())\n")
        target = Path(tmp) / "p2pdma-guest.pyz"
        zipapp.create_archive(src, target, interpreter="/usr/bin/python3")
        return target.read_bytes()


@functools.lru_cache(maxsize=1)
def zipapp_bytes() -> bytes:
    """The zipapp of this checkout's guest tool (built once per process)."""
    return guest_tool_zipapp(PACKAGE)


def install_and_run(args: list[str]) -> str:
    """A guest shell command that installs the zipapp read from stdin and then runs the
    tool with ``args`` (send :func:`zipapp_bytes` as the command's stdin)."""
    tmp = f"{GUEST_TOOL}.new"
    return (f"cat > {tmp} && chmod 755 {tmp} && mv -f {tmp} {GUEST_TOOL} && exec "
            + shlex.join([GUEST_TOOL, *args]))
