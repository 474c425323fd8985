"""Which Debian mirror to use (guest image, kernel source): the host's own.

No package mirror's address is written into the project.  The image recipe says
``mirror = "host"`` and the builder takes the first Debian archive source of the
host's apt configuration (``/etc/apt/sources.list``, ``sources.list.d/*.list`` and
deb822 ``*.sources``), so a user behind a local mirror needs no edit.
``TESTBED_DEBIAN_MIRROR`` overrides it, as does a URL in the recipe.

    >>> parse_sources_list("deb [arch=amd64] http://mirror.example/debian bookworm main")
    [('http://mirror.example/debian', ('bookworm',))]
    >>> parse_deb822("Types: deb\\nURIs: http://m.example/debian\\nSuites: trixie trixie-updates\\n")
    [('http://m.example/debian', ('trixie', 'trixie-updates'))]
    >>> pick([("http://s.example/debian-security", ("bookworm-security",)),
    ...       ("http://m.example/debian", ("bookworm",))])
    'http://m.example/debian'
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ImageError

APT = Path("/etc/apt")
ENV = "TESTBED_DEBIAN_MIRROR"
Source = tuple[str, tuple[str, ...]]  # (URI, suites)


def parse_sources_list(text: str) -> list[Source]:
    """One-line ``deb`` entries (``deb-src`` and comments are skipped)."""
    out: list[Source] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"^deb\s+(\[[^\]]*\]\s+)?", "", line)
        parts = line.split()
        if len(parts) >= 2:
            out.append((parts[0], (parts[1],)))
    return out


def parse_deb822(text: str) -> list[Source]:
    """deb822 stanzas with ``Types: deb`` (``Enabled: no`` stanzas are skipped)."""
    out: list[Source] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        for uri in fields.get("uris", "").split():
            out.append((uri, suites))
    return out


def host_sources(apt: Path = APT) -> list[Source]:
    """Every ``deb`` source of the host's apt configuration, in apt's order."""
    out: list[Source] = []
    try:
        out += parse_sources_list((apt / "sources.list").read_text(errors="replace"))
    except OSError:
        pass
    d = apt / "sources.list.d"
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        try:
            if f.suffix == ".list":
                out += parse_sources_list(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                out += parse_deb822(f.read_text(errors="replace"))
        except OSError:
            continue
    return out


def pick(sources: list[Source]) -> str | None:
    """The first source that serves the Debian archive itself (not security updates,
    not a third-party repository)."""
    for uri, suites in sources:
        if "security" in uri or any("security" in s for s in suites):
            continue
        if uri.rstrip("/").endswith("/debian") or any(
                s.split("-")[0] in ("bookworm", "trixie", "forky", "sid", "unstable",
                                    "testing", "stable") for s in suites):
            return uri.rstrip("/")
    return None


def resolve_mirror(recipe_mirror: str, apt: Path = APT) -> str:
    """The mirror URL to build from (ImageError when none can be found)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return env.rstrip("/")
    if recipe_mirror and recipe_mirror != "host":
        return recipe_mirror.rstrip("/")
    found = pick(host_sources(apt))
    if found is None:
        raise ImageError(f"no Debian mirror in the host's apt sources ({apt}/sources.list, "
                         f"{apt}/sources.list.d/): add one, or set {ENV}=URL")
    return found
