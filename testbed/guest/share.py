"""Mount the shared host directories (``--share``) in a booted guest.

QEMU exports each one over virtio-9p with the mount tag :func:`share_tag` (see
:mod:`testbed.qemu.share`); once SSH is up the guest loads 9p (modules of Debian's
kernel; nothing to load for a kernel that has it built in) and mounts each share,
read-only unless asked, with ``cache=none`` so an edit on the host is seen at once.

    >>> from pathlib import Path
    >>> print(mount_command(Share(Path("/src"), "/mnt/my src", True), 0, first=True))
    modprobe -q -a 9pnet_virtio 9p 2>/dev/null; mkdir -p '/mnt/my src' && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none,rw tb-share0 '/mnt/my src'
"""

from __future__ import annotations

import logging
import shlex

from ..errors import ShareMountFailed
from ..qemu.share import Share, share_tag
from .protocol import Runs

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=none"
MODULES = ("9pnet_virtio", "9p")
KCONFIG = "CONFIG_NET_9P=y, CONFIG_NET_9P_VIRTIO=y and CONFIG_9P_FS=y"


def mount_command(share: Share, index: int, first: bool = False) -> str:
    """The guest shell command that mounts one share (``first`` loads 9p too)."""
    guest = shlex.quote(share.guest)
    load = f"modprobe -q -a {' '.join(MODULES)} 2>/dev/null; " if first else ""
    return (f"{load}mkdir -p {guest} && mount -t 9p -o "
            f"{MOUNT_OPTIONS},{'rw' if share.writable else 'ro'} {share_tag(index)} {guest}")


def mount_shares(guest: Runs, shares: tuple[Share, ...], argv: list[str]) -> None:
    """Mount every share over ``guest`` (a guest, or its SSH connection); ShareMountFailed
    (naming the share, with the QEMU ``argv``) when one does not mount."""
    for i, share in enumerate(shares):
        res = guest.run(mount_command(share, i, first=i == 0), timeout=60)
        if not res.ok:
            output = (res.stderr or res.stdout).strip()
            raise ShareMountFailed(
                f"--share {share.spec}: the guest could not mount it: {output or res.describe()}"
                f" (a custom kernel needs {KCONFIG}, or them as modules)",
                argv=argv or None, share=share.spec, output=output)
        log.info("shared %s on %s (%s)", share.host, share.guest,
                 "read-write" if share.writable else "read-only")
