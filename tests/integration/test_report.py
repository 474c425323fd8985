"""What a run leaves for people and for kernel CI, checked the way they read it, on one real
matrix (switch-cmb, p2p-copy of 256K, the image's kernel against itself: once as
`default`, once as an unpacked package with its modules):

- the matrix itself: no regression, exit 0, one cell per kernel and pair, each the same as
  its run's results.json (test_matrix.py ran this matrix on its own before);
- report.html opened in a real headless Chromium (Debian's ``chromium``): the screenshot
  is a page of a reasonable size, not one colour, with the drawing's green path in it;
  the DOM Chromium built holds the pair table with the run's pairs and the inline SVG;
- matrix.html links each cell to that run's report.html;
- results.ktap (the run's and the matrix's) read by a KTAP parser written here from
  Documentation/dev-tools/ktap.rst, not the project's code, agrees with results.json and
  matrix.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

TESTBED = [sys.executable, "-m", "testbed"]
OK_GREEN = (0x15, 0x80, 0x3D)  # the drawing's colour for an ok path
WINDOW = (1280, 1600)


@pytest.fixture(scope="module")
def matrix_run(real_qemu, image_kernel_package, tmp_path_factory
               ) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "matrix"
    start = time.monotonic()
    proc = subprocess.run([*TESTBED, "matrix", "-t", "switch-cmb", "-k", "default",
                           "-k", str(image_kernel_package), "-w", "p2p-copy", "--size", "256K",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TESTBED_STATE": str(tmp / "state")})
    print(f"two-run matrix: {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


@pytest.fixture(scope="module")
def matrix_dir(matrix_run) -> Path:
    return matrix_run[0]


def test_matrix_default_against_itself(matrix_run, image):
    """The image's kernel against itself (as `default` and as an unpacked package with its
    modules): no regression, exit 0, every cell the same as its run's results.json."""
    out, proc = matrix_run
    for name in ("matrix.json", "matrix.md", "matrix.html"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "matrix.json").read_text())
    labels = [k["label"] for k in doc["kernels"]]
    assert labels == ["default", image.kernel_release]
    assert doc["baseline"] == "default" and doc["status"] == 0
    assert doc["regressions"] == [] and doc["incomplete"] == []

    # one cell per kernel × pair, each matching its run's own results.json
    cells = {(c["kernel"], c["provider"], c["client"]): c for c in doc["cells"]}
    pairs = {("nvme0", "nvme1"), ("nvme1", "nvme0")}
    assert set(cells) == {(k, p, c) for k in labels for p, c in pairs}
    for run in doc["runs"]:
        assert run["release"] == image.kernel_release and run["error"] == ""
        results = json.loads((out / run["directory"] / "results.json").read_text())
        for w in results["workloads"]:
            if w["name"] != "p2p-copy":
                continue
            cell = cells[(run["kernel"], w["provider"], w["client"])]
            assert (cell["predicted"], cell["observed"], cell["data_verified"],
                    cell["mb_per_s"]) == (w["predicted"], w["observed"], w["data_verified"],
                                          w.get("mb_per_s"))
            assert cell["observed"] == "ok" and cell["data_verified"] is True
            assert cell["mb_per_s"] and cell["mb_per_s"] > 0

    md = (out / "matrix.md").read_text()
    assert "**PASS**" in md and f"| default | {image.kernel_release} |" in md
    html = (out / "matrix.html").read_text()
    assert html.count('class="cell ok"') == 4
    assert "PASS" in proc.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {why}", pytrace=False)
        pytest.skip(f"SKIPPED, NOT PASSED: {why}")
    return found


def headless(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, as root, offline, with a fresh profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


# -- a PNG, decoded here (8-bit RGB/RGBA, not interlaced: what Chromium writes) ---------------

def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert ihdr is not None
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, ihdr
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    prev, rows = bytearray(stride), []
    for y in range(height):
        kind_ = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind_ == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind_ == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind_ == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind_ == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


# -- the DOM Chromium built -------------------------------------------------------------------

class Dom(HTMLParser):
    """The rows of every table (by id), the links, and the SVG titles."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, str]] = []  # (class of the enclosing td, href)
        self.titles: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._td_class = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._td_class = [], a.get("class") or ""
        elif tag == "a" and a.get("href"):
            self.links.append((self._td_class if self._cell is not None else "", a["href"]))
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.titles.append(data)


def dom(chromium: str, tmp_path: Path, page: Path) -> Dom:
    proc = headless(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    parsed = Dom()
    parsed.feed(proc.stdout)
    return parsed


def test_report_html_renders_in_headless_chromium(matrix_dir, chromium, tmp_path):
    run_dir = matrix_dir / "switch-cmb" / "default"
    report = run_dir / "report.html"
    results = json.loads((run_dir / "results.json").read_text())

    shot = tmp_path / "report.png"
    proc = headless(chromium, tmp_path, "--hide-scrollbars",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}",
                    report.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, rows, bpp = decode_png(shot.read_bytes())
    assert (width, height) == WINDOW
    pixels = Counter(row[x:x + 3] for row in rows[::3] for x in range(0, width * bpp, 3 * bpp))
    background, most = pixels.most_common(1)[0]
    assert most < 0.95 * sum(pixels.values()), "the page is (nearly) one colour"
    assert len(pixels) > 50, "too few colours for text, a table and a drawing"
    green = sum(n for px, n in pixels.items()
                if all(abs(c - g) < 24 for c, g in zip(px, OK_GREEN)))
    assert green > 20, "no ok-green path or path number of the drawing on the page"

    page = dom(chromium, tmp_path, report)
    table = page.tables["pairs"]
    assert table[0][:5] == ["workload", "provider", "client", "predicted", "observed"]
    shown = {(r[0], r[1], r[2], r[3], r[4], r[6], r[-1]) for r in table[1:]}
    expected = {(w["name"], w["provider"], w["client"], w["predicted"], w["observed"],
                 w["observed_map_type"], "PASS" if w["passed"] else "FAIL")
                for w in results["workloads"] if "passed" in w}
    assert shown == expected == {
        ("p2p-copy", "nvme0", "nvme1", "ok", "ok", "bus-address", "PASS"),
        ("p2p-copy", "nvme1", "nvme0", "ok", "ok", "bus-address", "PASS")}
    # the drawing is inline and drew the tree (Graphviz titles its nodes by id)
    assert {"nvme0", "nvme1", "sw0", "rp0"} <= set(page.titles)
    svg = (run_dir / "topology.svg").read_text()
    assert svg.startswith("<svg") and 'stroke="#15803d"' in svg


def test_matrix_html_links_each_cell_to_its_runs_report(matrix_dir, chromium, tmp_path):
    page = dom(chromium, tmp_path, matrix_dir / "matrix.html")
    cells = [href for cls, href in page.links if cls.startswith("cell")]
    runs = json.loads((matrix_dir / "matrix.json").read_text())["runs"]
    assert [r["directory"] for r in runs][0] == "switch-cmb/default" and len(runs) == 2
    # two pairs a run, each cell to its own run's report
    assert sorted(cells) == sorted(f"{r['directory']}/report.html" for r in runs for _ in (0, 1))
    for href in set(cells):
        assert (matrix_dir / href).is_file()
        assert (matrix_dir / href).resolve().is_relative_to(matrix_dir.resolve())


# -- KTAP, parsed here from the specification -------------------------------------------------

@dataclass
class Ktap:
    name: str
    ok: bool
    directive: str
    reason: str
    diagnostics: list[str] = field(default_factory=list)
    subtests: list["Ktap"] = field(default_factory=list)


RESULT = re.compile(r"^(?P<ok>ok|not ok) (?P<n>[0-9]+)(?: (?P<desc>[^#]*?))?"
                    r"(?: # ?(?P<rest>.*))?$")
DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")


def parse_ktap(text: str) -> list[Ktap]:
    """A KTAP version 1 document: a version line, a plan "1..N", N results; a nested
    document (indented two more spaces) before a result holds that test's subtests;
    "# " lines are diagnostics.  Anything else fails (the testbed prints no unknown
    lines)."""
    lines = text.split("\n")
    assert lines[-1] == "", "a KTAP file ends with a newline"
    tests, i = _document(lines[:-1], 0, 0)
    assert i == len(lines) - 1, f"line {i + 1}: after the last result: {lines[i]!r}"
    return tests


def _document(lines: list[str], i: int, depth: int) -> tuple[list[Ktap], int]:
    pad = "  " * depth
    assert lines[i] == f"{pad}KTAP version 1", f"line {i + 1}: {lines[i]!r}"
    plan = re.fullmatch(re.escape(pad) + r"1\.\.([0-9]+)", lines[i + 1])
    assert plan, f"line {i + 2}: no plan: {lines[i + 1]!r}"
    count, i = int(plan[1]), i + 2
    tests: list[Ktap] = []
    diagnostics: list[str] = []
    subtests: list[Ktap] = []
    while len(tests) < count:
        assert i < len(lines), f"the plan says {count}, only {len(tests)} results"
        line = lines[i]
        if line == f"{pad}  KTAP version 1":
            assert not subtests, f"line {i + 1}: two nested documents for one test"
            subtests, i = _document(lines, i, depth + 1)
            continue
        body = line[len(pad):]
        assert line.startswith(pad) and body[:1].strip(), f"line {i + 1}: indent: {line!r}"
        if body.startswith("#"):
            diagnostics.append(body[1:].strip())
            i += 1
            continue
        m = RESULT.match(body)
        assert m, f"line {i + 1}: not a KTAP line: {line!r}"
        assert int(m["n"]) == len(tests) + 1, f"line {i + 1}: numbered {m['n']}"
        rest = m["rest"] or ""
        word = rest.split(" ", 1)[0]
        directive = word if word in DIRECTIVES else ""
        reason = rest[len(word):].strip() if directive else rest
        tests.append(Ktap(m["desc"] or "", m["ok"] == "ok", directive, reason, diagnostics,
                          subtests))
        diagnostics, subtests = [], []
        i += 1
    return tests, i


def status(t: Ktap) -> str:
    return "skip" if t.directive == "SKIP" else "pass" if t.ok else "fail"


def check_bubbling(tests: list[Ktap]) -> None:
    """A parent with a failed subtest fails (ktap.rst: "the parent test should also fail")."""
    for t in tests:
        if any(status(s) == "fail" for s in t.subtests):
            assert not t.ok, t.name
        check_bubbling(t.subtests)


def test_run_ktap_agrees_with_results_json(matrix_dir):
    run_dir = matrix_dir / "switch-cmb" / "default"
    results = json.loads((run_dir / "results.json").read_text())
    tests = parse_ktap((run_dir / "results.ktap").read_text())
    check_bubbling(tests)
    by_workload: dict[str, list[dict]] = {}
    for w in results["workloads"]:
        by_workload.setdefault(w["name"], []).append(w)
    assert [t.name for t in tests] == list(by_workload) == ["p2p-copy"]
    for t in tests:
        records = by_workload[t.name]
        assert len(t.subtests) == len(records)
        for sub, w in zip(t.subtests, records):
            assert sub.name == f"{w['provider']}->{w['client']}"
            want = "skip" if "passed" not in w else "pass" if w["passed"] else "fail"
            assert status(sub) == want, (sub, w)
            assert f"predicted {w['predicted']}, observed {w['observed']}" in sub.diagnostics[0]
    assert all(status(t) == "pass" for t in tests) == (results["status"] == "pass")


def test_matrix_ktap_agrees_with_matrix_json(matrix_dir):
    doc = json.loads((matrix_dir / "matrix.json").read_text())
    tests = parse_ktap((matrix_dir / "results.ktap").read_text())
    check_bubbling(tests)
    *runs, verdict = tests
    assert [r.name for r in runs] == [f"{r['topology']} {r['kernel']}" for r in doc["runs"]]
    assert verdict.name == f"no regression against {doc['baseline']}"
    assert verdict.ok == (doc["status"] == 0)
    cells = {(c["kernel"], c["workload"], f"{c['provider']}->{c['client']}"): c
             for c in doc["cells"]}
    seen = set()
    for run, entry in zip(runs, doc["runs"]):
        for workload in run.subtests:
            for pair in workload.subtests:
                cell = cells[(entry["kernel"], workload.name, pair.name)]
                assert status(pair) == ("pass" if cell["passed"] else "fail")
                seen.add((entry["kernel"], workload.name, pair.name))
    assert seen == set(cells)
