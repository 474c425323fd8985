"""What every image build step shares: the host tools, the stage timer, running a step,
removing a build directory (never through a mount point)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ..errors import ImageError
from ..util.procs import find_tool, run_step

log = logging.getLogger("testbed.image.build")

# host tool -> Debian package that ships it
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
    "chroot": "coreutils",
}
# ... and what a foreign-architecture build needs besides (its guest's QEMU is checked
# when the second stage starts)
FOREIGN_TOOLS = {"depmod": "kmod"}


def check_host_tools(foreign: bool = False) -> None:
    for tool, package in {**HOST_TOOLS, **(FOREIGN_TOOLS if foreign else {})}.items():
        find_tool(tool, package)


def tool(name: str) -> str:
    return find_tool(name, HOST_TOOLS.get(name, FOREIGN_TOOLS.get(name, name)))


class Stages:
    """Times the build's stages (``with stages("name"): ...``) and logs progress."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: dict[str, float] = {}
        self._stage: str | None = None
        self._t0 = 0.0

    def say(self, message: str) -> None:
        log.info("image: [%6.1fs] %s", time.monotonic() - self.start, message)

    def __call__(self, name: str) -> "Stages":
        self._stage = name
        return self

    def __enter__(self):
        self._t0 = time.monotonic()
        self.say(f"{self._stage} ...")
        return self

    def __exit__(self, exc_type, exc, tb):
        took = time.monotonic() - self._t0
        self.times[self._stage or "?"] = round(took, 2)
        if exc_type is None:
            self.say(f"{self._stage} done ({took:.1f}s)")
        return False


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt.startswith(prefix) or mnt == prefix[:-1]:
                    found.append(mnt)
    except OSError:
        pass
    return found


def remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a killed mmdebstrap may leave some)."""
    if not path.exists():
        return
    mounts = mounts_under(path)
    if mounts:
        raise ImageError(f"refusing to delete {path}: still mounted there: {', '.join(mounts)}; "
                         "unmount them (umount -R) and retry")
    shutil.rmtree(path)


def run(argv: list[str], what: str, stages: Stages, stream: bool = False) -> None:
    """Run a build step; on failure raise ImageError with the output's tail."""
    def show(line: str) -> None:
        if stream and line[:2] in ("I:", "W:", "E:"):
            stages.say(f"  {what}: {line}")

    run_step(argv, what, error=ImageError, on_line=show)


def mke2fs(tree: Path, raw: Path, size_mib: int, label: str, stages: Stages) -> None:
    """An ext4 filesystem image of ``tree`` (no mount: ``mke2fs -d``)."""
    run([tool("mke2fs"), "-q", "-F", "-t", "ext4", "-L", label, "-m", "0",
         "-E", "root_owner=0:0", "-d", str(tree), str(raw), f"{size_mib}M"], "mke2fs", stages)
