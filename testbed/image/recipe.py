"""The image recipes (guest-images/<name>/recipe.toml) and their cache keys.

One recipe per machine profile (its ``image_recipe``): ``default`` (amd64, the x86-64
guest) and ``arm64`` (the aarch64 guest).  A recipe may take its root-filesystem overlay
and initramfs init from another recipe's directory (``base = "default"``), so the two
guests boot the same way.

The key is a sha256 over every file under ``guest-images/<name>``, its base's directory
and ``guest-images/tools`` (the recipe, the root-filesystem overlay, the initramfs
init, extra tools) and over the builder's own sources: ``testbed/image/*.py``, the
kernel-file and initramfs modules it uses.  Change any of them and a new image is
built; change nothing and the cached one is reused.  The guest tool is not in the
image: every boot ships it (:mod:`testbed.guest.tool`).  The
mirror is not part of the key: the same packages from another mirror are the same.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import ImageError
from testbed.paths import guest_images_dir

BUILDER_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = BUILDER_DIR.parent
# modules outside testbed/image/ whose code ends up in the image
KERNEL_MODULES = ("format.py", "config.py", "kmod.py", "cpio.py", "initramfs.py")
DEFAULT_RECIPE = "default"
# Bumped by hand when the cache layout changes in a way the sources don't show.
LAYOUT_VERSION = "1"


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path  # guest-images/<name>
    base_directory: Path  # where rootfs/ and initramfs-init come from (``base``; else directory)
    tools_dir: Path  # guest-images/tools: extra files copied to /usr/local/bin in the guest
    suite: str
    architecture: str  # dpkg's name (amd64): a machine profile's debian_arch
    mirror: str  # "host": the host's own Debian mirror (see testbed.image.mirror), or a URL
    extra_suites: tuple[str, ...]
    variant: str
    packages: tuple[str, ...]
    path_exclude: tuple[str, ...]
    path_include: tuple[str, ...]
    require_config: tuple[str, ...]
    prefer_pvh: bool
    early_modules: tuple[str, ...]
    initramfs_modules: tuple[str, ...]
    parallel_modules: tuple[str, ...]
    cmdline: tuple[str, ...]
    disk_size_mib: int
    # packages whose files are unpacked but which are not configured in the guest (a
    # foreign-architecture build: the kernel's, which the testbed boots by itself)
    extract_only: tuple[str, ...] = ()

    @property
    def rootfs_dir(self) -> Path:
        return self.base_directory / "rootfs"

    @property
    def initramfs_init(self) -> Path:
        return self.base_directory / "initramfs-init"

    def sources(self, mirror: str | None = None) -> list[str]:
        """One-line apt sources for mmdebstrap (main suite first)."""
        mirror = mirror or self.mirror
        return [f"deb {mirror} {suite} main" for suite in (self.suite, *self.extra_suites)]


def _tuple(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _base_name(data: dict, path: Path) -> str | None:
    base = data.get("base")
    if base is None:
        return None
    if not isinstance(base, str) or not base or "/" in base or base.startswith("."):
        raise ImageError(f"{path}: base must name another recipe's directory")
    return base


def load_recipe(name: str = DEFAULT_RECIPE, root: Path | None = None) -> Recipe:
    base = root if root is not None else guest_images_dir()
    directory = base / name
    path = directory / "recipe.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ImageError(f"no image recipe at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"{path}: {exc}") from None
    try:
        deb, kern, initrd, boot = data["debian"], data["kernel"], data["initramfs"], data["boot"]
        base_name = _base_name(data, path)
        return Recipe(
            name=name,
            directory=directory,
            base_directory=base / base_name if base_name else directory,
            tools_dir=base / "tools",
            suite=deb["suite"],
            architecture=str(deb.get("architecture", "amd64")),
            mirror=str(deb.get("mirror", "host")),
            extra_suites=_tuple(deb, "extra_suites", str(path)),
            variant=deb.get("variant", "minbase"),
            packages=_tuple(deb, "packages", str(path)),
            path_exclude=_tuple(deb, "path_exclude", str(path)),
            path_include=_tuple(deb, "path_include", str(path)),
            require_config=_tuple(kern, "require_config", str(path)),
            prefer_pvh=bool(kern.get("prefer_pvh", True)),
            early_modules=_tuple(initrd, "early_modules", str(path)),
            initramfs_modules=_tuple(initrd, "modules", str(path)),
            parallel_modules=_tuple(initrd, "parallel_modules", str(path)),
            cmdline=_tuple(boot, "cmdline", str(path)),
            disk_size_mib=int(data.get("disk", {}).get("size_mib", 3072)),
            extract_only=_tuple(deb, "extract_only", str(path)),
        )
    except KeyError as exc:
        raise ImageError(f"{path}: missing key {exc}") from None


def _hashed_files(base: Path) -> list[Path]:
    files = []
    for path in base.rglob("*"):
        rel = path.relative_to(base)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if path.suffix == ".pyc" or path.name.endswith("~"):
            continue
        if path.is_file() or path.is_symlink():
            files.append(path)
    return sorted(files)


def builder_sources() -> list[tuple[str, Path]]:
    """(label, file) of every source file whose code ends up in the image."""
    files = [(f"builder/{p.name}", p) for p in sorted(BUILDER_DIR.glob("*.py"))]
    files += [(f"kernel/{n}", PACKAGE_DIR / "kernel" / n) for n in KERNEL_MODULES]
    return files


def _entry(h: "hashlib._Hash", label: str, path: Path) -> None:
    if path.is_symlink():
        kind, content = "l", str(path.readlink()).encode()
    else:
        kind = "x" if path.stat().st_mode & 0o111 else "f"
        content = path.read_bytes()
    h.update(f"{label}\0{kind}\0{len(content)}\0".encode())
    h.update(content)


def _recipe_dirs(base: Path, name: str) -> set[str]:
    """The directories under guest-images/ a recipe's image is made from."""
    dirs = {name, "tools"}
    try:
        data = tomllib.loads((base / name / "recipe.toml").read_text())
        base_name = _base_name(data, base / name / "recipe.toml")
    except (OSError, tomllib.TOMLDecodeError, ImageError):
        base_name = None  # load_recipe reports it
    if base_name:
        dirs.add(base_name)
    return dirs


def recipe_hash(images_root: Path | None = None, builder_dir: Path | None = None,
                name: str = DEFAULT_RECIPE) -> str:
    """sha256 (hex) over the recipe's files and the builder's source files
    (``builder_dir``: hash that directory's ``*.py`` instead, for tests)."""
    h = hashlib.sha256(f"p2pdma-testbed image layout {LAYOUT_VERSION}\0".encode())
    base = images_root if images_root is not None else guest_images_dir()
    if base.is_dir():
        dirs = _recipe_dirs(base, name)
        for path in _hashed_files(base):
            rel = path.relative_to(base)
            if rel.parts[0] in dirs:  # guest-images/kernel/: custom kernels
                _entry(h, f"guest-images/{rel.as_posix()}", path)
    if builder_dir is not None:
        sources = [(f"builder/{p.name}", p) for p in sorted(builder_dir.glob("*.py"))]
    else:
        sources = builder_sources()
    for label, path in sources:
        if path.is_file():
            _entry(h, label, path)
    return h.hexdigest()
