"""Why an option a profile asked for is not in the final .config: the kernel's own Kconfig says.

    why = explain(out, ksrc, make_argv, ["CONFIG_TEST_HMM"])
    why["CONFIG_TEST_HMM"].reason
    # 'depends on RUNTIME_TESTING_MENU [=n] && TRANSPARENT_HUGEPAGE [=n] && ... (lib/Kconfig.debug:3340); unmet: RUNTIME_TESTING_MENU, ...'

No Kconfig parser of our own: a ~60-line C program (``kconfig/why.c``) is linked against
the objects ``scripts/kconfig`` already compiled in the build directory, so the tree's own
parser and semantics answer (``menu_get_ext_help``: value, definition, each dependency with
its current value, who selects it), for any kernel version that has these objects. It runs
with the environment Kconfig was evaluated with, which Kbuild records in
``include/config/auto.conf.cmd`` (written by ``make syncconfig``). When the helper cannot be
built (an old tree with other object names, no host compiler) the caller still reports
which options are missing, without the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HELPER_SOURCE = Path(__file__).resolve().parent / "kconfig" / "why.c"
KCONFIG_OBJECTS = ("confdata", "expr", "lexer.lex", "menu", "parser.tab", "preprocess",
                   "symbol", "util")
_ENV = re.compile(r'^ifneq "\$\((\w+)\)" "(.*)"$', re.M)
_ATOM = re.compile(r"(!?)\b([A-Za-z0-9_]+) \[=([^\]]*)\](?!\s*!?=)")


@dataclass(frozen=True)
class Explanation:
    name: str                      # CONFIG_X
    known: bool                    # the tree's Kconfig defines it
    value: str = ""                # what this .config has ('n', 'y', 'm', ...)
    defined_at: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()  # each definition's dependency, values shown
    unmet: tuple[str, ...] = ()    # the symbols in them that are not satisfied
    selected_by: tuple[str, ...] = ()
    prompt: bool = True            # False: only a select (or its default) sets it
    selectors: tuple[str, ...] = ()  # the options whose select would set it, now off

    @property
    def reason(self) -> str:
        if not self.known:
            return "unknown to this kernel's Kconfig (renamed, removed, or newer than the tree)"
        parts = []
        for dep, where in zip(self.depends, self.defined_at):
            parts.append(f"depends on {dep} ({where})")
        if not parts and self.defined_at:
            parts.append(f"defined at {', '.join(self.defined_at)}")
        if self.unmet:
            parts.append("unmet: " + ", ".join(self.unmet))
        if self.selected_by:
            parts.append("selected by " + "; ".join(self.selected_by))
        if not self.prompt and not self.unmet and self.value == "n":
            names = [sel.split()[0] for sel in self.selectors]
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            parts.append("it has no prompt: only a select sets it"
                         + (", e.g. from " + ", ".join(names[:8]) + more if names else ""))
        return "; ".join(parts) or "Kconfig gives no reason"


def _false_atoms(expr: str) -> list[str]:
    out = []
    for neg, name, value in _ATOM.findall(expr):
        false = value != "n" if neg else value == "n"
        if false and f"{neg}{name}" not in out:
            out.append(f"{neg}{name}")
    return out


def _conjuncts(expr: str) -> list[str]:
    """``A && (B || C) && D`` -> ['A', '(B || C)', 'D'] (split at depth 0)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and expr.startswith("&&", i):
            parts.append(expr[start:i].strip())
            start = i + 2
    parts.append(expr[start:].strip())
    return [p for p in parts if p]


def _unmet(expr: str) -> list[str]:
    """The parts of a printed dependency (``A [=y] && B [=n]``) that are not met: each
    top-level conjunct whose atoms are all false (an ``||`` group with one true member is
    met), by name when it is one symbol.

    >>> _unmet("NETDEVICES [=y] && NET_CORE [=n] && (!X86_32 [=n] || FOO [=m])")
    ['NET_CORE']
    >>> _unmet("DEBUG_FS [=n] && (!ARCH_WANTS_NO_INSTR [=y] || CC_HAS_NO_PROFILE_FN_ATTR [=y])")
    ['DEBUG_FS']
    >>> _unmet("(PCI [=n] || ACPI [=n]) && X [=y]")
    ['(PCI [=n] || ACPI [=n])']
    """
    out = []
    for part in _conjuncts(expr):
        atoms = _ATOM.findall(part)
        false = _false_atoms(part)
        if atoms and len(false) == len({f"{n}{a}" for n, a, _ in atoms}):
            out.extend(false if len(atoms) == 1 else [part])
    return out


def parse_help(name: str, text: str) -> Explanation:
    """One symbol's block of the helper's output (menu_get_ext_help's text)."""
    if text.strip() == "unknown":
        return Explanation(name, known=False)
    value = ""
    defined: list[str] = []
    depends: list[str] = []
    selected: list[str] = []
    selectors: list[str] = []
    prompt = False
    in_selected: list[str] | None = None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^Symbol: \S+ \[=(.*)\]$", s)
        if m:
            value = m.group(1)
        elif s.startswith("Defined at "):
            defined.append(s[len("Defined at "):])
        elif s.startswith("Depends on: ") and len(depends) < len(defined):
            depends.append(s[len("Depends on: "):])
        elif s.startswith("Prompt: "):
            prompt = True
        if s.startswith("Selected by ["):
            in_selected = selectors if s.startswith("Selected by [n]") else selected
            continue
        if in_selected is not None and s.startswith("- "):
            in_selected.append(s[2:])
        elif not s.startswith("- "):
            in_selected = None
    unmet: list[str] = []
    for dep in depends:
        unmet += [u for u in _unmet(dep) if u not in unmet]
    return Explanation(name, True, value, tuple(defined), tuple(depends), tuple(unmet),
                       tuple(selected), prompt, tuple(selectors))


def parse_output(text: str) -> dict[str, Explanation]:
    out: dict[str, Explanation] = {}
    for block in re.split(r"(?m)^=== ", text)[1:]:
        sym, _, body = block.partition("\n")
        out[f"CONFIG_{sym.strip()}"] = parse_help(f"CONFIG_{sym.strip()}", body)
    return out


def kconfig_environment(out: Path) -> dict[str, str] | None:
    """The variables Kconfig was evaluated with (include/config/auto.conf.cmd)."""
    try:
        text = (out / "include/config/auto.conf.cmd").read_text(errors="replace")
    except OSError:
        return None
    env = dict(_ENV.findall(text))
    return env or None


def _helper(out: Path, ksrc: Path) -> Path | None:
    objs = [out / "scripts/kconfig" / f"{o}.o" for o in KCONFIG_OBJECTS]
    cc = shutil.which(os.environ.get("HOSTCC", "gcc")) or shutil.which("cc")
    if cc is None or not all(o.is_file() for o in objs):
        return None
    exe = out / ".testbed" / "kconfig-why"
    newest = max(o.stat().st_mtime for o in objs + [HELPER_SOURCE])
    if exe.is_file() and exe.stat().st_mtime >= newest:
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([cc, "-O1", "-I", str(out / "scripts/kconfig"),
                           "-I", str(ksrc / "scripts/kconfig"), "-I", str(ksrc / "scripts/include"),
                           "-o", str(exe), str(HELPER_SOURCE)] + [str(o) for o in objs],
                          capture_output=True, text=True, timeout=120)
    return exe if proc.returncode == 0 and exe.is_file() else None


def explain(out: Path, ksrc: Path, names: list[str]) -> dict[str, Explanation] | None:
    """What the tree's Kconfig says about ``names`` (CONFIG_X) in ``out/.config``; None when
    it cannot be asked (no auto.conf.cmd yet: run ``make syncconfig`` first; no helper)."""
    env = kconfig_environment(out)
    exe = _helper(out, ksrc) if env else None
    if env is None or exe is None or not names:
        return None
    symbols = [n[len("CONFIG_"):] if n.startswith("CONFIG_") else n for n in names]
    try:
        proc = subprocess.run([str(exe), "Kconfig", ".config", *symbols], cwd=out,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              errors="replace", timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return parse_output(proc.stdout)
