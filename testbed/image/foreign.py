"""A guest image of another architecture than the host's (arm64 on an x86-64 host), built
without running any of its programs on the host: no binfmt_misc, no qemu-user.

1. :func:`extract`: mmdebstrap's ``extract`` variant downloads the packages (the recipe's,
   with the variant's package set spelled out as apt patterns) and unpacks them into the
   tree with ``dpkg-deb``; no maintainer script runs.  The downloaded ``.deb`` files stay.
2. :func:`host_depmod`: the host's depmod writes the kernel's modules.dep (depmod reads
   any architecture's modules), so the initramfs can be built on the host.
3. :func:`make_stage`: the second-stage disk: the packages dpkg installs in the guest
   (not the recipe's ``extract_only`` ones: the kernel's), the testbed's own files as a
   tree the guest copies over its root, the Python check; and the script itself
   (guest-images/<recipe>/stage2) in the tree, as the guest's init.
4. Then the image boots once (:mod:`testbed.image.stage2`): dpkg installs and configures
   the packages inside the guest.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..errors import ImageError
from ..util.procs import find_tool
from .recipe import Recipe
from .tree import place_testbed_files, write_file

STAGE_SCRIPT = "stage2"  # in the recipe's directory
STAGE_INIT = "/var/lib/testbed-stage2/run"  # where the guest finds it (init=)
ARCHIVES = "var/cache/apt/archives"

# mmdebstrap's variants as package sets (the extract variant installs only what --include
# names): Essential:yes, then Priority:required and apt.
VARIANT_PATTERNS = {
    "essential": ("?essential",),
    "apt": ("?essential", "apt"),
    "minbase": ("?essential", "?priority(required)", "apt"),
}


@dataclass(frozen=True)
class Deb:
    """A downloaded package, as apt names its file: ``NAME_VERSION_ARCH.deb``."""

    path: Path
    package: str
    version: str

    @classmethod
    def from_path(cls, path: Path) -> "Deb":
        """
        >>> d = Deb.from_path(Path("bsdutils_1%3a2.41.5-0+deb13u1_arm64.deb"))
        >>> d.package, d.version
        ('bsdutils', '1:2.41.5-0+deb13u1')
        """
        parts = path.name[:-len(".deb")].split("_")
        if not path.name.endswith(".deb") or len(parts) != 3:
            raise ImageError(f"unexpected package file name {path.name!r}")
        return cls(path, parts[0], unquote(parts[1]))


def mmdebstrap_argv(recipe: Recipe, mirror: str, target: Path) -> list[str]:
    """The extract-only mmdebstrap run of a foreign-architecture recipe."""
    try:
        patterns = VARIANT_PATTERNS[recipe.variant]
    except KeyError:
        raise ImageError(f"{recipe.directory / 'recipe.toml'}: variant {recipe.variant!r} "
                         f"cannot be built for {recipe.architecture} on this host (use one of "
                         f"{', '.join(VARIANT_PATTERNS)})") from None
    argv = [find_tool("mmdebstrap", "mmdebstrap"), "--mode=root", f"--architectures={recipe.architecture}",
            "--variant=extract",
            # no qemu-user needed: nothing of the guest's architecture runs here
            "--skip=check/qemu", "--skip=chroot/mount",
            # the second stage installs the packages from the downloaded files
            "--skip=cleanup/apt/cache",
            "--aptopt=Acquire::Retries \"3\"",
            "--aptopt=APT::Install-Recommends \"false\""]
    # apt patterns go one per --include (mmdebstrap does not split them at commas)
    argv += [f"--include={p}" for p in patterns]
    argv.append("--include=" + ",".join(recipe.packages))
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.path_exclude]
    argv += [f"--dpkgopt=path-include={p}" for p in recipe.path_include]
    argv += [recipe.suite, str(target), *recipe.sources(mirror)]
    return argv


def host_depmod(tree: Path, release: str) -> None:
    """modules.dep and friends for the unpacked kernel, written by the host's depmod."""
    depmod = find_tool("depmod", "kmod")
    proc = subprocess.run([depmod, "-b", str(tree), release], capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode != 0:
        raise ImageError(f"depmod -b {tree} {release} failed: {proc.stderr.strip()[-500:]}")


def downloaded(tree: Path) -> list[Deb]:
    debs = [Deb.from_path(p) for p in sorted((tree / ARCHIVES).glob("*.deb"))]
    if not debs:
        raise ImageError(f"mmdebstrap left no packages in /{ARCHIVES}")
    return debs


def installable(recipe: Recipe, debs: list[Deb]) -> list[Deb]:
    """The packages dpkg installs in the guest: all but the recipe's ``extract_only``."""
    return [d for d in debs
            if not any(fnmatch.fnmatchcase(d.package, p) for p in recipe.extract_only)]


def make_stage(recipe: Recipe, tree: Path, stage: Path, *, host_private: bytes,
               host_public: str, client_public: str, python_check: str) -> list[str]:
    """Fill ``stage`` (the second stage's disk) and put its script into ``tree``; the
    downloaded packages move from the tree to the stage.  Returns the testbed files the
    guest will install (as :func:`place_testbed_files` lists them)."""
    script = recipe.directory / STAGE_SCRIPT
    if not script.is_file():
        raise ImageError(f"the recipe {recipe.name} has no {script}")
    debs = downloaded(tree)
    wanted = installable(recipe, debs)
    (stage / "debs").mkdir(parents=True)
    for deb in debs:
        shutil.move(deb.path, stage / "debs" / deb.path.name)
    (stage / "debs.list").write_text("".join(f"{d.path.name}\n" for d in wanted))
    (stage / "python-check").write_text(python_check + "\n")
    root = stage / "root"
    root.mkdir()
    installed = place_testbed_files(recipe, root, host_private, host_public, client_public)
    _same_directory_modes(root, tree)
    write_file(tree, STAGE_INIT, script.read_bytes(), 0o755)
    return installed


def _same_directory_modes(overlay: Path, tree: Path) -> None:
    """``cp -a`` gives each directory it copies the source's mode: make the overlay's
    directories those of the tree they land on (/root stays 0700)."""
    for dirpath, _dirnames, _files in os.walk(overlay):
        rel = os.path.relpath(dirpath, overlay)
        target = tree / rel
        if target.is_dir() and not target.is_symlink():
            os.chmod(dirpath, target.stat().st_mode & 0o7777)
