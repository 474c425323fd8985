"""The testbed's own tiny initramfs, built in Python from the image tree.

Contents: busybox-static from the image, the boot-critical kernel modules
(decompressed, so the guest spends no TCG time on xz, and with their
signatures stripped, see :func:`testbed.image.kmod.strip_signature`), the
lists ``/modules.early``, ``/modules`` and ``/modules.parallel`` (insmod order
of each stream), ``/dev/console`` and ``/init``
(guest-images/<recipe>/initramfs-init). It is left uncompressed:
decompressing under TCG costs more than copying a few MiB more through fw_cfg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ImageError
from .cpio import CpioWriter
from .kmod import (
    ModulesDep,
    decompress_module,
    load_order,
    module_name,
    parse_builtin,
    parse_modules_dep,
    strip_signature,
)


@dataclass(frozen=True)
class ModulePlan:
    """Module paths (relative to /lib/modules/<release>) per load stream."""

    early: list[str]
    main: list[str]
    parallel: list[str]

    def names(self) -> dict[str, list[str]]:
        return {"early": [module_name(p) for p in self.early],
                "main": [module_name(p) for p in self.main],
                "parallel": [module_name(p) for p in self.parallel]}


def _closure(dep: ModulesDep, paths: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(paths)
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(dep.deps.get(p, ()))
    return seen


def plan_modules(dep: ModulesDep, builtin: set[str], early: list[str], main: list[str],
                 parallel: list[str]) -> ModulePlan:
    """Split the requested modules into the three streams the init runs.

    ``early`` is loaded first; then ``main`` and ``parallel`` run concurrently.
    Each module is loaded once, in the first stream that needs it. If a
    parallel module needs one of ``main``'s modules, the two streams would
    race, so the parallel stream is appended to ``main`` instead.
    """
    e = load_order(dep, early, builtin, missing_ok=True)
    m = [p for p in load_order(dep, main, builtin, missing_ok=True) if p not in e]
    par = [p for p in load_order(dep, parallel, builtin, missing_ok=True) if p not in e and p not in m]
    if _closure(dep, par) & set(m):
        m, par = m + par, []
    return ModulePlan(e, m, par)


def build_initramfs(root: Path, release: str, init_script: Path, *,
                    early: Sequence[str] = (), main: Sequence[str] = (),
                    parallel: Sequence[str] = (),
                    unsigned: bool = True) -> tuple[bytes, ModulePlan]:
    """(cpio bytes, the module plan it carries).

    ``unsigned`` strips the modules' signatures (see :func:`strip_signature`).
    """
    moddir = root / "lib/modules" / release
    dep = parse_modules_dep((moddir / "modules.dep").read_text())
    builtin_file = moddir / "modules.builtin"
    builtin = parse_builtin(builtin_file.read_text()) if builtin_file.exists() else set()
    plan = plan_modules(dep, builtin, list(early), list(main), list(parallel))

    busybox = root / "usr/bin/busybox"
    if not busybox.is_file():
        raise ImageError("busybox-static is not installed in the image (no /usr/bin/busybox)")
    data = busybox.read_bytes()
    if data[:4] != b"\x7fELF":
        raise ImageError("/usr/bin/busybox is not an ELF binary")

    w = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        w.directory(d)
    w.device("dev/console", major=5, minor=1, mode=0o600)
    w.device("dev/null", major=1, minor=3, mode=0o666)
    w.file("bin/busybox", data, mode=0o755)
    w.symlink("bin/sh", "busybox")
    for list_name, paths in (("modules.early", plan.early), ("modules", plan.main),
                             ("modules.parallel", plan.parallel)):
        lines = []
        for path in paths:
            plain = decompress_module(moddir / path)
            if unsigned:
                plain = strip_signature(plain)
            base = path.rsplit("/", 1)[-1]
            for suffix in (".xz", ".zst", ".gz"):
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
            w.file(f"lib/modules/{base}", plain, mode=0o644)
            lines.append(base)
        w.file(list_name, "".join(line + "\n" for line in lines).encode(), mode=0o644)
    w.file("init", init_script.read_bytes(), mode=0o755)
    return w.finish(), plan
