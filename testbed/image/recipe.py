"""The image recipe (guest-images/default/recipe.toml) and its cache key.

The key is a sha256 over every file under ``guest-images/`` (the recipe, the
root-filesystem overlay, the initramfs init, the guest tools) and over the
builder's own sources (``testbed/image/*.py``): change any of them and a new
image is built; change nothing and the cached one is reused.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import ImageError
from testbed.paths import guest_images_dir

BUILDER_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = "default"
# Bumped by hand when the cache layout changes in a way the sources don't show.
LAYOUT_VERSION = "1"


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path  # guest-images/<name>
    tools_dir: Path  # guest-images/tools: copied to /usr/local/bin in the guest
    suite: str
    mirror: str
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

    @property
    def rootfs_dir(self) -> Path:
        return self.directory / "rootfs"

    @property
    def initramfs_init(self) -> Path:
        return self.directory / "initramfs-init"

    def sources(self) -> list[str]:
        """One-line apt sources for mmdebstrap (main suite first)."""
        return [f"deb {self.mirror} {suite} main" for suite in (self.suite, *self.extra_suites)]


def _tuple(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{where}: {key} must be a list of strings")
    return tuple(value)


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
        return Recipe(
            name=name,
            directory=directory,
            tools_dir=base / "tools",
            suite=deb["suite"],
            mirror=deb["mirror"],
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


def recipe_hash(images_root: Path | None = None, builder_dir: Path | None = None) -> str:
    """sha256 (hex) over the recipe files and the builder's source files."""
    h = hashlib.sha256(f"p2pdma-testbed image layout {LAYOUT_VERSION}\0".encode())
    for label, base in (("guest-images", images_root if images_root is not None else guest_images_dir()),
                        ("builder", builder_dir if builder_dir is not None else BUILDER_DIR)):
        if not base.is_dir():
            continue
        files = _hashed_files(base)
        if label == "guest-images":  # guest-images/kernel/ belongs to custom kernels
            files = [p for p in files if p.relative_to(base).parts[0] in ("default", "tools")]
        if label == "builder":
            files = [p for p in files if p.suffix == ".py" and p.parent == base]
        for path in files:
            rel = path.relative_to(base).as_posix()
            if path.is_symlink():
                kind, content = "l", str(path.readlink()).encode()
            else:
                kind = "x" if path.stat().st_mode & 0o111 else "f"
                content = path.read_bytes()
            h.update(f"{label}/{rel}\0{kind}\0{len(content)}\0".encode())
            h.update(content)
    return h.hexdigest()
