"""Build (or fetch from the cache) the default guest image.

    image = ensure_image(progress=print)

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
import os
import shutil
import stat
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Callable

from testbed.errors import ImageError, ToolMissing
from testbed.image.initramfs import build_initramfs
from testbed.image.kernel import extract_vmlinux, find_kernel, has_pvh_entry, parse_config
from testbed.image.keys import generate_ed25519
from testbed.image.model import MANIFEST, Image
from testbed.image.recipe import Recipe, load_recipe, recipe_hash
from testbed.paths import cache_dir

Progress = Callable[[str], None] | None

# host tool -> Debian package that ships it
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "zstd": "zstd",
    "chroot": "coreutils",
}

PYTHON_CHECK = "import mmap, ctypes, fcntl, os, json, hashlib, struct; hashlib.sha256(b'x'); ctypes.CDLL(None)"

# Packages whose versions the manifest records.
PACKAGES_OF_INTEREST = (
    "linux-image-amd64", "openssh-server", "nvme-cli", "fio", "pciutils", "kmod",
    "util-linux", "iproute2", "busybox-static", "python3", "python3.13", "libc6",
)


def images_dir() -> Path:
    return cache_dir() / "images"


def check_host_tools() -> None:
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            raise ToolMissing(tool, package=package)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ToolMissing(name, package=HOST_TOOLS.get(name, name))
    return found


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


def ensure_image(progress: Progress = None, rebuild: bool = False) -> Image:
    """The default guest image: from the cache, or built now (about a minute)."""
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
            if progress:
                progress(f"waiting for another build of image {key[:12]} (lock {lock_path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
            image = cached_image(key)
            if image is not None:
                return image  # the other build made it (even if we were asked to rebuild)
        if not rebuild:
            image = cached_image(key)
            if image is not None:
                return image
        return _build_locked(key, load_recipe(), progress)


class _Stages:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.start = time.monotonic()
        self.times: dict[str, float] = {}
        self._stage: str | None = None
        self._t0 = 0.0

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(f"[{time.monotonic() - self.start:6.1f}s] {message}")

    def __call__(self, name: str) -> "_Stages":
        self._stage = name
        return self

    def __enter__(self):
        self._t0 = time.monotonic()
        self.say(f"{self._stage} ...")
        return self

    def __exit__(self, exc_type, exc, tb):
        took = time.monotonic() - self._t0
        self.times[self._stage] = round(took, 2)
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
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        if stream and line[:2] in ("I:", "W:", "E:"):
            stages.say(f"  {what}: {line}")
    rc = proc.wait()
    if rc != 0:
        raise ImageError(f"{what} failed (exit status {rc}): {' '.join(argv)}\n" + "\n".join(tail))


def _mmdebstrap(recipe: Recipe, target: Path, stages: _Stages) -> None:
    if os.geteuid() != 0:
        raise ImageError("building the guest image needs root (mmdebstrap --mode=root, "
                         "and mke2fs -d must see root-owned files)")
    argv = [_tool("mmdebstrap"), "--mode=root", f"--variant={recipe.variant}",
            "--include=" + ",".join(recipe.packages),
            "--aptopt=Acquire::Retries \"3\"",
            "--aptopt=APT::Install-Recommends \"false\""]
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.path_exclude]
    argv += [f"--dpkgopt=path-include={p}" for p in recipe.path_include]
    argv += [recipe.suite, str(target), *recipe.sources()]
    _run(argv, "mmdebstrap", stages, stream=True)


def _write(root: Path, rel: str, data: bytes, mode: int) -> None:
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


def _symlink(root: Path, rel: str, target: str) -> None:
    dest = root / rel.lstrip("/")
    if dest.is_symlink() or dest.exists():
        raise ImageError(f"/{rel} already exists in the image (a systemd or sysvinit install?)")
    dest.symlink_to(target)


def _install_overlay(recipe: Recipe, root: Path) -> list[str]:
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
            _write(root, rel, path.read_bytes(), mode)
            installed.append("/" + rel)
    if recipe.tools_dir.is_dir():
        for path in sorted(recipe.tools_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.name.endswith("~"):
                continue
            rel = f"usr/local/bin/{path.name}"
            _write(root, rel, path.read_bytes(), 0o755)
            installed.append("/" + rel)
    return installed


def _dpkg_versions(root: Path) -> dict[str, str]:
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


def _tree_bytes(root: Path) -> int:
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


def _build_locked(key: str, recipe: Recipe, progress: Progress) -> Image:
    stages = _Stages(progress)
    check_host_tools()
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
            client = generate_ed25519("p2pdma-testbed-client")
            host = generate_ed25519("root@testbed")
            client.write(work / "id_ed25519")
            (work / "ssh_host_ed25519_key.pub").write_text(host.public + "\n")

        with stages("mmdebstrap"):
            _mmdebstrap(recipe, tree, stages)

        with stages("kernel"):
            release, vmlinuz, config_path = find_kernel(tree)
            config = parse_config(config_path.read_text())
            missing = [c for c in recipe.require_config if config.get(c) != "y"]
            p2pdma = config.get("CONFIG_PCI_P2PDMA") == "y"
            if missing:
                raise ImageError(
                    f"the guest kernel {release} lacks " + ", ".join(f"{c}=y" for c in missing)
                    + f" (its /boot/config-{release} has "
                    + ", ".join(f"{c}={config.get(c, 'n')}" for c in missing)
                    + "); the testbed needs a kernel with PCI peer-to-peer DMA "
                    "(Debian's trixie-backports linux-image-amd64 has it)")
            bz = vmlinuz.read_bytes()
            (work / "vmlinuz").write_bytes(bz)
            pvh = False
            if recipe.prefer_pvh:
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
            installed = _install_overlay(recipe, tree)
            ssh = tree / "etc/ssh"
            for old in ssh.glob("ssh_host_*"):
                old.unlink()
            _write(tree, "etc/ssh/ssh_host_ed25519_key", host.private, 0o600)
            _write(tree, "etc/ssh/ssh_host_ed25519_key.pub", (host.public + "\n").encode(), 0o644)
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
            _write(tree, "root/.ssh/authorized_keys", (client.public + "\n").encode(), 0o600)
            # busybox init is PID 1; poweroff/reboot/halt signal it.
            for name in ("init", "poweroff", "reboot", "halt"):
                _symlink(tree, f"usr/sbin/{name}", "../bin/busybox")
            proc = subprocess.run([_tool("chroot"), str(tree), "/usr/bin/python3", "-c", PYTHON_CHECK],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ImageError("the guest's python3 lacks modules the guest tools need:\n"
                                 + proc.stderr.strip())
            versions = _dpkg_versions(tree)

        with stages("initramfs"):
            cpio, plan = build_initramfs(tree, release, recipe.initramfs_init,
                                         early=recipe.early_modules, main=recipe.initramfs_modules,
                                         parallel=recipe.parallel_modules)
            (work / "initrd.cpio").write_bytes(cpio)

        with stages("mke2fs"):
            used = _tree_bytes(tree)
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
            "mirror": recipe.mirror,
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
            "packages": {p: versions[p] for p in PACKAGES_OF_INTEREST if p in versions},
            "linux_image_package": next((f"{p} {v}" for p, v in sorted(versions.items())
                                         if p.startswith("linux-image-") and p != "linux-image-amd64"), None),
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
