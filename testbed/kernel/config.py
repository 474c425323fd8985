"""A kernel configuration (``.config``, ``/boot/config-*`` or a fragment), typed.

    >>> k = Kconfig.parse("CONFIG_A=y\\n# CONFIG_B is not set\\nCONFIG_C=m\\n")
    >>> k["CONFIG_A"], k["CONFIG_B"], k["CONFIG_C"], k["CONFIG_D"]
    ('y', 'n', 'm', 'n')
    >>> k.builtin("CONFIG_A"), k.builtin("CONFIG_C"), k.enabled("CONFIG_C")
    (True, False, True)
    >>> k.lacking(["CONFIG_A", "CONFIG_C"])
    ['CONFIG_C=y (got m)']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


@dataclass(frozen=True)
class Kconfig:
    """``CONFIG_X -> value`` ('y', 'm', '"text"', '42', ...); an unset option reads 'n'."""

    values: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def parse(cls, text: str, source: Path | None = None) -> "Kconfig":
        values: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            m = _SET.match(line)
            if m:
                values[m.group(1)] = m.group(2)
                continue
            m = _UNSET.match(line)
            if m:
                values[m.group(1)] = "n"
        return cls(values, source)

    @classmethod
    def read(cls, path: Path) -> "Kconfig":
        """The config in ``path`` (OSError when it cannot be read)."""
        return cls.parse(Path(path).read_text(errors="replace"), Path(path))

    def __getitem__(self, name: str) -> str:
        return self.values.get(name, "n")

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value as written (None, or ``default``, when the option is absent)."""
        return self.values.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def builtin(self, name: str) -> bool:
        return self[name] == "y"

    def enabled(self, name: str) -> bool:
        return self[name] in ("y", "m")

    def lacking(self, builtin: Iterable[str]) -> list[str]:
        """The options of ``builtin`` that are not =y here, as ``NAME=y (got VALUE)``."""
        return [f"{n}=y (got {'not set' if self[n] == 'n' else self[n]})"
                for n in builtin if not self.builtin(n)]

    def unmet(self, fragment: "Kconfig") -> list[str]:
        """The fragment's =y options this config does not have as =y."""
        return self.lacking(n for n in fragment if fragment[n] == "y")

    @property
    def p2pdma(self) -> bool:
        return self.builtin("CONFIG_PCI_P2PDMA")

    @property
    def is_full(self) -> bool:
        """A whole kernel config (not a fragment): it says something about PCI."""
        return "CONFIG_PCI" in self or "CONFIG_VIRTIO_BLK" in self
