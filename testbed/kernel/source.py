"""Debian's kernel source package as a build source: fetched once, unpacked once, cached.

    src = debian_source()                 # linux-source-7.3 from trixie-backports
    src.tree                              # .../kernel-sources/linux-source-7.3_7.3.4-1~bpo13+1/linux
    testbed kernel source debian          # the same, from the command line; prints the tree

``linux-source-7.3`` is what the image's kernel (linux-image-7.3.4+deb13) was built from,
Debian's patches applied, so a patch can be tried against exactly that kernel.

Where the package comes from: the host's own apt configuration when it knows the package
(a trixie host with backports); otherwise a private apt configuration under the cache
(its own lists and archive directories, nothing of the host's apt state is touched) with
one source: the host's Debian mirror (:func:`testbed.util.debian_mirror.resolve_mirror`; no
address is written into the project) and the suite (``trixie-backports``). ``apt-get
download`` checks the package against the signed index with the host's keyring.

The tree is unpacked once (``dpkg-deb -x``, then the tarball inside it) into a temporary
directory that is renamed into place, under a file lock, so two processes never unpack it
twice and an interrupted unpack leaves nothing half-made. An unpacked tree is used from
then on without asking apt again; ``update=True`` (``--update``) asks apt for a newer
upload. ``source.json`` beside the tree records package, version and the .deb's sha256:
the source's identity in the build cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TestbedError, UsageError
from ..util.debian_mirror import resolve_mirror
from ..paths import cache_dir
from ..util.procs import find_tool

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "linux-source-7.3"
DEFAULT_SUITE = "trixie-backports"
MARKER = "source.json"
TREE = "linux"
# unpacked 7.3 is ~1.6 GB; the .deb and its tarball ~0.33 GB more while unpacking
NEED_BYTES = 2_500_000_000
APT_TIMEOUT = 900


class SourceError(TestbedError):
    """The source package could not be fetched or unpacked (exit status 1)."""


@dataclass(frozen=True)
class DebianSource:
    """An unpacked Debian kernel source package."""

    package: str
    version: str
    tree: Path           # the kernel tree (Makefile, Kconfig, arch/ ...)
    deb_sha256: str

    @property
    def identity(self) -> str:
        """What the build cache keys the source by: the exact upload."""
        return f"debian:{self.package}={self.version}:{self.deb_sha256}"

    @classmethod
    def read(cls, directory: Path) -> "DebianSource | None":
        """The source unpacked in ``directory`` (with its marker), else None."""
        try:
            data = json.loads((directory / MARKER).read_text())
            tree = directory / TREE
            if not (tree / "Makefile").is_file():
                return None
            return cls(data["package"], data["version"], tree, data["deb_sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def sources_cache() -> Path:
    return cache_dir() / "kernel-sources"


def source_of_tree(tree: Path) -> DebianSource | None:
    """The Debian source a kernel tree is, when it is one this module unpacked."""
    tree = Path(tree).resolve()
    if tree.name != TREE:
        return None
    found = DebianSource.read(tree.parent)
    return found if found is not None and found.tree.resolve() == tree else None


def _dir_name(package: str, version: str) -> str:
    """A directory name Kbuild accepts in a source path (no ':', '~', '%' or spaces).

    >>> _dir_name("linux-source-7.3", "1:7.3.4-1~bpo13+1")
    'linux-source-7.3_1_7.3.4-1_bpo13+1'
    """
    return f"{package}_{re.sub(r'[^A-Za-z0-9.+-]', '_', version)}"


def _unpacked(package: str) -> list[DebianSource]:
    """Every unpacked upload of ``package`` in the cache, newest version last."""
    base = sources_cache()
    found = [s for d in sorted(base.glob(f"{package}_*")) if d.is_dir()
             for s in [DebianSource.read(d)] if s is not None and s.package == package]
    if len(found) > 1:
        dpkg = shutil.which("dpkg")
        if dpkg:
            def newer(a: DebianSource, b: DebianSource) -> bool:
                return subprocess.run([dpkg, "--compare-versions", a.version, "gt", b.version],
                                      capture_output=True).returncode == 0
            ordered: list[DebianSource] = []
            for s in found:
                i = 0
                while i < len(ordered) and newer(s, ordered[i]):
                    i += 1
                ordered.insert(i, s)
            found = ordered
    return found


class _Apt:
    """apt-cache/apt-get with either the host's configuration or a private one."""

    def __init__(self, suite: str, private: Path | None):
        self.suite = suite
        self.private = private

    def options(self) -> list[str]:
        if self.private is None:
            return []
        p = self.private
        return ["-o", f"Dir::Etc::SourceList={p / 'sources.list'}",
                "-o", "Dir::Etc::SourceParts=/nonexistent",
                "-o", f"Dir::State={p / 'state'}",
                "-o", f"Dir::Cache={p / 'cache'}",
                "-o", f"Dir::Etc::Preferences={p / 'preferences'}",
                "-o", "Dir::Etc::PreferencesParts=/nonexistent",
                "-o", "Debug::NoLocking=1"]

    def run(self, tool: str, args: list[str], cwd: Path | None = None) -> str:
        argv = [find_tool(tool, "apt")] + self.options() + args
        try:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                                  errors="replace", timeout=APT_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{tool} {' '.join(args)}: no answer in {APT_TIMEOUT} s") from None
        if proc.returncode != 0:
            err = [t for t in proc.stderr.splitlines() if t.startswith(("E:", "W:"))] or \
                proc.stderr.strip().splitlines()[-3:]
            where = "a private apt configuration in " + str(self.private) if self.private \
                else "the host's apt configuration"
            raise SourceError(f"{tool} {' '.join(args)} failed (with {where}):\n  "
                              + "\n  ".join(err))
        return proc.stdout

    def candidate(self, package: str) -> str | None:
        """The version apt would fetch, or None when it does not know the package."""
        try:
            out = self.run("apt-cache", ["policy", package])
        except SourceError:
            return None
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Candidate":
                value = value.strip()
                return None if value in ("", "(none)") else value
        return None


def _private_apt(suite: str) -> _Apt:
    """A private apt configuration with the host's mirror and ``suite``, its lists fresh."""
    p = sources_cache() / "apt" / suite
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (p / sub).mkdir(parents=True, exist_ok=True)
    try:
        mirror = resolve_mirror("host")
    except TestbedError as exc:
        raise SourceError(f"the host's apt does not offer the kernel source and no Debian "
                          f"mirror was found for a private one: {exc}") from None
    (p / "sources.list").write_text(f"deb {mirror} {suite} main\n")
    (p / "preferences").write_text("")
    apt = _Apt(suite, p)
    log.info("updating a private apt list of %s (%s) in %s", suite, mirror, p)
    apt.run("apt-get", ["update", "-q"])
    return apt


def _pick_apt(package: str, suite: str) -> tuple[_Apt, str]:
    host = _Apt(suite, None)
    version = host.candidate(package)
    if version is not None:
        return host, version
    log.info("the host's apt does not know %s; using a private apt configuration for %s",
             package, suite)
    private = _private_apt(suite)
    version = private.candidate(package)
    if version is None:
        raise SourceError(f"{package}: not in {suite} (nor in the host's apt sources); is the "
                          "name right? (apt-cache search linux-source)")
    return private, version


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_space(where: Path, need: int = NEED_BYTES) -> None:
    free = shutil.disk_usage(where).free
    if free < need:
        raise SourceError(f"{where}: {free / 1e9:.1f} GB free, unpacking the kernel source "
                          f"needs about {need / 1e9:.1f} GB")


def _unpack(deb: Path, work: Path, package: str) -> Path:
    """The kernel tree unpacked from ``deb`` under ``work``."""
    dpkg_deb = find_tool("dpkg-deb", "dpkg")
    tar = find_tool("tar", "tar")
    find_tool("xz", "xz-utils")
    files = work / "deb"
    subprocess.run([dpkg_deb, "-x", str(deb), str(files)], check=True, capture_output=True,
                   timeout=APT_TIMEOUT)
    tarballs = sorted((files / "usr/src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise SourceError(f"{deb.name}: no usr/src/linux-source-*.tar.* inside; is {package} "
                          "a kernel source package?")
    out = work / "tar"
    out.mkdir()
    log.info("unpacking %s (about 20 s)", tarballs[0].name)
    proc = subprocess.run([tar, "-xf", str(tarballs[0]), "-C", str(out)], capture_output=True,
                          text=True, timeout=APT_TIMEOUT)
    if proc.returncode != 0:
        raise SourceError(f"tar -xf {tarballs[0].name} failed: {proc.stderr.strip()[-500:]}")
    shutil.rmtree(files)
    trees = [d for d in out.iterdir() if d.is_dir() and (d / "Makefile").is_file()]
    if len(trees) != 1:
        raise SourceError(f"{tarballs[0].name}: expected one kernel tree inside, found "
                          f"{[d.name for d in out.iterdir()]}")
    return trees[0]


def debian_source(package: str = DEFAULT_PACKAGE, suite: str = DEFAULT_SUITE,
                  update: bool = False) -> DebianSource:
    """The unpacked source of ``package`` (fetched and unpacked now if not yet)."""
    if not package.startswith("linux-source"):
        raise UsageError(f"--package {package}: expected a Debian kernel source package "
                         "(linux-source-X.Y)")
    base = sources_cache()
    base.mkdir(parents=True, exist_ok=True)
    if not update:
        have = _unpacked(package)
        if have:
            return have[-1]
    with open(base / f".lock-{package}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not update:
            have = _unpacked(package)
            if have:
                return have[-1]
        apt, version = _pick_apt(package, suite)
        final = base / _dir_name(package, version)
        done = DebianSource.read(final)
        if done is not None:
            return done
        _check_space(base)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{package}-", dir=base))
        try:
            log.info("fetching %s %s", package, version)
            apt.run("apt-get", ["download", "-q", f"{package}={version}"], cwd=work)
            debs = sorted(work.glob(f"{package}_*.deb"))
            if not debs:
                raise SourceError(f"apt-get download {package}={version} left no .deb")
            digest = _sha256(debs[0])
            tree = _unpack(debs[0], work, package)
            debs[0].unlink()
            staged = work / "final"
            staged.mkdir()
            tree.rename(staged / TREE)
            (staged / MARKER).write_text(json.dumps(
                {"package": package, "version": version, "deb_sha256": digest,
                 "suite": suite, "from": "private apt" if apt.private else "host apt"},
                indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        except OSError as exc:
            raise SourceError(f"unpacking {package} into {base} failed: {exc}") from None
        except subprocess.CalledProcessError as exc:
            raise SourceError(f"{' '.join(map(str, exc.cmd))} failed: "
                              f"{(exc.stderr or b'').decode(errors='replace')[-500:]}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        found = DebianSource.read(final)
        if found is None:
            raise SourceError(f"{final}: unpacked but unreadable")
        log.info("%s %s unpacked in %s", package, version, found.tree)
        return found
