"""Kernel profiles: config fragments as data files, combined into a profile set.

    ps = profile_set(["vfio-iommufd", "coverage"])    # base is always first
    ps.name                      # 'base+vfio-iommufd+coverage'
    ps.fragment()                # the merged fragment for make allnoconfig KCONFIG_ALLCONFIG=
    ps.wanted                    # Kconfig: every option the set asks for (last profile wins)
    ps.make_variables()          # ('GCOV_PROFILE=...',) when a profile names gcov files

A profile is a file ``NAME.config`` in ``testbed/kernel/profiles/`` (or any ``*.config``
path): Kconfig lines (``CONFIG_X=y``, ``# CONFIG_X is not set``) with comments that say why
each option is there, and two kinds of testbed lines that Kconfig reads as comments:

- ``# summary: TEXT``: one line for ``testbed kernel profiles``;
- ``# gcov: PATH``: a source file (``drivers/pci/p2pdma.c``) or directory
  (``kernel/dma/``) compiled with gcov coverage.

Per-file coverage without editing the source tree: Kbuild compiles an object with
``CFLAGS_GCOV`` when ``$(GCOV_PROFILE_<stem>.o)$(GCOV_PROFILE)`` does not start with ``n``
(scripts/Makefile.lib). A make command-line variable overrides the directories' own
assignments and reaches every sub-make, and it is expanded for each object, where
``$(obj)`` is the object's directory and ``$(target-stem)`` its name: so

    GCOV_PROFILE=$(if $(filter drivers/pci/p2pdma kernel/dma/%,$(obj)/$(target-stem)),y,n)

turns coverage on for exactly those objects; a file its Makefile excludes
(``GCOV_PROFILE_x.o := n``) stays excluded, since that value comes first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .config import Kconfig

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
BASE = "base"
# Bumped when the way profiles become a .config changes (part of the build cache key).
FRAGMENT_FORMAT = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DIRECTIVE = re.compile(r"^#\s*(summary|gcov):\s*(.*?)\s*$")


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    text: str
    summary: str
    gcov: tuple[str, ...]  # source paths ("dir/" = the whole directory)

    @property
    def options(self) -> Kconfig:
        return Kconfig.parse(self.text, self.path)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def read(cls, path: Path, name: str | None = None) -> "Profile":
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"profile {path}: cannot read it ({exc})") from None
        summary = ""
        gcov: list[str] = []
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            m = _DIRECTIVE.match(line)
            if m and m.group(1) == "summary":
                summary = summary or m.group(2)
            elif m:
                gcov.append(_gcov_path(path, lineno, m.group(2)))
            elif line and not line.startswith("#") and not re.match(r"^CONFIG_\w+=\S", line):
                raise UsageError(f"{path}:{lineno}: not a Kconfig line ({line!r}); expected "
                                 "CONFIG_NAME=VALUE, '# CONFIG_NAME is not set' or a comment")
        profile = cls(name or path.stem, path, text, summary, tuple(gcov))
        if not len(profile.options):
            raise UsageError(f"{path}: no CONFIG_ options in the profile")
        return profile


def _gcov_path(path: Path, lineno: int, value: str) -> str:
    if not value or value.startswith("/") or ".." in value.split("/") or " " in value:
        raise UsageError(f"{path}:{lineno}: gcov: expected a path inside the kernel tree "
                         f"(drivers/pci/p2pdma.c, kernel/dma/), got {value!r}")
    if not value.endswith("/") and not value.endswith(".c"):
        raise UsageError(f"{path}:{lineno}: gcov: {value!r} is neither a .c file nor a "
                         "directory ending in '/'")
    return value


def available() -> dict[str, Path]:
    """The profiles shipped with the testbed, by name."""
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.config"))}


def load(name_or_path: str, arch: str | None = None) -> Profile:
    """A shipped profile by name, or a profile file by path (``./mine.config``).  For a
    kernel of another machine than x86_64, a shipped profile takes its architecture's part
    too (``profiles/<arch>/NAME.config``, appended: its lines win)."""
    shipped = available()
    if name_or_path in shipped:
        profile = Profile.read(shipped[name_or_path], name_or_path)
        overlay = PROFILES_DIR / arch / f"{name_or_path}.config" if arch else None
        if overlay is None or not overlay.is_file():
            return profile
        part = Profile.read(overlay, name_or_path)
        return Profile(profile.name, profile.path,
                       f"{profile.text.rstrip()}\n\n# ---- {arch} part ({overlay})\n{part.text}",
                       profile.summary, profile.gcov + part.gcov)
    if name_or_path.endswith(".config") or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UsageError(f"profile {name_or_path}: no such file")
        if not _NAME.match(path.stem):
            raise UsageError(f"profile {path}: the file name must be NAME.config with NAME "
                             "of lower-case letters, digits, '-' and '_'")
        return Profile.read(path)
    raise UsageError(f"unknown kernel profile {name_or_path!r}; the profiles are: "
                     f"{', '.join(shipped)} (or a path to a NAME.config fragment)")


@dataclass(frozen=True)
class ProfileSet:
    profiles: tuple[Profile, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    @property
    def name(self) -> str:
        return "+".join(self.names)

    def fragment(self) -> str:
        """All profiles' lines, in order (a later profile's value wins in Kconfig)."""
        parts = [f"# testbed kernel profile set {self.name}\n"]
        for p in self.profiles:
            parts.append(f"\n# ---- profile {p.name} ({p.path})\n{p.text.rstrip()}\n")
        return "".join(parts)

    @property
    def wanted(self) -> Kconfig:
        """Every option the set asks for, with the value of the last profile that sets it."""
        values: dict[str, str] = {}
        for p in self.profiles:
            values.update(p.options.values)
        return Kconfig(values)

    def asked_by(self, option: str) -> str:
        """The profile whose value of ``option`` counts (the last that sets it)."""
        for p in reversed(self.profiles):
            if option in p.options:
                return p.name
        return "?"

    @property
    def gcov(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for p in self.profiles:
            seen.update(dict.fromkeys(p.gcov))
        return tuple(seen)

    def make_variables(self) -> tuple[str, ...]:
        """Extra ``make`` arguments the set needs (per-file coverage; see the module doc)."""
        if not self.gcov:
            return ()
        return (f"GCOV_PROFILE={gcov_make_value(self.gcov)}",)

    def digest(self) -> str:
        """What the build cache keys the profile set by: names, contents, format."""
        h = hashlib.sha256(f"fragment-format {FRAGMENT_FORMAT}\n".encode())
        for p in self.profiles:
            h.update(f"{p.name}\0{p.sha256}\n".encode())
        return h.hexdigest()


def gcov_make_value(paths: tuple[str, ...] | list[str]) -> str:
    """The ``GCOV_PROFILE`` value that selects ``paths``' objects.

    >>> gcov_make_value(["drivers/pci/p2pdma.c", "kernel/dma/"])
    '$(if $(filter drivers/pci/p2pdma kernel/dma/%,$(obj)/$(target-stem)),y,n)'
    """
    patterns = [p + "%" if p.endswith("/") else p[:-2] for p in paths]
    return f"$(if $(filter {' '.join(patterns)},$(obj)/$(target-stem)),y,n)"


def parse_names(text: str) -> list[str]:
    """``base+vfio-iommufd`` or ``vfio-iommufd,coverage`` -> the names (no empty ones)."""
    names = [n.strip() for n in re.split(r"[+,]", text)]
    if not text.strip() or any(not n for n in names):
        raise UsageError(f"profile set {text!r}: expected NAME[+NAME...], e.g. "
                         "base+vfio-iommufd+coverage")
    return names


def profile_set(names: list[str] | tuple[str, ...], arch: str | None = None) -> ProfileSet:
    """``base`` first (added when not named), then the others in the order given; ``arch``:
    the machine the kernel is built for (its parts of the profiles, see :func:`load`)."""
    ordered: list[str] = [BASE]
    for n in names:
        if n not in ordered:
            ordered.append(n)
    return ProfileSet(tuple(load(n, arch) for n in ordered))
