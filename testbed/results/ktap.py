"""KTAP version 1 (Documentation/dev-tools/ktap.rst): what kselftest and KUnit print, so
kernel CI parsers read a run's results without a plugin.

A run is one KTAP document: one test per workload, with one subtest per record of that
workload.  A judged record is ``ok`` when it passed (verdict and mechanism), ``not ok``
with what differed after the ``#`` when not; a record that is not judged (an informational
baseline, a command, the inventory) is ``ok ... # SKIP``.  A workload is ``not ok`` when
any of its records is, and skipped when all are.  A run that broke or did not finish
gets a last ``not ok ... # ERROR`` test.  Subtests are indented two spaces per level,
as the specification says, and begin with their own version line and plan.

    >>> t = KtapTest("p2p-copy", subtests=[KtapTest("nvme0->nvme1"),
    ...              KtapTest("nvme1->nvme0", ok=False, reason="predicted ok, observed error")])
    >>> print(render([t], diagnostics=["switch-cmb"]))
    KTAP version 1
    1..1
    # switch-cmb
      KTAP version 1
      1..2
      ok 1 nvme0->nvme1
      not ok 2 nvme1->nvme0 # predicted ok, observed error
    not ok 1 p2p-copy # 1 of 2 failed
    <BLANKLINE>
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..verdicts.record import Record
from .model import RunResult

INDENT = "  "  # ktap.rst: "One level of indentation is two spaces"
SKIP, ERROR = "SKIP", "ERROR"


@dataclass
class KtapTest:
    """One test line (and the subtests before it).  With subtests, ``ok`` is derived:
    not ok when any subtest is not ok; a SKIP when every subtest is skipped."""

    name: str
    ok: bool = True
    directive: str = ""  # SKIP | ERROR | ""
    reason: str = ""  # the diagnostic data after "#" on the result line
    diagnostics: list[str] = field(default_factory=list)  # "# " lines before the result
    subtests: list["KtapTest"] = field(default_factory=list)

    def resolved(self) -> tuple[bool, str, str]:
        """(ok, directive, reason) with the subtests' results bubbled up."""
        if not self.subtests or self.directive == ERROR:
            return self.ok, self.directive, self.reason
        results = [t.resolved() for t in self.subtests]
        if all(d == SKIP for _, d, _ in results):
            return self.ok, SKIP, self.reason or "nothing judged"
        failed = sum(1 for ok, _, _ in results if not ok)
        ok = self.ok and not failed
        return ok, self.directive, self.reason or (f"{failed} of {len(results)} failed"
                                                   if failed else "")


def description(text: str) -> str:
    """A test description: any characters but ``#`` and a newline (ktap.rst).

    >>> description("exec: echo a # b\\nc")
    'exec: echo a %23 b c'
    """
    return re.sub(r"\s+", " ", text.replace("#", "%23")).strip() or "unnamed"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _lines(test: KtapTest, number: int, depth: int) -> list[str]:
    pad = INDENT * depth
    out: list[str] = []
    if test.subtests:
        out += _document(test.subtests, depth + 1)
    for d in test.diagnostics:
        out += [f"{pad}# {line}".rstrip() for line in d.splitlines() or [""]]
    ok, directive, reason = test.resolved()
    line = f"{pad}{'ok' if ok else 'not ok'} {number} {description(test.name)}"
    tail = " ".join(x for x in (directive, _one_line(reason)) if x)
    return out + [f"{line} # {tail}" if tail else line]


def _document(tests: Sequence[KtapTest], depth: int,
              diagnostics: Iterable[str] = ()) -> list[str]:
    pad = INDENT * depth
    out = [f"{pad}KTAP version 1", f"{pad}1..{len(tests)}"]
    out += [f"{pad}# {line}".rstrip() for d in diagnostics for line in d.splitlines() or [""]]
    for i, t in enumerate(tests, 1):
        out += _lines(t, i, depth)
    return out


def render(tests: Sequence[KtapTest], diagnostics: Iterable[str] = ()) -> str:
    """The KTAP document of ``tests`` (a version line, a plan, the tests), newline-ended;
    ``diagnostics`` go after the plan."""
    return "\n".join(_document(tests, 0, diagnostics)) + "\n"


# -- a run's records -----------------------------------------------------------------------

def record_name(rec: Record) -> str:
    """How a record is called inside its workload's test."""
    if rec.test is not None:
        return rec.test
    if rec.command is not None:
        return f"exec: {rec.command}"
    if rec.provider and rec.client:
        return f"{rec.provider}->{rec.client}"
    return rec.provider or rec.client or rec.name


def verdict_test(name: str, *, predicted: str | None, observed: str | None, passed: bool,
                 mismatch: str = "", mechanism: str = "", skip_why: str = "",
                 diagnostics: Sequence[str] = ()) -> KtapTest:
    """One judged (or skipped) result: shared by runs (records) and the matrix (cells)."""
    if predicted is None or observed is None:
        return KtapTest(name, directive=SKIP, reason=skip_why or "not judged",
                        diagnostics=list(diagnostics))
    what = f"predicted {predicted}, observed {observed}" + (
        f"; mechanism {mechanism}" if mechanism else "")
    return KtapTest(name, ok=passed, reason="" if passed else (mismatch or what),
                    diagnostics=[what, *diagnostics])


MAX_SUBTEST_DIAGNOSTICS = 40  # the last lines before a kernel test's result line


def subtest_test(d: dict[str, Any]) -> KtapTest:
    """One result of a kernel test (a parsed KTAP subtest, see verdicts.ktap), as it was."""
    name, status, reason = str(d.get("name", "")), d.get("status"), str(d.get("reason", ""))
    diags = [str(x) for x in d.get("diagnostics") or []][-MAX_SUBTEST_DIAGNOSTICS:]
    subs = [subtest_test(s) for s in d.get("subtests") or []]
    if status == "skip":
        return KtapTest(name, directive=SKIP, reason=reason, diagnostics=diags, subtests=subs)
    if status == "error":
        return KtapTest(name, ok=False, directive=ERROR, reason=reason, diagnostics=diags,
                        subtests=subs)
    if status == "xfail":
        return KtapTest(name, reason=f"XFAIL {reason}".strip(), diagnostics=diags,
                        subtests=subs)
    return KtapTest(name, ok=status == "pass", reason="" if status == "pass" else reason,
                    diagnostics=diags, subtests=subs)


def kernel_test(rec: Record) -> KtapTest:
    """A kernel test program or KUnit suite: its own subtests, nested, as it printed them;
    a crash or hang is an ERROR naming what ran; a program that could not run a SKIP."""
    subs = [subtest_test(d) for d in rec.subtests]
    name = record_name(rec)
    if not rec.judged:
        return KtapTest(name, directive=SKIP, reason=rec.detail or "not run", subtests=subs)
    if rec.observed == "error":
        return KtapTest(name, ok=False, directive=ERROR, reason=rec.detail, subtests=subs)
    return KtapTest(name, ok=rec.passed, reason="" if rec.passed else rec.detail,
                    subtests=subs, diagnostics=[rec.detail] if rec.detail else [])


def record_test(rec: Record) -> KtapTest:
    if rec.test is not None:
        return kernel_test(rec)
    diags: list[str] = []
    if rec.judged and not rec.passed:
        if rec.reason:
            diags.append(f"reason: {_one_line(rec.reason)}")
        if rec.detail:
            diags.append(f"observed: {_one_line(rec.detail)}")
        diags += [f"dmesg {cat}: {_one_line(line)}" for cat, lines in rec.dmesg.items()
                  for line in lines[:3]]
    if rec.judged and rec.data_verified is not None:
        diags.append("data verified" if rec.data_verified else "data NOT verified")
    if rec.command is not None:
        why = f"not judged: exit status {rec.exit_status}"
    elif rec.detail.startswith("unsupported"):
        why = rec.detail  # the kernel cannot run it: "unsupported (CONFIG_X is not set)"
    elif rec.name == "inventory":
        why = "not judged: the guest's view of the topology"
    else:
        why = "not judged: informational" + (
            f" ({rec.mb_per_s:.1f} MB/s)" if rec.mb_per_s is not None else "")
    return verdict_test(record_name(rec), predicted=rec.predicted, observed=rec.observed,
                        passed=rec.passed, mismatch=rec.mismatch, mechanism=rec.mechanism_text,
                        skip_why=why, diagnostics=diags)


def group(items: Iterable[tuple[str, KtapTest]]) -> list[KtapTest]:
    """One parent test per name, in first-seen order, holding its tests."""
    parents: dict[str, KtapTest] = {}
    for name, test in items:
        parents.setdefault(name, KtapTest(name)).subtests.append(test)
    return list(parents.values())


def run_tests(result: RunResult) -> list[KtapTest]:
    """The tests of one run: a test per workload, then the run's error if it broke."""
    tests = group((rec.name, record_test(rec)) for rec in result.workloads)
    if result.error or not result.finished:
        boot = result.error_kind.startswith(("boot", "driver", "guest-view"))
        tests.append(KtapTest("boot" if boot else "run", ok=False, directive=ERROR,
                              reason=(result.error or "the run did not finish").splitlines()[0]))
    return tests


def to_ktap(result: RunResult) -> str:
    """results.ktap: the run as one KTAP document.

    >>> r = RunResult("switch-cmb", kernel={"release": "7.3.4"}, finished=True, workloads=[
    ...     Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok"),
    ...     Record("host-baseline", "nvme0", "nvme1", data_verified=True, mb_per_s=300.0)])
    >>> print(to_ktap(r), end="")
    KTAP version 1
    1..2
    # p2pdma-testbed run switch-cmb: kernel 7.3.4, status pass
      KTAP version 1
      1..1
      # predicted ok, observed ok
      ok 1 nvme0->nvme1
    ok 1 p2p-copy
      KTAP version 1
      1..1
      ok 1 nvme0->nvme1 # SKIP not judged: informational (300.0 MB/s)
    ok 2 host-baseline # SKIP nothing judged
    """
    head = (f"p2pdma-testbed run {result.topology}: kernel "
            f"{result.kernel.get('release') or '?'}, status {result.verdict}")
    return render(run_tests(result), diagnostics=[head])
