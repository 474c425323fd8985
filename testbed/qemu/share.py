"""A host directory shared with the guest (``--share HOSTDIR[:GUESTDIR][:rw]``): the value,
checked before anything starts.

QEMU exports each share over virtio-9p (``-fsdev local`` + ``virtio-9p-pci``, built by
:mod:`testbed.qemu.cmdline`); the guest mounts it once SSH is up
(:mod:`testbed.guest.share`).  9p needs no daemon on the host, and on this project's
bookworm hosts it is the only choice: Debian ships ``virtiofsd`` from trixie on, built
against a newer glibc (see the README's measurements).

    >>> import tempfile
    >>> d = tempfile.mkdtemp(prefix="src-")
    >>> s = parse_share(f"{d}:/mnt/src:rw")
    >>> s.guest, s.writable
    ('/mnt/src', True)
    >>> parse_share(d).guest.startswith("/mnt/src-"), parse_share(d).writable
    (True, False)
    >>> parse_share(f"{d}:mnt/src")
    Traceback (most recent call last):
    ...
    ValueError: guest directory 'mnt/src': not an absolute path (e.g. /mnt/src)
    >>> parse_share(f"{d}:/usr/src")
    Traceback (most recent call last):
    ...
    ValueError: guest directory '/usr/src': inside the guest's system directory /usr; mount it under /mnt, /srv, /opt or /root instead
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Where a share may not go in the guest: at, above or inside these (they hold what the
# guest needs to boot, log in and run the testbed's tool), nor above these ...
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var", "/root/.ssh")
# ... nor at or above these (inside them is fine: /tmp/x, /root/src).
COVER_DIRS = ("/tmp", "/root")
# Host directories never exported: the root, and kernel pseudo filesystems.
HOST_REFUSED = ("/", "/proc", "/sys", "/dev")
MODES = ("ro", "rw")


@dataclass(frozen=True)
class Share:
    """One shared directory: ``host`` (absolute, an existing directory), ``guest`` (an
    absolute, normalised guest path) and whether the guest may write to it."""

    host: Path
    guest: str
    writable: bool = False

    @property
    def spec(self) -> str:
        """The canonical ``--share`` value (absolute host path, explicit mode)."""
        return f"{self.host}:{self.guest}:{'rw' if self.writable else 'ro'}"


def share_tag(index: int) -> str:
    """The 9p mount tag (and QEMU id) of the ``index``-th share."""
    return f"tb-share{index}"


def parse_share(text: str) -> Share:
    """``HOSTDIR[:GUESTDIR][:ro|rw]`` -> :class:`Share`; ValueError saying what is wrong.

    GUESTDIR defaults to ``/mnt/<name of HOSTDIR>``; the mode to ``ro``."""
    fields = text.split(":")
    if len(fields) == 2 and fields[1] in MODES:  # HOSTDIR:rw
        fields = [fields[0], "", fields[1]]
    if len(fields) > 3:
        raise ValueError(f"{text!r}: expected HOSTDIR[:GUESTDIR][:ro|rw] (a host directory "
                         "whose name holds ':' cannot be shared)")
    host_text, guest, mode = fields + [""] * (3 - len(fields))
    mode = mode or "ro"
    if mode not in MODES:
        raise ValueError(f"{text!r}: mode {mode!r}: expected ro or rw")
    host = check_host_dir(host_text, writable=mode == "rw")
    if not guest:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", host.name).lstrip(".") or "host"
        guest = f"/mnt/{name}"
    return Share(host, check_guest_dir(guest), mode == "rw")


def check_host_dir(text: str, writable: bool) -> Path:
    """The absolute, resolved host directory; ValueError unless it is one we may export."""
    if not text:
        raise ValueError("an empty host directory")
    if "\0" in text:
        raise ValueError("a NUL byte in the host directory")
    path = Path(text).expanduser()
    if not path.exists():
        raise ValueError(f"host directory {text!r}: no such directory")
    if not path.is_dir():
        raise ValueError(f"host directory {text!r}: not a directory (share the directory "
                         "that holds it)")
    path = path.resolve()
    if str(path) in HOST_REFUSED:
        raise ValueError(f"host directory {text!r}: {path} is not shared (share a directory "
                         "of your own)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"host directory {text!r}: not readable")
    if writable and not os.access(path, os.W_OK):
        raise ValueError(f"host directory {text!r}: not writable, but :rw was asked")
    return path


def check_guest_dir(guest: str) -> str:
    """The normalised guest path; ValueError when it is relative, climbs with ``..``, or
    would cover (or sit inside) a system directory the guest needs."""
    if any(ord(c) < 32 or c == "\x7f" for c in guest):
        raise ValueError(f"guest directory {guest!r}: control characters")
    if not guest.startswith("/"):
        raise ValueError(f"guest directory {guest!r}: not an absolute path (e.g. /mnt/src)")
    if ".." in guest.split("/"):
        raise ValueError(f"guest directory {guest!r}: '..' is not allowed")
    norm = posixpath.normpath(guest)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise ValueError(f"guest directory {guest!r}: the guest's root cannot be covered")
    for d in SYSTEM_DIRS:
        if norm == d or d.startswith(norm + "/"):
            raise ValueError(f"guest directory {guest!r}: would cover the guest's system "
                             f"directory {d}; mount it under /mnt, /srv, /opt or /root instead")
        if norm.startswith(d + "/"):
            raise ValueError(f"guest directory {guest!r}: inside the guest's system directory "
                             f"{d}; mount it under /mnt, /srv, /opt or /root instead")
    for d in COVER_DIRS:
        if norm == d or d.startswith(norm + "/"):
            raise ValueError(f"guest directory {guest!r}: would cover the guest's {d}; use a "
                             f"directory below it (e.g. {d}/src) or under /mnt")
    return norm


def check_shares(shares: Sequence[Share]) -> None:
    """ValueError when two shares use the same guest directory or one lies inside another.

    >>> a, b = Share(Path("/a"), "/mnt/x"), Share(Path("/b"), "/mnt/x/y")
    >>> check_shares([a, b])
    Traceback (most recent call last):
    ...
    ValueError: /mnt/x/y (from /b) is inside /mnt/x (from /a): give each share its own guest directory
    """
    for i, a in enumerate(shares):
        for b in shares[i + 1:]:
            if a.guest == b.guest:
                raise ValueError(f"{a.host} and {b.host} are both mounted on {a.guest}: give "
                                 "each share its own guest directory (HOSTDIR:GUESTDIR)")
            for outer, inner in ((a, b), (b, a)):
                if inner.guest.startswith(outer.guest + "/"):
                    raise ValueError(f"{inner.guest} (from {inner.host}) is inside "
                                     f"{outer.guest} (from {outer.host}): give each share its "
                                     "own guest directory")
