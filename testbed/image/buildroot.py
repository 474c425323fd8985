"""Private Debian build roots: Debian's own toolchain and kernel headers, for building the
project's kernel modules against the image's kernel.

The image kernel (Debian 7.3.4+deb13) was built with the guest suite's gcc-14 and its
kbuild tools; the host may have another compiler (bookworm: gcc 12).  So modules for it
are built the way Debian builds them: ``linux-headers-<release>`` (which pulls in the
matching gcc, kbuild and pahole) installed with ``mmdebstrap`` into a root under
``cache_dir()/buildroots/``, from the image recipe's suites and the host's mirror (see
:mod:`testbed.image.mirror`: no address is written into the project), entered with
chroot.  Made once (about a minute, ~400 MB), under a lock, shared by every worktree.

:func:`kernel_build_env` picks how to build for the kernel under test: its build tree
when there is one (made with the host's compiler), else Debian's headers when the
release is a Debian one.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import ImageError
from ..kernel.extmod import BuildEnv, ModuleUnsupported, tree_env
from ..kernel.resolve import KernelSpec
from ..paths import cache_dir
from ..util.procs import find_tool, run_step
from ..util.debian_mirror import resolve_mirror
from .recipe import Recipe, load_recipe
from .tree import dpkg_versions

log = logging.getLogger(__name__)

LAYOUT_VERSION = "1"
MMDEBSTRAP_TIMEOUT = 1800.0
# Debian kernel releases: 7.3.4+deb13-amd64, 6.12.57+deb13-cloud-arm64, 6.1.0-40-amd64
DEBIAN_RELEASE = re.compile(r"^\d+\.\d+[.\d]*(\+deb\d+|-\d+)(-[a-z0-9]+)*-(amd64|arm64)$")


def buildroots_dir() -> Path:
    return cache_dir() / "buildroots"


def is_debian_release(release: str) -> bool:
    """A kernel release Debian's linux-headers packages are named after.

    >>> is_debian_release("7.3.4+deb13-amd64"), is_debian_release("7.3.0-rc1+")
    (True, False)
    """
    return bool(DEBIAN_RELEASE.match(release))


def build_root(recipe: Recipe, packages: tuple[str, ...]) -> Path:
    """A root with ``packages`` installed from the recipe's suites: cached, or made now."""
    key = hashlib.sha256(repr((LAYOUT_VERSION, recipe.suite, recipe.extra_suites,
                               sorted(packages))).encode()).hexdigest()[:16]
    root = buildroots_dir() / f"{recipe.suite}-{key}"
    stamp = root / ".testbed-complete"
    if stamp.is_file():
        return root
    if os.geteuid() != 0:
        raise ImageError("building against Debian's kernel headers needs root (a private "
                         "build root: mmdebstrap --mode=root, entered with chroot)")
    buildroots_dir().mkdir(parents=True, exist_ok=True)
    with open(buildroots_dir() / f".lock-{root.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file():
            return root
        tmp = root.with_name(f".tmp-{root.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        mirror = resolve_mirror(recipe.mirror)
        log.info("making the build root %s (%s)", root, ", ".join(packages))
        argv = [find_tool("mmdebstrap", "mmdebstrap"), "--mode=root", "--variant=apt",
                "--include=" + ",".join(packages),
                "--aptopt=Acquire::Retries \"3\"",
                "--aptopt=APT::Install-Recommends \"false\"",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                recipe.suite, str(tmp), *recipe.sources(mirror)]
        try:
            run_step(argv, "mmdebstrap of a build root", error=ImageError,
                     timeout=MMDEBSTRAP_TIMEOUT)
        except ImageError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ImageError(f"{exc}\n(is every package of {', '.join(packages)} still in "
                             f"{' or '.join((recipe.suite, *recipe.extra_suites))}? A kernel "
                             "the archive no longer has needs a new image: testbed image "
                             "build --rebuild)") from None
        (tmp / "build").mkdir(exist_ok=True)
        (tmp / ".testbed-complete").write_text(" ".join(packages) + "\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    return root


def debian_headers_env(release: str, recipe: Recipe | None = None) -> BuildEnv:
    """Build against Debian's ``linux-headers-<release>`` in a private build root."""
    recipe = recipe or load_recipe()
    package = f"linux-headers-{release}"
    root = build_root(recipe, (package, "make", "binutils"))
    version = dpkg_versions(root).get(package, "?")
    return BuildEnv(kdir=f"/usr/src/{package}", release=release,
                    identity=f"debian {package} {version} {root.name}",
                    description=f"Debian's {package} {version} (build root {root})",
                    root=root)


def kernel_build_env(kernel: KernelSpec | None, release: str) -> BuildEnv:
    """How to build a module for the kernel under test, which runs ``release``.

    ``kernel`` is None for the image's own kernel.  A kernel built from source is built
    against with the host's compiler in its tree; a Debian release with Debian's headers.
    """
    if kernel is not None:
        trees = [kernel.build_tree] if kernel.build_tree is not None else []  # profile kernels
        if kernel.kind == "build-tree":
            trees.append(kernel.path)
        if kernel.modules_dir is not None:
            trees.append(kernel.modules_dir / "build")
        for tree in trees:
            if (tree / "Makefile").is_file() and (tree / ".config").is_file():
                env = tree_env(tree, kernel.release)
                if env.release != release:
                    raise ModuleUnsupported("kernel module", f"the tree {tree} is "
                                            f"{env.release}, the guest runs {release}")
                return env
    if is_debian_release(release):
        return debian_headers_env(release)
    raise ModuleUnsupported("kernel module", f"no build tree for kernel {release}: pass "
                            "--kernel a built source tree (or a profile kernel)")
