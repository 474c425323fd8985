"""Coverage without a guest: the guest tool's lookups and counting, ctags and DWARF on real
C compiled here, the model's sums, the lcov and Cobertura files."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbed.coverage import ctags, dwarf, selection
from testbed.coverage.cobertura import to_cobertura
from testbed.coverage.functions import FunctionPlan, FunctionTracer
from testbed.coverage.lcov import to_lcov
from testbed.coverage.model import (EXECUTED, NOT_EXECUTED, UNTRACEABLE, Coverage, FileCov,
                                    FunctionCov, union)
from testbed.coverage.source import SourceTree, find_source
from testbed.errors import UsageError
from testbed.guest.result import CommandResult
from testbed.guest_tool import coverage as gcov_tool
from testbed.guest_tool import symbols
from testbed.kernel.resolve import KernelSpec

C_SOURCE = """\
#include <stddef.h>
static inline int twice(int x)
{
	return 2 * x;
}

int used(int x)
{
	return twice(x) + 1;
}

#ifdef NEVER
int compiled_out(void)
{
	return 0;
}
#endif

static int __attribute__((noinline)) helper(int x)
{
	return x * 3;
}

int entry(int x)
{
	return helper(x) + used(x);
}
"""


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (scripts/setup-host.sh installs it)")
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "linux"
    (root / "drivers/pci").mkdir(parents=True)
    (root / "drivers/pci/p2pdma.c").write_text(C_SOURCE)
    (root / "drivers/pci/notes.txt").write_text("not C")
    (root / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\n")
    (root / "Kconfig").write_text("")
    return root


# -- the guest side's pure parts ---------------------------------------------------------
AFF = """\
1:ffffffff81000004 entry
2:ffffffff81000044 used
3:ffffffff81000084 helper.part.0
7:ffffffff81c02b34 size_show
8:ffffffff81c02c04 available_show
9:ffffffff81c02d04 published_show
12:ffffffff81db0194 size_show
20:ffffffffc0400014 viommu_remove [virtio_iommu]
"""
KSYMS = "ffffffff81000100 T notraced\nffffffff81000200 t init_only\n"


def test_resolve_traces_clones_and_pins_duplicates():
    entries = symbols.parse_filter_functions(AFF, numbered=True)
    files = {"a.c": [{"name": n} for n in ("entry", "used", "helper", "notraced", "gone")],
             "drivers/pci/p2pdma.c": [{"name": n} for n in
                                      ("size_show", "available_show", "published_show")],
             "other.c": [{"name": "size_show"}]}
    out = symbols.resolve(files, entries, KSYMS)
    a = out["a.c"]
    assert sorted(a["traced"]) == ["entry", "helper", "used"]
    assert a["traced"]["helper"][0][2] == "helper.part.0"  # a clone counts as its function
    assert a["untraced"] == {"notraced": "notrace", "gone": "absent"}
    # size_show: the copy beside the file's other functions, not the one 1.7 MB away
    p2p = out["drivers/pci/p2pdma.c"]["traced"]["size_show"]
    assert [e[0] for e in p2p] == [7]
    # a file with nothing else to go by cannot tell which copy is its own
    assert out["other.c"]["untraced"] == {"size_show": "ambiguous"}


def test_resolve_uses_the_debug_address_and_the_module():
    entries = symbols.parse_filter_functions(AFF, numbered=True)
    files = {"x.c": [{"name": "size_show", "addr": 0xffffffff81db0100 - 0x1000}],
             "virtio.c": [{"name": "viommu_remove", "module": "virtio_iommu"}],
             "y.c": [{"name": "viommu_remove", "module": "nvme"}]}
    out = symbols.resolve(files, entries, "", text_offset=0x1000)
    assert [e[0] for e in out["x.c"]["traced"]["size_show"]] == [12]
    assert "viommu_remove" in out["virtio.c"]["traced"]
    assert out["y.c"]["untraced"] == {"viommu_remove": "absent"}


def test_count_adds_repeats_and_lost_entries():
    text = ("used <ffffffff81000044>\n"
            "used <ffffffff81000044> (repeats: 5, last_ts:   10.5)\n"
            "  fio-12 [001] ..... 3.1: entry <ffffffff81000004>\n"
            "CPU:0 [LOST 3 EVENTS]\n")
    counts, lost = gcov_tool.count(text, {})
    assert counts == {str(0xffffffff81000044): 6, str(0xffffffff81000004): 1}
    assert lost == 3


# -- ctags and the file set --------------------------------------------------------------
def test_ctags_finds_definitions_and_their_ends(tree):
    _need("ctags")
    defs = {d.name: d for d in ctags.definitions(tree, "drivers/pci/p2pdma.c")}
    assert set(defs) == {"twice", "used", "compiled_out", "helper", "entry"}
    assert (defs["used"].start, defs["used"].end) == (7, 10)
    assert defs["entry"].text.startswith("int entry(int x)")


def test_selection_expands_and_refuses(tree):
    files, notes = selection.select_files(tree, selection.parse_requests(["drivers/pci/"]))
    assert files == ["drivers/pci/p2pdma.c"]
    files, notes = selection.select_files(tree, selection.parse_requests([]))
    assert files == ["drivers/pci/p2pdma.c"] and any("mm/hmm.c" in n for n in notes)
    for bad, word in (("drivers/nope.c", "no such file"), ("drivers/pci/notes.txt", "not a C"),
                      ("../etc", "outside"), ("/etc/passwd", "relative")):
        with pytest.raises(UsageError, match=word):
            selection.select_files(tree, selection.parse_requests([bad]))


def test_source_tree_from_the_option_or_a_clear_error(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("TESTBED_KERNEL_SOURCE", raising=False)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    (tree / "drivers").mkdir(exist_ok=True)
    src = find_source(None, tree)
    assert src.root == tree.resolve() and src.release == "7.3.4"
    assert src.check_release("7.3.4+deb13-amd64") is None
    assert "7.4.0" in (src.check_release("7.4.0") or "")
    with pytest.raises(UsageError, match="--coverage-source"):
        find_source(None, tmp_path / "missing")
    kernel = KernelSpec("bz", "bzimage", tree / "bz", tree / "bz", "7.3.4")
    with pytest.raises(UsageError, match="no source tree for kernel 7.3.4"):
        find_source(kernel, None)


# -- DWARF of an object compiled here ----------------------------------------------------
def test_dwarf_tells_out_of_line_inlined_and_absent(tree, tmp_path):
    gcc = _need("gcc")
    obj = tmp_path / "p2pdma.o"
    subprocess.run([gcc, "-g", "-O2", "-c", "drivers/pci/p2pdma.c", "-o", str(obj)],
                   cwd=tree, check=True)
    info = dwarf.scan(obj, ["drivers/pci/p2pdma.c"], None)["drivers/pci/p2pdma.c"]
    fs = info.functions
    assert "compiled_out" not in fs
    assert fs["used"].addr is not None and fs["entry"].addr is not None
    assert fs["twice"].inlined and fs["twice"].addr is None
    assert fs["helper"].addr is not None


# -- the host side's bookkeeping, against a stand-in guest -------------------------------
class ScriptedGuest:
    """Answers the guest tool's coverage commands with fixed documents."""

    def __init__(self, answers: dict[str, list[dict]]):
        self.answers = answers
        self.stdin: list[bytes | None] = []

    def run(self, command, timeout=60.0, stdin=None):
        self.stdin.append(stdin)
        action = command.split()[-1]
        doc = self.answers[action].pop(0)
        return CommandResult(command, 0, json.dumps(doc), "", 0.1)


def test_tracer_reports_untraceable_apart_from_unexecuted(tree):
    _need("ctags")
    src = SourceTree(tree, "test", release="7.3.4")
    plan = FunctionPlan(src, ["drivers/pci/p2pdma.c"],
                        {"drivers/pci/p2pdma.c": ctags.definitions(tree, "drivers/pci/p2pdma.c")})
    guest = ScriptedGuest({
        "setup": [{"ok": True, "files": {"drivers/pci/p2pdma.c": {
            "traced": {"used": "vmlinux", "entry": "vmlinux", "helper": "vmlinux"},
            "untraced": {"twice": "absent", "compiled_out": "absent"}}}}],
        "read": [{"ok": True, "calls": {"drivers/pci/p2pdma.c": {"entry": 3}}, "lost": 0},
                 {"ok": True, "calls": {"drivers/pci/p2pdma.c": {"entry": 1, "used": 2}},
                  "lost": 0}],
        "teardown": [{"ok": True}]})
    t = FunctionTracer(guest, plan)
    t.start()
    assert json.loads(guest.stdin[0] or b"")["files"]["drivers/pci/p2pdma.c"][0]["name"] == "twice"
    t.checkpoint("p2p-copy")
    t.checkpoint("passthru")
    t.stop()
    cov = t.coverage("7.3.4+deb13-amd64")
    f = cov.files["drivers/pci/p2pdma.c"]
    assert f.functions["entry"].status == EXECUTED and f.functions["entry"].calls == 4
    assert f.functions["entry"].cells == {"p2p-copy": 3, "passthru": 1}
    assert f.functions["used"].cells == {"passthru": 2}
    assert f.functions["helper"].status == NOT_EXECUTED
    assert f.functions["twice"].status == UNTRACEABLE and "inlined" in f.functions["twice"].why
    assert f.counts()["functions"] == {"executed": 2, "traceable": 3, "defined": 5}
    assert cov.cells == ["p2p-copy", "passthru"] and cov.problems == []


# -- the model and its files --------------------------------------------------------------
def _cov(cell: str, calls: int, status: str = EXECUTED) -> Coverage:
    return Coverage("function", "src", "7.3.4", "/src", {"a/b.c": FileCov("a/b.c", {
        "f": FunctionCov("f", 3, 9, status, calls=calls, cells={cell: calls} if calls else {}),
        "g": FunctionCov("g", 11, 14, NOT_EXECUTED),
        "h": FunctionCov("h", 16, 18, UNTRACEABLE, why="notrace")})}, [cell])


def test_union_adds_counts_and_keeps_the_best_status():
    u = union([_cov("one", 2), _cov("two", 0, NOT_EXECUTED), _cov("three", 5)])
    assert u is not None
    f = u.files["a/b.c"].functions["f"]
    assert f.status == EXECUTED and f.calls == 7 and f.cells == {"one": 2, "three": 5}
    assert u.cells == ["one", "two", "three"]
    assert Coverage.from_json(json.loads(json.dumps(u.to_json()))).to_json() == u.to_json()
    assert union([]) is None


def test_line_coverage_uncovered_ranges_skip_blank_lines():
    f = FileCov("x.c", lines={3: 1, 4: 0, 6: 0, 7: 0, 9: 2, 10: 0})
    assert f.uncovered() == [[4, 7], [10, 10]]
    assert f.counts()["lines"] == {"executed": 2, "executable": 6}


def test_lcov_and_cobertura_files():
    cov = _cov("one", 2)
    cov.files["a/b.c"].lines = {3: 2, 4: 0}
    cov.files["a/b.c"].branches = {3: [1, 0]}
    info = to_lcov(cov, "/src", "switch-cmb")
    assert "SF:/src/a/b.c" in info and "FNDA:2,f" in info and "FN:16,h" not in info
    assert "BRDA:3,0,1,0" in info and "DA:4,0" in info and info.endswith("end_of_record\n")
    root = ET.fromstring(to_cobertura(cov, "/src", 0))
    cls = root.find("packages/package/classes/class")
    assert cls is not None and cls.get("filename") == "a/b.c" and cls.get("line-rate") == "0.5"
    assert [m.get("name") for m in cls.iter("method")] == ["f", "g"]


# -- a matrix's sum -----------------------------------------------------------------------
def test_matrix_coverage_sums_runs_and_finds_what_only_one_topology_ran(tmp_path):
    from testbed.run.cells import Matrix, RunEntry
    from testbed.coverage.outputs import write_coverage
    m = Matrix(kernels=[{"label": "default", "spec": "default", "description": "the image's",
                        "release": None, "p2pdma": None}], topologies=["a", "b"])
    for topo, calls in (("a", {"f": 2, "g": 1}), ("b", {"f": 5})):
        d = tmp_path / topo / "default"
        d.mkdir(parents=True)
        cov = Coverage("function", "src", "7.3.4", "/src", {"x.c": FileCov("x.c", {
            n: FunctionCov(n, i * 10, i * 10 + 5, EXECUTED if calls.get(n) else NOT_EXECUTED,
                           calls=calls.get(n, 0),
                           cells={"p2p-copy": calls[n]} if calls.get(n) else {})
            for i, n in enumerate(("f", "g", "h"))})}, ["p2p-copy"])
        write_coverage(d, cov, topo)
        m.runs.append(RunEntry(topo, "default", f"{topo}/default", 0))
    from testbed.run.render import write_matrix
    (k,) = write_matrix(m, tmp_path)
    html = (tmp_path / "matrix.html").read_text()
    assert 'id="coverage"' in html and "x.c: g" in html
    assert "- a: 2 executed, 1 only here" in (tmp_path / "matrix.md").read_text()
    f = k.total.files["x.c"].functions
    assert f["f"].calls == 7 and f["f"].cells == {"a@default:p2p-copy": 2, "b@default:p2p-copy": 5}
    assert f["h"].status == NOT_EXECUTED
    assert k.by_topology["a"].only == {"x.c": {"functions": ["g"]}}
    assert k.by_topology["b"].only == {} and k.by_topology["b"].functions == 1
    doc = json.loads((tmp_path / "coverage.json").read_text())
    assert doc["kernels"]["default"]["by_topology"]["a"]["only_functions"] == 1
    assert (tmp_path / "coverage-default.info").read_text().count("end_of_record") == 1


# -- patch coverage ------------------------------------------------------------------------
PATCH = """\
From 1 Mon Sep 17 00:00:00 2001
Subject: [PATCH] PCI/P2PDMA: a test

---
diff --git a/drivers/pci/p2pdma.c b/drivers/pci/p2pdma.c
--- a/drivers/pci/p2pdma.c
+++ b/drivers/pci/p2pdma.c
@@ -8,3 +8,3 @@ int used(int x)
 {
-	return twice(x);
+	return twice(x) + 1;
 }
@@ -20,3 +20,3 @@ static int __attribute__((noinline)) helper(int x)
 {
-	return x * 2;
+	return x * 3;
 }
@@ -2,2 +2,1 @@
-/* gone */
 static inline int twice(int x)
-- 
2.39.0
"""


def test_patch_coverage_by_function_says_what_ran_and_where(tree, tmp_path):
    from testbed.coverage.patch import load_patch, patch_coverage
    f = tmp_path / "fix.patch"
    f.write_text(PATCH)
    patch = load_patch(str(f), tree)
    assert patch.added == {"drivers/pci/p2pdma.c": {9: "\treturn twice(x) + 1;",
                                                    21: "\treturn x * 3;"}}
    assert patch.deletions == 1
    cov = Coverage("function", "src", "7.3.4", str(tree), {"drivers/pci/p2pdma.c": FileCov(
        "drivers/pci/p2pdma.c", {
            "used": FunctionCov("used", 7, 10, EXECUTED, calls=3, cells={"s@k:p2p-copy": 3}),
            "helper": FunctionCov("helper", 19, 22, NOT_EXECUTED)})}, ["s@k:p2p-copy"])
    pc = patch_coverage(patch, cov, minimum=80)
    assert (pc.executed, pc.measured, pc.percent) == (1, 2, 50.0)
    text = pc.summary()
    assert text.startswith("1 of 2 changed lines in executed functions")
    assert "not executed: drivers/pci/p2pdma.c:21 (helper())" in text
    assert "executed by: s@k:p2p-copy (1 line(s))" in text
    assert pc.failed == "patch coverage 50% is below --min-patch-coverage 80"
    assert patch_coverage(patch, cov, minimum=50).failed is None
    # a tree whose lines differ does not carry the patch: not judged, and the gate fails
    (tree / "drivers/pci/p2pdma.c").write_text(C_SOURCE.replace("x * 3", "x * 4"))
    other = patch_coverage(patch, cov, minimum=0)
    assert not other.carried and "does not carry" in (other.failed or "")


def test_patch_coverage_by_line_skips_lines_that_are_not_code(tree):
    from testbed.coverage.patch import parse_patch, patch_coverage
    patch = parse_patch(PATCH, "x.patch")
    cov = Coverage("line", "src", "", str(tree), {"drivers/pci/p2pdma.c": FileCov(
        "drivers/pci/p2pdma.c", {"used": FunctionCov("used", 7, 10, EXECUTED, calls=1)},
        lines={9: 4, 21: 0, 22: 0}, line_cells={"a@k:fio": {9}})})
    pc = patch_coverage(patch, cov)
    assert [(c.line, c.state, c.cells) for c in pc.lines] == [
        (9, "executed", ["a@k:fio"]), (21, "not-executed", [])]
    assert pc.summary().splitlines()[0] == \
        "1 of 2 changed lines (50%); not executed: drivers/pci/p2pdma.c:21"


def test_patch_requests_are_checked(tree, tmp_path):
    from testbed.coverage.patch import load_patch
    from testbed.coverage.session import CoverageRequest
    (tmp_path / "empty.patch").write_text("just words\n")
    for spec, word in ((str(tmp_path / "empty.patch"), "changes no file"),
                       ("nothing-here", "neither a patch file nor a git range"),
                       ("v1..v2", "needs the kernel source to be a git tree")):
        with pytest.raises(UsageError, match=word):
            load_patch(spec, tree)
    with pytest.raises(UsageError, match="--patch-coverage"):
        CoverageRequest.from_args(None, None, None, 80.0)
    req = CoverageRequest.from_args(None, None, "x.patch", None)
    assert req is not None and req.files == ()


@pytest.mark.parametrize("mode", ["function", "line"])
def test_report_html_colours_the_source(tree, mode):
    from testbed.coverage.patch import parse_patch, patch_coverage
    from testbed.results.model import RunResult
    from testbed.results.writer import render_report_html
    f = FileCov("drivers/pci/p2pdma.c", {
        "used": FunctionCov("used", 7, 10, EXECUTED, calls=1, cells={"p2p-copy": 1}),
        "helper": FunctionCov("helper", 19, 22, NOT_EXECUTED),
        "twice": FunctionCov("twice", 2, 5, UNTRACEABLE, why="inlined")})
    if mode == "line":
        f.lines, f.branches = {8: 1, 9: 1, 21: 0}, {9: [1, 0]}
    cov = Coverage(mode, "test tree", "7.3.4", str(tree), {f.path: f}, ["p2p-copy"])
    r = RunResult("switch-cmb", finished=True, coverage=cov)
    r.patch_coverage = patch_coverage(parse_patch(PATCH, "fix.patch"), cov)
    html = render_report_html(r)
    assert 'id="coverage"' in html and 'id="patch-coverage"' in html
    assert '<span class="cov-hit" title="used: 1 call(s)"><i>    7</i> int used(int x)' in html \
        or (mode == "line" and '<span class="cov-hit" title="1"><i>    9</i>' in html)
    assert 'class="cov-miss"' in html and 'class="cov-untraced"' in html


# -- gcov: a program built here with --coverage stands in for the kernel --------------------
def test_gcov_lines_branches_and_functions_per_cell(tree, tmp_path):
    gcc = _need("gcc")
    from testbed.coverage.gcov import (GcovCollector, GcovPlan, compiler_version, find_gcov,
                                       run_gcov)
    version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert compiler_version(f'CONFIG_CC_VERSION_TEXT="gcc (Debian) {version}"') == version
    build = tmp_path / "build"
    (build / "drivers/pci").mkdir(parents=True)
    (tree / "main.c").write_text("int entry(int);\nint main(int c, char **v)\n"
                                 "{\n\treturn entry(c) > 100;\n}\n")
    obj = build / "drivers/pci/p2pdma.o"
    subprocess.run([gcc, "--coverage", "-O0", "-c", str(tree / "drivers/pci/p2pdma.c"), "-o",
                    str(obj)], check=True, cwd=build)
    subprocess.run([gcc, "--coverage", "-o", str(build / "prog"), str(obj),
                    str(tree / "main.c")], check=True, cwd=build)
    plan = GcovPlan(build, tree, ("drivers/pci/p2pdma.c",), find_gcov(version))

    def run_and_tar(times: int) -> bytes:
        for _ in range(times):
            subprocess.run([str(build / "prog")], cwd=build, check=False)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(build / "drivers/pci/p2pdma.gcda", "drivers/pci/p2pdma.gcda")
        return buf.getvalue()

    counts = run_gcov(plan, run_and_tar(1))["drivers/pci/p2pdma.c"]
    assert counts.functions["entry"][2] == 1 and counts.functions["helper"][2] == 1
    assert counts.lines[9] == 1 and "compiled_out" not in counts.functions

    class Guest:  # answers `gcov reset/collect` with the program's .gcda, run again each time
        def __init__(self):
            self.runs = iter([2, 3])

        def run(self, command, timeout=60.0, stdin=None):
            doc = {"ok": True, "found": True}
            if "collect" in command:
                doc["tar"] = base64.b64encode(run_and_tar(next(self.runs))).decode()
            return CommandResult(command, 0, json.dumps(doc), "", 0.1)

    c = GcovCollector(Guest(), plan)
    c.start()
    c.checkpoint("p2p-copy")
    c.checkpoint("fio")
    f = c.files({"drivers/pci/p2pdma.c": ctags.definitions(tree, "drivers/pci/p2pdma.c")})[
        "drivers/pci/p2pdma.c"]
    # the first collect has the 1 + 2 runs so far, the next 3 more: differences per cell
    assert f.functions["entry"].cells == {"p2p-copy": 3, "fio": 3}
    assert f.lines is not None and f.lines[9] == 6
    assert f.line_cells["fio"] >= {9, 21, 26}
    assert f.functions["compiled_out"].status == UNTRACEABLE  # #ifdef'd out: no code
    assert f.counts()["lines"]["executed"] == f.counts()["lines"]["executable"] >= 8
