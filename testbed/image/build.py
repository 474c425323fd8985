"""Build (or fetch from the cache) the default guest image.

    image = ensure_image()

Layout: ``<cache_dir()>/images/<recipe-hash>/`` holds base.qcow2, vmlinux
(PVH) and vmlinuz (bzImage), initrd.cpio, id_ed25519(.pub) (the client key),
ssh_host_ed25519_key.pub (the guest's host key) and manifest.json. A build
happens in ``.tmp-<hash>-<pid>`` beside it and is renamed into place at the
end, under a lock file, so an interrupted build leaves nothing half-built and
two concurrent builds do not clash.

The root tree is made with ``mmdebstrap --mode=root`` (so building needs root;
nothing is mounted by us: ``mke2fs -d`` fills the filesystem, ``qemu-img
convert`` makes the qcow2).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import ImageError
from ..kernel.config import Kconfig
from ..kernel.format import extract_vmlinux, has_pvh_entry
from ..kernel.initramfs import build_initramfs
from ..machines import X86_64, MachineProfile
from ..paths import cache_dir
from ..util.procs import find_tool, run_step
from .mirror import resolve_mirror
from .model import MANIFEST, Image
from .recipe import Recipe, load_recipe, recipe_hash
from .tree import (dpkg_versions, find_kernel, install_overlay, symlink,
                   tree_bytes, write_file)

log = logging.getLogger(__name__)

# host tool -> Debian package that ships it
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
    "chroot": "coreutils",
}

PYTHON_CHECK = "import mmap, ctypes, fcntl, os, json, hashlib, struct; hashlib.sha256(b'x'); ctypes.CDLL(None)"

# Packages whose versions the manifest records (and the machine's kernel package).
PACKAGES_OF_INTEREST = (
    "openssh-server", "nvme-cli", "fio", "pciutils", "kmod",
    "util-linux", "iproute2", "busybox-static", "python3", "python3.13", "libc6",
)


def images_dir() -> Path:
    return cache_dir() / "images"


def check_host_tools() -> None:
    for tool, package in HOST_TOOLS.items():
        find_tool(tool, package)


def _tool(name: str) -> str:
    return find_tool(name, HOST_TOOLS.get(name, name))


def cached_image(key: str | None = None) -> Image | None:
    """The cached image of the current recipe, or None if it is not built."""
    key = key or recipe_hash()
    directory = images_dir() / key
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return Image.from_directory(directory)
    except ImageError:
        return None


def ensure_image(rebuild: bool = False, profile: MachineProfile = X86_64) -> Image:
    """The guest image for a ``profile`` machine: from the cache, or built now (about a
    minute)."""
    key = recipe_hash()
    if not rebuild:
        image = cached_image(key)
        if image is not None:
            return image
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f".lock-{key}"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build of image %s (lock %s)", key[:12], lock_path)
            fcntl.flock(lock, fcntl.LOCK_EX)
            image = cached_image(key)
            if image is not None:
                return image  # the other build made it (even if we were asked to rebuild)
        if not rebuild:
            image = cached_image(key)
            if image is not None:
                return image
        return _build_locked(key, load_recipe(profile.image_recipe), profile)


class _Stages:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: dict[str, float] = {}
        self._stage: str | None = None
        self._t0 = 0.0

    def say(self, message: str) -> None:
        log.info("image: [%6.1fs] %s", time.monotonic() - self.start, message)

    def __call__(self, name: str) -> "_Stages":
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


def _mounts_under(path: Path) -> list[str]:
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


def _remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a killed mmdebstrap may leave some)."""
    if not path.exists():
        return
    mounts = _mounts_under(path)
    if mounts:
        raise ImageError(f"refusing to delete {path}: still mounted there: {', '.join(mounts)}; "
                         "unmount them (umount -R) and retry")
    shutil.rmtree(path)


def _run(argv: list[str], what: str, stages: _Stages, stream: bool = False) -> None:
    """Run a build step; on failure raise ImageError with the output's tail."""
    def show(line: str) -> None:
        if stream and line[:2] in ("I:", "W:", "E:"):
            stages.say(f"  {what}: {line}")

    run_step(argv, what, error=ImageError, on_line=show)


def _mmdebstrap(recipe: Recipe, mirror: str, target: Path, stages: _Stages) -> None:
    if os.geteuid() != 0:
        raise ImageError("building the guest image needs root (mmdebstrap --mode=root, "
                         "and mke2fs -d must see root-owned files)")
    argv = [_tool("mmdebstrap"), "--mode=root", f"--variant={recipe.variant}",
            f"--architectures={recipe.architecture}",
            "--include=" + ",".join(recipe.packages),
            "--aptopt=Acquire::Retries \"3\"",
            "--aptopt=APT::Install-Recommends \"false\""]
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.path_exclude]
    argv += [f"--dpkgopt=path-include={p}" for p in recipe.path_include]
    argv += [recipe.suite, str(target), *recipe.sources(mirror)]
    _run(argv, "mmdebstrap", stages, stream=True)


def _build_locked(key: str, recipe: Recipe, profile: MachineProfile) -> Image:
    if recipe.architecture != profile.debian_arch:
        raise ImageError(f"the image recipe {recipe.name!r} is for {recipe.architecture}, the "
                         f"{profile.arch} machine needs {profile.debian_arch}")
    stages = _Stages()
    check_host_tools()
    mirror = resolve_mirror(recipe.mirror)
    images = images_dir()
    for stale in images.glob(f".tmp-{key}-*"):
        stages.say(f"removing stale build directory {stale.name}")
        _remove_tree(stale)
    work = images / f".tmp-{key}-{os.getpid()}"
    work.mkdir()
    tree = work / "root"
    started = time.monotonic()
    stages.say(f"building guest image {key[:12]} in {work}")
    try:
        with stages("keys"):
            from .keys import generate_ed25519  # cryptography: only when building
            client = generate_ed25519("p2pdma-testbed-client")
            host = generate_ed25519("root@testbed")
            client.write(work / "id_ed25519")
            (work / "ssh_host_ed25519_key.pub").write_text(host.public + "\n")

        with stages("mmdebstrap"):
            _mmdebstrap(recipe, mirror, tree, stages)

        with stages("kernel"):
            release, vmlinuz, config_path = find_kernel(tree)
            config = Kconfig.read(config_path)
            missing = [c for c in recipe.require_config if not config.builtin(c)]
            p2pdma = config.p2pdma
            if missing:
                raise ImageError(
                    f"the guest kernel {release} lacks " + ", ".join(f"{c}=y" for c in missing)
                    + f" (its /boot/config-{release} has "
                    + ", ".join(f"{c}={config[c]}" for c in missing)
                    + "); the testbed needs a kernel with PCI peer-to-peer DMA "
                    f"(Debian's trixie-backports {profile.kernel_package} has it)")
            bz = vmlinuz.read_bytes()
            (work / "vmlinuz").write_bytes(bz)
            pvh = False
            if recipe.prefer_pvh and profile.kernel_image.direct_elf == "pvh":
                elf = extract_vmlinux(bz)
                if has_pvh_entry(elf):
                    (work / "vmlinux").write_bytes(elf)
                    pvh = True
                else:
                    stages.say("the kernel has no PVH entry note: booting the bzImage")
                del elf
            for initrd in (tree / "boot").glob("initrd.img-*"):
                initrd.unlink()  # tiny-initramfs's; the testbed boots with its own

        with stages("customize"):
            installed = install_overlay(recipe, tree)
            ssh = tree / "etc/ssh"
            for old in ssh.glob("ssh_host_*"):
                old.unlink()
            write_file(tree, "etc/ssh/ssh_host_ed25519_key", host.private, 0o600)
            write_file(tree, "etc/ssh/ssh_host_ed25519_key.pub", (host.public + "\n").encode(), 0o644)
            if (tree / "usr/bin/dropbearconvert").exists():
                # dropbear serves SSH (it starts far faster than sshd under TCG) with the
                # same pinned host key, converted to its own format
                (tree / "etc/dropbear").mkdir(exist_ok=True)
                for old in (tree / "etc/dropbear").glob("dropbear_*_host_key"):
                    old.unlink()
                conv = subprocess.run([_tool("chroot"), str(tree), "/usr/bin/dropbearconvert",
                                       "openssh", "dropbear", "/etc/ssh/ssh_host_ed25519_key",
                                       "/etc/dropbear/dropbear_ed25519_host_key"],
                                      capture_output=True, text=True, check=False)
                if conv.returncode != 0:
                    raise ImageError(f"dropbearconvert failed: {conv.stderr.strip()}")
            (tree / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
            os.chmod(tree / "root/.ssh", 0o700)
            write_file(tree, "root/.ssh/authorized_keys", (client.public + "\n").encode(), 0o600)
            # busybox init is PID 1; poweroff/reboot/halt signal it.
            for name in ("init", "poweroff", "reboot", "halt"):
                symlink(tree, f"usr/sbin/{name}", "../bin/busybox")
            proc = subprocess.run([_tool("chroot"), str(tree), "/usr/bin/python3", "-c", PYTHON_CHECK],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ImageError("the guest's python3 lacks modules the guest tools need:\n"
                                 + proc.stderr.strip())
            versions = dpkg_versions(tree)

        with stages("initramfs"):
            cpio, plan = build_initramfs(tree, release, recipe.initramfs_init,
                                         early=recipe.early_modules, main=recipe.initramfs_modules,
                                         parallel=recipe.parallel_modules)
            (work / "initrd.cpio").write_bytes(cpio)

        with stages("mke2fs"):
            used = tree_bytes(tree)
            size_mib = recipe.disk_size_mib
            if size_mib * 2**20 < used * 1.3 + 256 * 2**20:
                raise ImageError(f"disk size {size_mib} MiB is too small for a {used >> 20} MiB tree")
            raw = work / "root.raw"
            _run([_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-L", "testbed-root", "-m", "0",
                  "-E", "root_owner=0:0", "-d", str(tree), str(raw), f"{size_mib}M"],
                 "mke2fs", stages)

        with stages("qcow2"):
            _run([_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                  str(work / "base.qcow2")], "qemu-img convert", stages)
            raw.unlink()
            _remove_tree(tree)

        manifest = {
            "recipe": recipe.name,
            "recipe_hash": key,
            "suite": recipe.suite,
            "mirror": mirror,
            "kernel_release": release,
            "p2pdma": p2pdma,
            "pvh": pvh,
            "cmdline": list(recipe.cmdline),
            "initramfs_modules": plan.names(),
            "host_public_key": host.public_blob,
            "files": {
                "disk": "base.qcow2",
                "kernel": "vmlinux" if pvh else "vmlinuz",
                "bzimage": "vmlinuz",
                "initrd": "initrd.cpio",
                "client_key": "id_ed25519",
                "host_public_key": "ssh_host_ed25519_key.pub",
            },
            "installed_files": installed,
            "architecture": recipe.architecture,
            "packages": {p: versions[p] for p in (profile.kernel_package, *PACKAGES_OF_INTEREST)
                         if p in versions},
            "linux_image_package": next((f"{p} {v}" for p, v in sorted(versions.items())
                                         if p.startswith("linux-image-")
                                         and p != profile.kernel_package), None),
            "package_count": len(versions),
            "tree_mib": round(used / 2**20, 1),
            "disk_size_mib": size_mib,
            "stage_seconds": stages.times,
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        Image.from_directory(work)  # validate before publishing

        dest = images / key
        if dest.exists():
            old = images / f".old-{key}-{os.getpid()}"
            dest.rename(old)
            work.rename(dest)
            _remove_tree(old)
        else:
            work.rename(dest)
        stages.say(f"image {key[:12]} ready in {dest} ({manifest['build_seconds']}s)")
        return Image.from_directory(dest)
    except BaseException:
        try:
            _remove_tree(work)
        except (ImageError, OSError) as exc:  # pragma: no cover - best effort
            stages.say(f"could not clean up {work}: {exc}")
        raise
