"""The guest's root tree while it is built: the installed kernel, files the testbed adds
(written without following what is there), package versions.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ImageError
from .recipe import Recipe


def find_kernel(root: Path) -> tuple[str, Path, Path]:
    """(release, vmlinuz, config) of the single kernel installed in ``root``: in /boot
    once its package is configured, else where the package unpacks it
    (/usr/lib/modules/<release>/vmlinuz and config)."""
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if kernels:
        releases = [p.name[len("vmlinuz-"):] for p in kernels]
    else:
        kernels = sorted(root.glob("usr/lib/modules/*/vmlinuz"))
        releases = [p.parent.name for p in kernels]
    if not kernels:
        raise ImageError(f"no kernel (vmlinuz-*) in {boot} nor in /usr/lib/modules/*/")
    if len(kernels) > 1:
        raise ImageError("more than one kernel in the image: " + ", ".join(releases))
    release = releases[0]
    config = boot / f"config-{release}"
    if not config.is_file():
        config = root / "usr/lib/modules" / release / "config"
    if not config.is_file():
        raise ImageError(f"the kernel {release} has no config-{release} in /boot")
    if not (root / "lib/modules" / release / "modules.dep").is_file():
        raise ImageError(f"the kernel {release} has no modules.dep")
    return release, kernels[0], config


def write_file(root: Path, rel: str, data: bytes, mode: int) -> None:
    """Write a file in the tree, replacing (never following) what is there."""
    dest = root / rel.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        if dest.is_dir() and not dest.is_symlink():
            raise ImageError(f"cannot overwrite directory /{rel} in the image")
        dest.unlink()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(dest, mode)


def symlink(root: Path, rel: str, target: str) -> None:
    dest = root / rel.lstrip("/")
    if dest.is_symlink() or dest.exists():
        raise ImageError(f"/{rel} already exists in the image (a systemd or sysvinit install?)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(target)


def install_overlay(recipe: Recipe, root: Path) -> list[str]:
    """Copy guest-images/<recipe>/rootfs/ and guest-images/tools/ into the tree."""
    installed = []
    src = recipe.rootfs_dir
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_dir() and not path.is_symlink():
                (root / rel).mkdir(parents=True, exist_ok=True)
                continue
            if path.name.endswith("~") or "__pycache__" in path.parts:
                continue
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            write_file(root, rel, path.read_bytes(), mode)
            installed.append("/" + rel)
    if recipe.tools_dir.is_dir():
        for path in sorted(recipe.tools_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.name.endswith("~"):
                continue
            rel = f"usr/local/bin/{path.name}"
            write_file(root, rel, path.read_bytes(), 0o755)
            installed.append("/" + rel)
    return installed


def place_testbed_files(recipe: Recipe, root: Path, host_private: bytes, host_public: str,
                        client_public: str) -> list[str]:
    """The testbed's own files in a root tree: the overlay and tools, the pinned ed25519
    host key, root's authorized key, and busybox as init (PID 1; poweroff, reboot and
    halt signal it).  ``root`` is the image tree itself or, for a foreign-architecture
    build, the tree the guest copies over its root (see :mod:`testbed.image.foreign`)."""
    installed = install_overlay(recipe, root)
    write_file(root, "etc/ssh/ssh_host_ed25519_key", host_private, 0o600)
    write_file(root, "etc/ssh/ssh_host_ed25519_key.pub", (host_public + "\n").encode(), 0o644)
    (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root / "root/.ssh", 0o700)
    write_file(root, "root/.ssh/authorized_keys", (client_public + "\n").encode(), 0o600)
    for name in ("init", "poweroff", "reboot", "halt"):
        symlink(root, f"usr/sbin/{name}", "../bin/busybox")
    return installed


def dpkg_versions(root: Path) -> dict[str, str]:
    versions = {}
    text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    for para in text.split("\n\n"):
        fields = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
