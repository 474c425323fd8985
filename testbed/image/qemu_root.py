"""Install a QEMU from a Debian suite into a private root: ``testbed qemu install SOURCE``.

A newer QEMU than the host's (trixie-backports has 11.1 while bookworm-backports has
10.0) runs on this host from a root of its own, made with ``mmdebstrap --variant=apt``
from the host's Debian mirror (:mod:`testbed.image.mirror`), through that root's dynamic
loader (:mod:`testbed.qemu.binary`).  Nothing is installed on the host itself.

The root is built in ``roots/.tmp-<pid>``, its QEMU programs are run once
(``--version``), the manifest is written, and only then is it renamed into
``roots/<key>`` and the name pointed at it (:mod:`testbed.qemu.installed`): an
interrupted install is never used, and the next install removes its remains.

    >>> SOURCES["trixie-backports"].sources("http://m.example/debian")
    ['deb http://m.example/debian trixie main', 'deb http://m.example/debian trixie-backports main']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, QemuNotFound, UsageError
from ..machines import PROFILES
from ..qemu import installed
from ..qemu.binary import DEFAULT_PROGRAM, from_root
from ..qemu.installed import Installation, check_name, locked, point, roots_dir
from ..util.procs import find_tool, run_step
from .steps import remove_tree
from ..util.debian_mirror import resolve_mirror
from .tree import dpkg_versions, tree_bytes

log = logging.getLogger(__name__)

# what a root holds: the QEMU of every machine profile, and qemu-system-arm's
# qemu-system-aarch64 (the arm64 guests need 11.1's user-creatable arm-smmuv3; seam: issue
# 25 -- once machines/aarch64.py exists its profile row names them and these go), with
# QEMU's firmware and option ROMs
_ARM64 = ("qemu-system-arm", "qemu-system-aarch64")
PACKAGES = tuple(dict.fromkeys((*(p.qemu_package for p in PROFILES.values()), _ARM64[0],
                                "qemu-system-data", "ipxe-qemu", "seabios")))
PROGRAMS = tuple(dict.fromkeys((*(p.qemu_binary for p in PROFILES.values()), _ARM64[1])))
# documentation, manual pages and translations are never read: leave them out
PATH_EXCLUDE = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                "/usr/share/info/*", "/usr/share/lintian/*")
INSTALL_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Source:
    """A Debian suite (with the suites it builds on) that a QEMU can be installed from."""

    name: str
    suites: tuple[str, ...]  # the first is the base (mmdebstrap's SUITE)
    release: str  # apt's default release: where the QEMU packages come from

    def sources(self, mirror: str) -> list[str]:
        return [f"deb {mirror} {suite} main" for suite in self.suites]


SOURCES = {s.name: s for s in (
    Source("trixie-backports", ("trixie", "trixie-backports"), "trixie-backports"),
    Source("trixie", ("trixie",), "trixie"),
    Source("sid", ("sid",), "sid"),
)}


def source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UsageError(f"qemu install {name}: not a known source (known: "
                         f"{', '.join(SOURCES)})") from None


def _key(src: Source, versions: dict[str, str]) -> str:
    h = hashlib.sha256(f"qemu-root 1\0{src.name}\0".encode())
    for pkg, version in sorted(versions.items()):
        h.update(f"{pkg}={version}\n".encode())
    return h.hexdigest()[:16]


def _mmdebstrap(src: Source, mirror: str, target: Path) -> None:
    mode = "root" if os.geteuid() == 0 else "unshare"
    argv = [find_tool("mmdebstrap"), f"--mode={mode}", "--variant=apt",
            "--include=" + ",".join(PACKAGES),
            f'--aptopt=APT::Default-Release "{src.release}"',
            '--aptopt=Acquire::Retries "3"',
            '--aptopt=APT::Install-Recommends "false"',
            *(f"--dpkgopt=path-exclude={p}" for p in PATH_EXCLUDE),
            src.suites[0], str(target), *src.sources(mirror)]

    def show(line: str) -> None:
        if line[:2] in ("I:", "W:", "E:"):
            log.info("qemu install: %s", line)

    run_step(argv, "mmdebstrap", error=ImageError, on_line=show, timeout=INSTALL_TIMEOUT)


def _usable(directory: Path) -> bool:
    if not (directory / installed.MANIFEST).is_file():
        return False
    try:
        from_root(directory / "root", directory.name)
    except QemuNotFound:
        return False
    return True


def install(source_name: str, name: str | None = None, update: bool = False) -> Installation:
    """Install (or, without ``update``, reuse) the QEMU of ``source_name`` as ``name``."""
    src = source(source_name)
    name = check_name(name or src.name)
    with locked():
        have = installed.find(name)
        if have is not None and not update:
            try:
                have.qemu()
            except QemuNotFound as exc:  # a root that lost its loader: installed again
                log.warning("qemu install: %s is broken (%s): installing it again", name, exc)
            else:
                log.info("qemu install: %s is installed (QEMU %s, %s)", name, have.version,
                         have.directory)
                return have
        return _install_locked(src, name)


def _install_locked(src: Source, name: str) -> Installation:
    mirror = resolve_mirror("host")
    roots = roots_dir()
    roots.mkdir(parents=True, exist_ok=True)
    for stale in roots.glob(".tmp-*"):  # an interrupted install (we hold the lock)
        log.info("qemu install: removing the remains of an interrupted install: %s", stale)
        remove_tree(stale)
    work = roots / f".tmp-{os.getpid()}"
    start = time.monotonic()
    try:
        work.mkdir()
        tree = work / "root"
        log.info("qemu install: %s from %s (%s) into %s", ", ".join(PACKAGES), src.name,
                 mirror, work)
        _mmdebstrap(src, mirror, tree)
        versions = dpkg_versions(tree)
        texts = {}
        for program in PROGRAMS:
            q = from_root(tree, name, program)
            texts[program] = q.run(["--version"]).splitlines()[0].strip()
        version = texts[DEFAULT_PROGRAM].split("version ", 1)[-1].split()[0]
        key = _key(src, versions)
        size = tree_bytes(tree)
        manifest = {
            "key": key, "name": name, "source": src.name, "suites": list(src.suites),
            "mirror": mirror, "qemu_version": version, "version_text": texts,
            "packages": {p: versions[p] for p in sorted(versions)
                         if p.startswith(("qemu", "seabios", "ipxe", "libc6"))},
            "package_count": len(versions), "bytes": size,
            "seconds": round(time.monotonic() - start, 1),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / installed.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        dest = roots / key
        if _usable(dest):
            log.info("qemu install: the same packages as root %s: keeping that one", key)
            remove_tree(work)
        else:
            if dest.exists():  # a root without a manifest or loader is never used: replaced
                remove_tree(dest)
            work.rename(dest)
    except BaseException:
        try:
            remove_tree(work)
        except (ImageError, OSError) as exc:  # pragma: no cover - best effort
            log.warning("qemu install: could not remove %s: %s", work, exc)
        raise
    point(name, key)
    installed.drop_unreferenced(keep=key)
    inst = installed.find(name)
    if inst is None:  # pragma: no cover - we just published it, holding the lock
        raise ImageError(f"qemu install: {name} vanished after its install")
    log.info("qemu install: %s is QEMU %s (%.0f s, %d MB) in %s", name, version,
             time.monotonic() - start, size >> 20, inst.directory)
    return inst
