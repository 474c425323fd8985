"""The bad-input corpus (tests/bad-specs/): every file gets exactly the diagnostics it should.

Expectations live in tests/bad-specs/expected.yaml as ``"LINE:COL: field.path: substring"``,
one per problem; the number of problems must match exactly.  The same files are also run
through the real command line (``python -m testbed validate FILE``): exit status 2, the
problems on stderr in the documented format, and never a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from testbed.paths import project_root
from testbed.qemu.validate import load_checked
from testbed.spec import Problem, SpecError, load_topology

CORPUS = Path(__file__).resolve().parent.parent / "bad-specs"
EXPECTED_FILE = CORPUS / "expected.yaml"
EXPECTED = yaml.safe_load(EXPECTED_FILE.read_text())
PROBE = set(EXPECTED.get("probe_qemu", ()))
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != EXPECTED_FILE.name)
LIBRARY = sorted((project_root() / "topologies").glob("*.yaml"))

EXPECT_RE = re.compile(r"^(\d+):(\d+): (\S*): (.+)$")
# what `testbed validate` prints on stderr for one problem
PRINTED_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?:(?P<path>\S+): )?(?P<msg>.+)$")


def expectations(name: str) -> list[tuple[int, int, str, str]]:
    out = []
    for text in EXPECTED["files"][name]:
        m = EXPECT_RE.match(text)
        assert m, f"expected.yaml: {name}: cannot read {text!r} (want 'LINE:COL: path: text')"
        out.append((int(m[1]), int(m[2]), m[3], m[4]))
    return out


def check(problems: list[Problem], name: str, file: str) -> None:
    """Compare problems with the expectations of corpus file ``name``, message by message."""
    want = expectations(name)
    got = "\n".join(map(str, problems))
    assert len(problems) == len(want), (
        f"{name}: {len(problems)} problems, expected {len(want)}:\n{got}")
    for p, (line, col, path, text) in zip(problems, want):
        assert (p.file, p.line, p.col, p.path) == (file, line, col, path), f"{name}:\n{got}"
        assert text in p.message, f"{name}: {text!r} not in {p.message!r}"


def test_corpus_is_complete():
    assert len(FILES) >= 30
    assert sorted(EXPECTED["files"]) == FILES, "every corpus file needs expectations and " \
        "every expectation a file"
    assert PROBE <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_corpus_file(name):
    path = CORPUS / name
    with pytest.raises(SpecError) as info:
        load_checked(path, probe_qemu=name in PROBE)
    check(info.value.problems, name, str(path))
    # the exception's text is what the CLI prints: one problem a line
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]


def test_missing_file(tmp_path):
    path = tmp_path / "no-such-topology.yaml"
    with pytest.raises(SpecError) as info:
        load_topology(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:1:1: no such file"]


def test_unknown_library_name_suggests():
    with pytest.raises(SpecError) as info:
        load_topology("switch-cbm")
    (p,) = info.value.problems
    assert "did you mean 'switch-cmb'?" in p.message and "library:" in p.message


def test_directory_is_not_a_topology(tmp_path):
    with pytest.raises(SpecError) as info:
        load_topology(str(tmp_path))
    assert "is a directory" in info.value.problems[0].message


@pytest.mark.parametrize("data", [
    b"\x00",
    b"pcie: []\n\x00",
    bytes(range(256)),
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
], ids=["nul", "trailing-nul", "all-bytes", "png"])
def test_generated_binary_garbage(tmp_path, data):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        load_topology(path)
    (p,) = info.value.problems
    assert (p.line, p.col, p.path) == (1, 1, "") and "binary data" in p.message


def test_large_file_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(SpecError) as info:
        load_topology(path)
    assert "larger than 1 MiB" in info.value.problems[0].message


def test_alias_bomb_is_bounded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
              f"*a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\npcie: []\n")
    with pytest.raises(SpecError) as info:
        load_topology(path)
    assert "too large" in str(info.value)


@pytest.mark.parametrize("text", ["pcie: " + "[" * 5000 + "]" * 5000,
                                  "pcie: " + "{a: " * 3000 + "x" + "}" * 3000])
def test_deep_nesting_is_refused(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_topology(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:1:1: document is nested too deeply"]


# -- the command line ----------------------------------------------------------------------

def _validate(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "testbed", "validate", *args],
                          capture_output=True, text=True, cwd=CORPUS, env=env, timeout=120)


@pytest.fixture(scope="module")
def cli_results():
    """``testbed validate FILE`` for every corpus file, run in parallel (one process each)."""
    have_qemu = shutil.which("qemu-system-x86_64") is not None

    def run(name):
        # the CLI probes QEMU by default; without a QEMU every file would get one more problem
        args = [] if name in PROBE or have_qemu else ["--no-probe"]
        return name, _validate(*args, name)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(run, FILES))


@pytest.mark.parametrize("name", FILES)
def test_cli_reports_corpus_file(cli_results, name):
    out = cli_results[name]
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, f"exit {out.returncode}:\n{out.stdout}{out.stderr}"
    assert out.stdout == ""
    problems = []
    for line in out.stderr.splitlines():
        m = PRINTED_RE.match(line)
        assert m, f"not FILE:LINE:COL: field: problem: {line!r}"
        problems.append(Problem(m["file"], int(m["line"]), int(m["col"]), m["path"] or "",
                                m["msg"]))
    check(problems, name, name)


def test_cli_missing_file():
    out = _validate("/nonexistent/topology.yaml")
    assert (out.returncode, out.stderr) == (2, "/nonexistent/topology.yaml:1:1: no such file\n")


def test_cli_reports_every_file_of_several():
    out = _validate("--no-probe", "cmb-3m.yaml", "empty.yaml", str(LIBRARY[0]))
    assert out.returncode == 2
    assert [line.split(":")[0] for line in out.stderr.splitlines()] == ["cmb-3m.yaml", "empty.yaml"]
    assert f"{LIBRARY[0]}: ok" in out.stdout


@pytest.mark.parametrize("probe", [False, True], ids=["no-probe", "probe"])
def test_cli_accepts_library(probe, request):
    assert LIBRARY, "topologies/ is empty"
    if probe:
        request.getfixturevalue("real_qemu")
    out = _validate(*([] if probe else ["--no-probe"]), *map(str, LIBRARY))
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert len(out.stdout.splitlines()) == len(LIBRARY)
