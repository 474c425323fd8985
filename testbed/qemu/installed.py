"""QEMU installations as data: which private roots exist, under which names, and how a
name, a version or a path becomes a :class:`~testbed.qemu.binary.Qemu`.

Layout, under ``<cache_dir()>/qemu/``::

    roots/<key>/root/            the Debian tree (mmdebstrap --variant=apt)
    roots/<key>/manifest.json    source, package versions, QEMU version, size, seconds
    roots/.tmp-<pid>/            an install in progress (never used; removed next time)
    names/<name>.json            {"key": ...}: which root a name means
    .lock                        held while installing or removing

``<key>`` is a hash of the source and the versions of every package in the root, so two
installs that resolved to the same packages share one root.  A root is published by a
rename once its manifest is written and its QEMU has run, and a name is pointed at it
by an atomic write: an interrupted install leaves at most a ``.tmp-`` directory that
nothing reads.  Building a root is :mod:`testbed.image.qemu_root` (it needs the host's
Debian mirror); this module only reads and removes.

    >>> resolve_qemu("/nonexistent/qemu-system-x86_64")
    Traceback (most recent call last):
    ...
    testbed.errors.QemuNotFound: QEMU binary '/nonexistent/qemu-system-x86_64' not found or not executable (no such file or directory)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import QemuNotFound, UsageError
from ..paths import cache_dir
from ..util.files import atomic_write
from .binary import DEFAULT_PROGRAM, Qemu, from_path, from_root, host

MANIFEST = "manifest.json"
HOST = "host"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def qemu_dir() -> Path:
    return cache_dir() / "qemu"


def roots_dir() -> Path:
    return qemu_dir() / "roots"


def names_dir() -> Path:
    return qemu_dir() / "names"


@dataclass(frozen=True)
class Installation:
    """One named QEMU installation (a private root and what its install recorded)."""

    name: str
    key: str
    directory: Path  # roots/<key>
    manifest: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def version(self) -> str:
        return str(self.manifest.get("qemu_version", ""))

    def qemu(self, program: str = DEFAULT_PROGRAM) -> Qemu:
        """Its QEMU (QemuNotFound when the root is broken)."""
        return from_root(self.root, self.name, program, self.version)


def check_name(name: str, what: str = "name") -> str:
    """A plain installation name (UsageError otherwise); ``host`` is the host's QEMU."""
    if not NAME.fullmatch(name) or name == HOST:
        raise UsageError(f"QEMU installation {what} {name!r}: use letters, digits, '.', "
                         "'_', '+', '-' (at most 64), not 'host'")
    return name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _manifest(directory: Path) -> dict[str, Any] | None:
    data = _read_json(directory / MANIFEST)
    return data if isinstance(data, dict) and data.get("key") == directory.name else None


def find(name: str) -> Installation | None:
    """The installation called ``name`` (None: no such name, or its root is gone)."""
    if not NAME.fullmatch(name):
        return None
    data = _read_json(names_dir() / f"{name}.json")
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not NAME.fullmatch(key):
        return None
    directory = roots_dir() / key
    manifest = _manifest(directory)
    if manifest is None:
        return None
    return Installation(name, key, directory, manifest)


def installations() -> list[Installation]:
    """Every named installation whose root is published, by name."""
    d = names_dir()
    names = sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
    return [i for i in (find(n) for n in names) if i is not None]


def _by_version(spec: str, found: list[Installation]) -> list[Installation]:
    """Installations whose QEMU version is ``spec`` or starts with ``spec.``."""
    return [i for i in found if i.version == spec or i.version.startswith(spec + ".")]


def resolve_qemu(spec: str, program: str = DEFAULT_PROGRAM) -> Qemu:
    """``host``, a path (a program or a private root), an installation's name or QEMU
    version (``11.1``), or a program on PATH -> the QEMU to run; QemuNotFound otherwise."""
    spec = spec.strip()
    if spec in ("", HOST):
        return host(program)
    if "/" in spec or spec.startswith("~"):
        return from_path(spec, program)
    inst = find(spec)
    if inst is None and re.fullmatch(r"\d+(\.\d+)*", spec):
        matches = _by_version(spec, installations())
        if len(matches) > 1:
            raise QemuNotFound(f"QEMU {spec!r} is ambiguous: installations "
                               + ", ".join(f"{i.name} ({i.version})" for i in matches)
                               + " all match; name one")
        inst = matches[0] if matches else None
    if inst is not None:
        return inst.qemu(program)
    on_path = shutil.which(spec)
    if on_path:
        return Qemu(spec, os.path.realpath(on_path))
    have = ", ".join(f"{i.name} ({i.version})" for i in installations()) or "none"
    raise QemuNotFound(f"no QEMU {spec!r}: not 'host', a path, an installed QEMU (installed: "
                       f"{have}) or a program on PATH; install one with `testbed qemu install "
                       "trixie-backports`")


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """The installations' lock: one install or removal at a time, across processes."""
    qemu_dir().mkdir(parents=True, exist_ok=True)
    with open(qemu_dir() / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def point(name: str, key: str) -> None:
    """Make ``name`` mean the root ``key`` (atomically); the caller holds :func:`locked`."""
    names_dir().mkdir(parents=True, exist_ok=True)
    atomic_write(names_dir() / f"{name}.json", json.dumps({"key": key}) + "\n")


def _referenced() -> set[str]:
    keys = set()
    d = names_dir()
    for p in d.glob("*.json") if d.is_dir() else []:
        data = _read_json(p)
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            keys.add(data["key"])
    return keys


def drop_unreferenced(keep: str | None = None) -> list[str]:
    """Delete the published roots no name refers to; the caller holds :func:`locked`."""
    used = _referenced() | ({keep} if keep else set())
    gone = []
    d = roots_dir()
    for directory in sorted(d.iterdir()) if d.is_dir() else []:
        if directory.name.startswith(".") or directory.name in used:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        gone.append(directory.name)
    return gone


def remove(name: str) -> Installation:
    """Forget the installation ``name`` and delete its root when no other name uses it."""
    if name == HOST:
        raise UsageError("qemu remove host: the host's QEMU is not the testbed's to remove "
                         "(apt-get remove it)")
    with locked():
        inst = find(name)
        path = names_dir() / f"{name}.json"
        if inst is None and not path.exists():
            have = ", ".join(i.name for i in installations()) or "none"
            raise UsageError(f"qemu remove {name}: no such installation (installed: {have})")
        path.unlink(missing_ok=True)
        drop_unreferenced()
    return inst or Installation(name, "", roots_dir())
